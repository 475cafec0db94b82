//! At the edge, with real peers: nginx as the fallback site and as a TLS front for plain
//! mode (over TCP and a unix socket), HAProxy sending PROXY v1 and v2, live certificate
//! reload, unix sockets and TCP Fast Open.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::gopeer::gopeer;
use testkit::prelude::*;
use testkit::programs::tool;
use testkit::sock::free_port;

/// Whether the programs `names` are all installed; when one is not, the test is skipped
/// (under CI it fails instead: [`tool`]).
fn need(names: &[&str], test: &str) -> bool {
    names.iter().all(|name| tool(name, test).is_some())
}

/// A child process killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts nginx with `server_blocks` inside `http {}`.
fn nginx(dir: &Path, server_blocks: &str, port: u16) -> Daemon {
    let conf = format!(
        "pid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nworker_processes 1;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n{server_blocks}\n}}\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .args(["-p", dir.to_str().unwrap(), "-e", "stderr", "-c"])
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    wait_listening(port);
    Daemon(child)
}

/// Writes a self-signed certificate for `name`; returns (cert path, key path, DER).
fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let generated = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key, generated.cert.der().to_vec())
}

/// The certificate a TLS server at `addr` presents.
fn presented_cert(addr: SocketAddr) -> Vec<u8> {
    let mut tls = tls_client();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tls.complete_io(&mut tcp).unwrap();
    tls.peer_certificates().unwrap()[0].to_vec()
}

/// `curl` output: the status line and headers (`-i`) and the body.
fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sk", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A TLS client stream through `addr` (nginx, HAProxy), as `Transport`.
fn tls_conn(addr: SocketAddr) -> Transport {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    Transport::tls(tcp, tls_client())
}

fn echo_once<S: Read + Write>(conn: &mut S, path: &str) {
    let (status, _) = raw_upgrade(conn, path, "Sec-WebSocket-Protocol: smux_off\r\n");
    assert_eq!(status, 101, "{path}");
    let payload = pattern(70_000, 9);
    conn.write_all(&masked_frame(true, 0x2, &payload)).unwrap();
    assert!(read_data(conn, payload.len()) == payload);
}

#[test]
fn fallback_site_answers_probes_and_tunnels_still_work() {
    if !need(
        &["nginx", "curl"],
        "fallback_site_answers_probes_and_tunnels_still_work",
    ) {
        return;
    }
    let dir = temp_dir("fallback");
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(
        dir.join("www/index.html"),
        "<h1>A perfectly ordinary blog</h1>\n",
    )
    .unwrap();
    std::fs::write(dir.join("www/about.html"), "about us\n").unwrap();
    let site_port = free_port();
    let _site = nginx(
        &dir,
        &format!(
            "  server {{ listen 127.0.0.1:{site_port}; root {}/www; add_header X-Site ordinary always; }}",
            dir.display()
        ),
        site_port,
    );
    let server = Server::start(&["-force-tls", "-fallback", &format!("127.0.0.1:{site_port}")]);
    let path = unique_path("user");
    server.add(&[(&path, echo_backend())]);

    let base = format!("https://127.0.0.1:{}", server.data.port());
    let page = curl(&[&format!("{base}/")]);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("X-Site: ordinary") && page.contains("perfectly ordinary blog"),
        "{page}"
    );
    // Two requests on one kept-alive connection both reach the site.
    let pages = curl(&[&format!("{base}/about.html"), &format!("{base}/missing")]);
    assert!(
        pages.contains("about us") && pages.contains("HTTP/1.1 404"),
        "{pages}"
    );
    assert!(pages.contains("Server: nginx"), "{pages}");
    // A known path without an upgrade is not a tunnel either: the site answers.
    let known = curl(&[&format!("{base}{path}")]);
    assert!(known.contains("X-Site: ordinary"), "{known}");
    // Garbage instead of HTTP goes to the site too, which answers 400.
    let mut conn = server.connect();
    conn.write_all(b"\x01\x02 not http at all\r\n\r\n").unwrap();
    let (status, head, _) = read_response(&mut conn);
    assert_eq!(status, 400);
    assert!(header(&head, "server").unwrap().starts_with("nginx"));
    // And the tunnel works.
    let mut conn = server.connect();
    echo_once(&mut conn, &path);

    // A fallback that is down: our own 404 page.
    let server = Server::start(&["-fallback", &format!("127.0.0.1:{}", dead_addr().port())]);
    let (status, _, _) = http_request(server.data, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 404);
}

#[test]
fn nginx_terminates_tls_in_front_of_plain_mode_over_tcp_and_unix_socket() {
    if !need(
        &["nginx"],
        "nginx_terminates_tls_in_front_of_plain_mode_over_tcp_and_unix_socket",
    ) {
        return;
    }
    let dir = temp_dir("front");
    let (cert, key, _) = write_cert(&dir, "front.example");
    let socket = dir.join("mtt.sock");
    let server = Server::start(&["-bind-unix", socket.to_str().unwrap()]);
    let path = unique_path("front");
    server.add(&[(&path, echo_backend())]);
    let (tcp_port, unix_port) = (free_port(), free_port());
    let location = "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade; proxy_set_header Host $host; proxy_buffering off;";
    let blocks = format!(
        "  server {{ listen 127.0.0.1:{tcp_port} ssl; ssl_certificate {c}; ssl_certificate_key {k}; location / {{ proxy_pass http://{data}; {location} }} }}\n  server {{ listen 127.0.0.1:{unix_port} ssl; ssl_certificate {c}; ssl_certificate_key {k}; location / {{ proxy_pass http://unix:{sock}:; {location} }} }}",
        c = cert.display(),
        k = key.display(),
        data = server.data,
        sock = socket.display(),
    );
    let _nginx = nginx(&dir, &blocks, tcp_port);
    wait_listening(unix_port);
    for port in [tcp_port, unix_port] {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut conn = tls_conn(addr);
        echo_once(&mut conn, &path);
        // Mux through the same front, with the Go client, when it is there.
        if let Some(peer) = gopeer() {
            let output = Command::new(peer)
                .args([
                    "-addr",
                    &addr.to_string(),
                    "-tls",
                    "-path",
                    &path,
                    "-proto",
                    "smux_on",
                ])
                .args([
                    "-mode", "echo", "-streams", "4", "-bytes", "1000000", "-timeout", "60s",
                ])
                .output()
                .unwrap();
            let report = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "go peer through nginx :{port}: {report}"
            );
        }
    }
}

#[test]
fn haproxy_proxy_protocol_v1_and_v2_carry_the_client_address() {
    if !need(
        &["haproxy"],
        "haproxy_proxy_protocol_v1_and_v2_carry_the_client_address",
    ) {
        return;
    }
    let server = Server::start(&["-proxy-protocol", "-verbose"]);
    let path = unique_path("proxied");
    server.add(&[(&path, echo_backend())]);
    for version in ["send-proxy", "send-proxy-v2"] {
        let dir = temp_dir(version);
        let port = free_port();
        let conf = format!(
            "global\n  maxconn 64\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend front\n  bind 127.0.0.1:{port}\n  default_backend mtt\nbackend mtt\n  server s1 {} {version}\n",
            server.data
        );
        std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
        let _haproxy = Daemon(
            Command::new("haproxy")
                .args(["-db", "-f"])
                .arg(dir.join("haproxy.cfg"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_listening(port);
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let client = conn.local_addr().unwrap();
        echo_once(&mut conn, &path);
        let needle = format!("client {client} path {path}");
        let deadline = Instant::now() + WAIT;
        while !server.log.lock().unwrap().contains(&needle) {
            assert!(
                Instant::now() < deadline,
                "{version}: no log line with {needle}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The counters show it too: the user's open tunnel comes from the real client.
        let (_, reply) = server.post(&format!(
            r#"{{"opt":5,"args_bunch":[{{"path":"{path}"}}]}}"#
        ));
        let clients = &reply["users"][0]["clients"];
        assert!(
            clients
                .as_array()
                .is_some_and(|c| c.contains(&serde_json::json!(client.to_string()))),
            "{version}: {reply}"
        );
        drop(conn);
    }
    // Straight to the server, without the header: refused.
    let mut conn = TcpStream::connect(server.data).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn certificate_swapped_by_symlink_is_served_to_new_handshakes_only() {
    let dir = temp_dir("reload");
    let (old_cert, old_key, old_der) = write_cert(&dir, "old.example");
    let (new_cert, new_key, new_der) = write_cert(&dir, "new.example");
    let cert = dir.join("live.pem");
    let key = dir.join("live.key");
    std::os::unix::fs::symlink(&old_cert, &cert).unwrap();
    std::os::unix::fs::symlink(&old_key, &key).unwrap();
    let server = Server::start(&[
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
        "-cert-check",
        "100ms",
    ]);
    let path = unique_path("reload");
    server.add(&[(&path, echo_backend())]);
    assert_eq!(presented_cert(server.data), old_der);
    let mut streaming = server.connect();
    assert_eq!(raw_upgrade(&mut streaming, &path, "").0, 101);

    // certbot's way: new files, then the links swapped atomically.
    let swap = |target: &Path, link: &Path| {
        let tmp = dir.join("tmp-link");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, link).unwrap();
    };
    swap(&new_key, &key);
    swap(&new_cert, &cert);
    let deadline = Instant::now() + WAIT;
    let mut round = 0u64;
    while presented_cert(server.data) != new_der {
        assert!(Instant::now() < deadline, "new certificate not served");
        // The old tunnel streams all the while.
        let payload = pattern(20_000, round);
        streaming
            .write_all(&masked_frame(true, 0x2, &payload))
            .unwrap();
        assert!(read_data(&mut streaming, payload.len()) == payload);
        round += 1;
    }
    let payload = pattern(100_000, 99);
    streaming
        .write_all(&masked_frame(true, 0x2, &payload))
        .unwrap();
    assert!(read_data(&mut streaming, payload.len()) == payload);

    // A broken pair (a key that does not match) keeps the one in use, and says why.
    std::fs::copy(&old_key, dir.join("wrong.key")).unwrap();
    swap(&dir.join("wrong.key"), &key);
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while !server
        .log
        .lock()
        .unwrap()
        .contains("certificate reload failed")
    {
        assert!(Instant::now() < deadline, "no reload error logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(presented_cert(server.data), new_der);
    let mut conn = server.connect();
    echo_once(&mut conn, &path);
}

#[test]
fn unix_socket_listeners_path_and_abstract() {
    let dir = temp_dir("unix");
    let socket = dir.join("data.sock");
    let name = format!("mtt-test-{}", std::process::id());
    for bind in [socket.to_str().unwrap().to_string(), format!("@{name}")] {
        // -b may be left out when -bind-unix is given.
        let mut args = vec!["-bind-unix", &bind];
        let server_with_tcp;
        let server = if bind.starts_with('@') {
            args.extend(["-b", "127.0.0.1:0"]);
            server_with_tcp = Server::start(&args);
            &server_with_tcp
        } else {
            server_with_tcp = start_unix_only(&args);
            &server_with_tcp
        };
        let path = unique_path("unix");
        server.add(&[(&path, echo_backend())]);
        let mut conn = if let Some(name) = bind.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
            UnixStream::connect_addr(&addr).unwrap()
        } else {
            UnixStream::connect(&bind).unwrap()
        };
        conn.set_read_timeout(Some(WAIT)).unwrap();
        echo_once(&mut conn, &path);
    }
}

/// A server with only a unix-socket data listener (its ready line says `data=none`).
fn start_unix_only(args: &[&str]) -> Server {
    Server::start_raw(args)
}

#[test]
fn fast_open_listener_serves() {
    let server = Server::start(&["-fast-open"]);
    let (status, _, _) = http_request(server.data, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 404);
}

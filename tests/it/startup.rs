//! Start-up as an operator sees it: Go-style flags, exit codes, TLS files, a busy port.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

use testkit::prelude::*;

fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtt-mu-server"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every case here exits at once; a server that starts instead is killed after a while
    // and fails the test through its exit status.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_prints_usage_and_exits_0() {
    for flag in ["-h", "--help", "-help"] {
        let output = run(&[flag]);
        assert_eq!(output.status.code(), Some(0), "{flag}");
        let usage = String::from_utf8_lossy(&output.stdout);
        for name in [
            "-b",
            "-c",
            "-mux",
            "-cert",
            "-key",
            "-force-tls",
            "-timeout",
            "-verbose",
        ] {
            assert!(usage.contains(name), "{flag}: usage lacks {name}: {usage}");
        }
    }
}

#[test]
fn bad_flags_exit_2_naming_the_culprit() {
    let base = ["-b", "127.0.0.1:0", "-c", "127.0.0.1:0"];
    let cases: &[(&[&str], &str)] = &[
        (&["-nope"], "nope"),
        (&["-timeout", "soon"], "timeout"),
        (&["-timeout", "0s"], "timeout"),
        (&["-mux=maybe"], "mux"),
        (&["-mux", "true"], "true"),
        (&["-cert", "/tmp/x.pem"], "-key"),
        (&["-key", "/tmp/x.pem"], "-cert"),
        (&["-workers", "0"], "workers"),
        (&["-timeout"], "timeout"),
        (&["-driver", "kqueue"], "driver"),
    ];
    for (extra, needle) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2), "{extra:?}");
        assert!(
            stderr(&output).contains(needle),
            "{extra:?}: {}",
            stderr(&output)
        );
    }
    let output = run(&["-c", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("-b"));
}

#[test]
fn go_flag_spellings_start_the_server() {
    for extra in [
        &["-mux=true", "-timeout", "1m0s"][..],
        &["--mux", "-timeout=90s", "-verbose=false"],
        &["-force-tls=1", "-n", "cdn.example.com"],
    ] {
        let server = Server::start(extra);
        assert!(server.data.port() != 0);
    }
    let server = Server::start(&["--b=127.0.0.1:0", "--c", "127.0.0.1:0"]);
    assert!(server.data.port() != 0);
}

#[test]
fn unreadable_or_mismatched_cert_refuses_to_start() {
    let dir = temp_dir("startup");
    let a = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap();
    let cert_a = dir.join("a.pem");
    let key_b = dir.join("b.key");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&cert_a, a.cert.pem()).unwrap();
    std::fs::write(&key_b, b.signing_key.serialize_pem()).unwrap();
    std::fs::write(&garbage, "not a pem file\n").unwrap();
    let missing = dir.join("missing.pem");
    let base = ["-b", "127.0.0.1:0", "-c", "127.0.0.1:0"];
    for (cert, key, named) in [
        (&missing, &key_b, &missing),
        (&cert_a, &missing, &missing),
        (&garbage, &key_b, &garbage),
        (&cert_a, &garbage, &garbage),
        (&cert_a, &key_b, &key_b),
    ] {
        let mut args = base.to_vec();
        args.extend([
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
        ]);
        let output = run(&args);
        assert_eq!(output.status.code(), Some(1), "{cert:?} {key:?}");
        assert!(
            stderr(&output).contains(named.to_str().unwrap()),
            "{cert:?} {key:?}: {}",
            stderr(&output)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cert_and_key_files_are_served() {
    let dir = temp_dir("certs");
    let generated = rcgen::generate_simple_self_signed(vec!["tunnel.example".into()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let server = Server::start(&[
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
    ]);
    assert!(server.tls);
    let mut tls = tls_client();
    let mut tcp = std::net::TcpStream::connect(server.data).unwrap();
    tls.complete_io(&mut tcp).unwrap();
    let presented = tls.peer_certificates().unwrap()[0].clone();
    assert_eq!(presented.as_ref(), generated.cert.der().as_ref());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_server_on_the_same_port_refuses_to_start() {
    let first = Server::plain();
    let port = first.data.to_string();
    let output = run(&["-b", &port, "-c", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("already in use"),
        "{}",
        stderr(&output)
    );
    // The first one is unaffected.
    let mut stream = std::net::TcpStream::connect(first.data).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 404");
}

#[test]
fn resumed_tls_sessions_are_accepted() {
    let server = Server::tls();
    // One client configuration for every round: its session cache carries the tickets.
    let config = tls_config(Vec::new());
    for round in 0..3 {
        let mut tls = rustls::ClientConnection::new(
            config.clone(),
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut tcp = std::net::TcpStream::connect(server.data).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        assert!(response.starts_with(b"HTTP/1.1 404"));
        let kind = tls.handshake_kind();
        if round == 0 {
            assert_eq!(kind, Some(rustls::HandshakeKind::Full));
        } else {
            assert_eq!(kind, Some(rustls::HandshakeKind::Resumed), "round {round}");
        }
    }
}

//! The plain tunnel end to end: the real server, real clients (tungstenite and raw frames),
//! real backends, over TLS and plain TCP.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use testkit::prelude::*;
use tungstenite::Message;

fn echo_roundtrip(server: &Server) {
    let path = unique_path("bulk");
    server.add(&[(&path, echo_backend())]);
    let mut ws = server.ws(&path, &["smux_off"]);
    let data = pattern(4 << 20, 1);
    let mut echoed = Vec::with_capacity(data.len());
    // Messages of varying size, each echoed before the next goes out.
    let mut offset = 0;
    let mut size = 1;
    while offset < data.len() {
        let end = (offset + size).min(data.len());
        ws.send(Message::Binary(data[offset..end].to_vec().into()))
            .unwrap();
        while echoed.len() < end {
            match ws.read().unwrap() {
                Message::Binary(b) => echoed.extend_from_slice(&b),
                other => panic!("unexpected {other:?}"),
            }
        }
        offset = end;
        size = (size * 3 + 1) % 200_000 + 1;
    }
    assert!(echoed == data, "echoed bytes differ");
    ws.close(None).unwrap();
}

#[test]
fn bulk_echo_over_tls() {
    echo_roundtrip(&Server::tls());
}

#[test]
fn tls_12_clients_are_served_too() {
    let server = Server::tls();
    let path = unique_path("tls12");
    server.add(&[(&path, echo_backend())]);
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let config = tls_config_versions(Vec::new(), &[version]);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = rustls::ClientConnection::new(config, name).unwrap();
        let tcp = std::net::TcpStream::connect(server.data).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let mut conn = Transport::Tls(Box::new(rustls::StreamOwned::new(tls, tcp)));
        assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
        if let Transport::Tls(stream) = &conn {
            assert_eq!(stream.conn.protocol_version(), Some(expected));
        }
        // Frames larger than a TLS record, both ways, then a clean close.
        for size in [1, 16_383, 16_384, 16_385, 100_000] {
            let payload = pattern(size, size as u64);
            conn.write_all(&masked_frame(true, 0x2, &payload)).unwrap();
            assert!(read_data(&mut conn, size) == payload, "{expected:?} {size}");
        }
        conn.write_all(&masked_frame(true, 0x8, &[0x03, 0xe8]))
            .unwrap();
        assert_eq!(read_until_close(&mut conn).1, Some(1000));
    }
}

#[test]
fn bulk_echo_over_tls_with_epoll() {
    // io_uring is the default driver; epoll must relay the same bytes.
    echo_roundtrip(&Server::start(&["-force-tls", "-driver", "epoll"]));
    echo_roundtrip(&Server::start(&["-driver", "epoll"]));
}

#[test]
fn bulk_echo_over_plain_tcp() {
    echo_roundtrip(&Server::plain());
}

#[test]
fn upload_and_download_with_checksums() {
    // Writes to the client take a shortcut past the runtime when the socket has room:
    // under either driver, a full socket must fall back without losing a byte.
    for driver in ["io_uring", "epoll"] {
        updown_with_checksums(&Server::start(&["-force-tls", "-driver", driver]));
    }
}

fn updown_with_checksums(server: &Server) {
    let (addr, accepted) = capture_backend();
    let path = unique_path("updown");
    server.add(&[(&path, addr)]);
    let mut ws = server.ws(&path, &[]);
    let mut backend = accepted.recv_timeout(WAIT).unwrap();
    backend.set_read_timeout(Some(WAIT)).unwrap();

    // Client to dst: 16 MiB in 64 KiB messages.
    let up = pattern(16 << 20, 2);
    let reader = std::thread::spawn({
        let mut backend = backend.try_clone().unwrap();
        move || {
            let mut got = vec![0u8; 16 << 20];
            backend.read_exact(&mut got).unwrap();
            got
        }
    });
    for chunk in up.chunks(65536) {
        ws.send(Message::Binary(chunk.to_vec().into())).unwrap();
    }
    assert!(reader.join().unwrap() == up, "upload corrupted");

    // dst to client: 16 MiB, then dst closes; the client gets every byte, then a close.
    let down = pattern(16 << 20, 3);
    let writer = std::thread::spawn({
        let down = down.clone();
        move || {
            backend.write_all(&down).unwrap();
            backend.shutdown(Shutdown::Write).unwrap();
            backend
        }
    });
    let mut got = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => got.extend_from_slice(&b),
            Ok(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
                break;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("read failed after {} bytes: {e}", got.len()),
        }
    }
    assert!(
        got == down,
        "download corrupted ({} of {} bytes)",
        got.len(),
        down.len()
    );
    drop(writer.join().unwrap());
}

#[test]
fn frame_sizes_around_length_encodings() {
    let server = Server::tls();
    let path = unique_path("sizes");
    server.add(&[(&path, echo_backend())]);
    let mut conn = server.connect();
    let (status, _) = raw_upgrade(&mut conn, &path, "");
    assert_eq!(status, 101);
    for (i, size) in [1usize, 124, 125, 126, 127, 65535, 65536, 65537, 200_000]
        .into_iter()
        .enumerate()
    {
        let payload = pattern(size, 10 + i as u64);
        conn.write_all(&masked_frame(true, 0x2, &payload)).unwrap();
        assert!(read_data(&mut conn, size) == payload, "size {size}");
    }
}

#[test]
fn fragmented_and_text_messages_with_ping_between_fragments() {
    let server = Server::plain();
    let (addr, accepted) = capture_backend();
    let path = unique_path("frag");
    server.add(&[(&path, addr)]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    let mut backend = accepted.recv_timeout(WAIT).unwrap();
    backend.set_read_timeout(Some(WAIT)).unwrap();

    let mut frames = Vec::new();
    frames.extend(masked_frame(false, 0x1, "héllo ".as_bytes()));
    frames.extend(masked_frame(true, 0x9, b"are you there"));
    frames.extend(masked_frame(false, 0x0, "wörld".as_bytes()));
    frames.extend(masked_frame(true, 0x0, b"!"));
    frames.extend(masked_frame(true, 0x2, b" and binary"));
    conn.write_all(&frames).unwrap();

    let expected = "héllo wörld! and binary".as_bytes();
    let mut got = vec![0u8; expected.len()];
    backend.read_exact(&mut got).unwrap();
    assert_eq!(got, expected);
    let (fin, opcode, payload) = read_frame(&mut conn).unwrap();
    assert_eq!(
        (fin, opcode, payload.as_slice()),
        (true, 0xA, &b"are you there"[..])
    );
}

#[test]
fn ping_gets_pong_with_same_payload() {
    let server = Server::tls();
    let path = unique_path("ping");
    server.add(&[(&path, echo_backend())]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    for payload in [&b""[..], b"x", &[7u8; 125]] {
        conn.write_all(&masked_frame(true, 0x9, payload)).unwrap();
        let (fin, opcode, got) = read_frame(&mut conn).unwrap();
        assert_eq!((fin, opcode, got.as_slice()), (true, 0xA, payload));
    }
}

#[test]
fn client_close_is_answered_and_closes_dst_after_its_bytes() {
    let server = Server::tls();
    let (addr, accepted) = capture_backend();
    let path = unique_path("cclose");
    server.add(&[(&path, addr)]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    let mut backend = accepted.recv_timeout(WAIT).unwrap();
    backend.set_read_timeout(Some(WAIT)).unwrap();
    let data = pattern(300_000, 4);
    let mut frames = masked_frame(true, 0x2, &data);
    frames.extend(masked_frame(true, 0x8, &[0x03, 0xe8]));
    conn.write_all(&frames).unwrap();
    let mut got = Vec::new();
    backend.read_to_end(&mut got).unwrap();
    assert!(
        got == data,
        "dst got {} of {} bytes before EOF",
        got.len(),
        data.len()
    );
    let (_, code) = read_until_close(&mut conn);
    assert_eq!(code, Some(1000));
}

#[test]
fn dst_close_sends_remaining_bytes_then_close_frame() {
    let server = Server::plain();
    let data = pattern(500_000, 5);
    let sent = data.clone();
    let addr = backend(move |mut stream| {
        stream.write_all(&sent).unwrap();
    });
    let path = unique_path("dclose");
    server.add(&[(&path, addr)]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    let (got, code) = read_until_close(&mut conn);
    assert!(got == data);
    assert_eq!(code, Some(1000));
    // Answer the close; the server then closes the connection.
    conn.write_all(&masked_frame(true, 0x8, &[0x03, 0xe8]))
        .unwrap();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

#[test]
fn protocol_violations_close_with_rfc_codes() {
    let server = Server::plain();
    let path = unique_path("viol");
    server.add(&[(&path, echo_backend())]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", frame_with(true, 0x2, b"abc", None, 0), 1002),
        (
            "rsv1",
            frame_with(true, 0x2, b"abc", Some([1, 2, 3, 4]), 4),
            1002,
        ),
        ("opcode 3", masked_frame(true, 0x3, b"abc"), 1002),
        ("long ping", masked_frame(true, 0x9, &[0u8; 126]), 1002),
        ("fragmented ping", masked_frame(false, 0x9, b""), 1002),
        ("lone continuation", masked_frame(true, 0x0, b"x"), 1002),
        ("bad utf-8", masked_frame(true, 0x1, &[0xff, 0xfe]), 1007),
        (
            "close code 1005",
            masked_frame(true, 0x8, &[0x03, 0xed]),
            1002,
        ),
    ];
    for (name, frame, code) in cases {
        let mut conn = server.connect();
        assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101, "{name}");
        conn.write_all(&frame).unwrap();
        let (_, got) = read_until_close(&mut conn);
        assert_eq!(got, Some(code), "{name}");
    }
    // The server still serves.
    let mut ws = server.ws(&path, &[]);
    ws.send(Message::Binary(b"still here".to_vec().into()))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Message::Binary(b"still here".to_vec().into())
    );
}

#[test]
fn switching_protocols_response_and_subprotocols() {
    let server = Server::tls();
    let path = unique_path("proto");
    server.add(&[(&path, echo_backend())]);
    for (offer, expect) in [
        ("", None),
        ("Sec-WebSocket-Protocol: smux_off\r\n", Some("smux_off")),
        (
            "Sec-WebSocket-Protocol: foo, smux_off\r\n",
            Some("smux_off"),
        ),
        ("Sec-WebSocket-Protocol: foo\r\n", None),
    ] {
        let mut conn = server.connect();
        let (status, head) = raw_upgrade(&mut conn, &path, offer);
        assert_eq!(status, 101, "{offer}");
        assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert_eq!(header(&head, "upgrade").as_deref(), Some("websocket"));
        assert_eq!(header(&head, "connection").as_deref(), Some("Upgrade"));
        assert_eq!(
            header(&head, "sec-websocket-accept").as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(
            header(&head, "sec-websocket-protocol").as_deref(),
            expect,
            "{offer}"
        );
    }
}

#[test]
fn unknown_paths_get_an_ordinary_404_with_keep_alive() {
    let server = Server::tls();
    let mut conn = server.connect();
    for target in ["/", "/nope", "/favicon.ico?x=1"] {
        conn.write_all(format!("GET {target} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes())
            .unwrap();
        let (status, head, body) = read_response(&mut conn);
        assert_eq!(status, 404);
        assert_eq!(header(&head, "server").as_deref(), Some("nginx"));
        assert_eq!(header(&head, "content-type").as_deref(), Some("text/html"));
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("<title>404 Not Found</title>"));
    }
    // An upgrade to an unknown path is a 404 too, never a 101.
    let (status, head) = raw_upgrade(&mut conn, "/not-a-user", "");
    assert_eq!(status, 404);
    assert!(header(&head, "sec-websocket-accept").is_none());
}

#[test]
fn known_path_without_valid_upgrade_gets_http_errors() {
    let server = Server::plain();
    let path = unique_path("bad-upgrade");
    server.add(&[(&path, echo_backend())]);
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        (format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"), 405),
        (format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"), 426),
        (
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 12\r\n{key}\r\n"),
            426,
        ),
        (
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"),
            400,
        ),
        (
            format!("GET {path} HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"),
            400,
        ),
    ];
    for (request, expected) in cases {
        let (status, head, _) = http_request(server.data, &request);
        assert_eq!(status, expected, "{request}");
        if expected == 426 {
            assert!(
                header(&head, "upgrade").is_some()
                    || header(&head, "sec-websocket-version").as_deref() == Some("13")
            );
        }
    }
    let (_, head, _) = http_request(
        server.data,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n{key}\r\n"),
    );
    assert_eq!(
        header(&head, "sec-websocket-version").as_deref(),
        Some("13")
    );
}

#[test]
fn oversized_heads_get_431() {
    let server = Server::plain();
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(17 * 1024));
    assert_eq!(http_request(server.data, &long).0, 431);
    let mut many = "GET / HTTP/1.1\r\nHost: x\r\n".to_string();
    for i in 0..101 {
        many.push_str(&format!("X-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(http_request(server.data, &many).0, 431);
    assert_eq!(
        http_request(server.data, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").0,
        404
    );
}

#[test]
fn unreachable_dst_gets_502() {
    let server = Server::tls();
    let path = unique_path("dead");
    server.add(&[(&path, dead_addr())]);
    let mut conn = server.connect();
    let (status, _) = raw_upgrade(&mut conn, &path, "");
    assert_eq!(status, 502);
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .contains(&format!("for path {path}: dial failed"))
            || {
                std::thread::sleep(Duration::from_millis(200));
                server
                    .log
                    .lock()
                    .unwrap()
                    .contains(&format!("for path {path}: dial failed"))
            }
    );
}

#[test]
fn user_added_can_connect_at_once_on_any_worker_50_times() {
    let server = Server::tls();
    let backend = echo_backend();
    for i in 0..50 {
        let path = format!("/fresh-{i}");
        server.add(&[(&path, backend)]);
        let mut ws = server.ws(&path, &["smux_off"]);
        ws.send(Message::Binary(vec![i as u8; 10].into())).unwrap();
        assert_eq!(
            ws.read().unwrap(),
            Message::Binary(vec![i as u8; 10].into())
        );
    }
}

#[test]
fn deleting_a_user_leaves_its_open_tunnel_working() {
    let server = Server::plain();
    let path = unique_path("del");
    server.add(&[(&path, echo_backend())]);
    let mut ws = server.ws(&path, &[]);
    server.del(&[&path]);
    ws.send(Message::Binary(b"after delete".to_vec().into()))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Message::Binary(b"after delete".to_vec().into())
    );
    // A new connection to the deleted path gets a 404.
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 404);
}

#[test]
fn idle_tunnel_is_closed_after_timeout() {
    for driver in ["epoll", "io_uring"] {
        idle_close(driver);
    }
}

fn idle_close(driver: &str) {
    let server = Server::start(&["-timeout", "1s", "-driver", driver]);
    let path = unique_path("idle");
    server.add(&[(&path, echo_backend())]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    let start = Instant::now();
    let (_, code) = read_until_close(&mut conn);
    let waited = start.elapsed();
    assert_eq!(code, Some(1001));
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "closed after {waited:?}");
}

#[test]
fn one_way_download_outlives_the_idle_timeout() {
    let server = Server::start(&["-timeout", "1s"]);
    let addr = backend(|mut stream| {
        for i in 0..15u8 {
            std::thread::sleep(Duration::from_millis(250));
            if stream.write_all(&[i; 100]).is_err() {
                return;
            }
        }
    });
    let path = unique_path("trickle");
    server.add(&[(&path, addr)]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    let (got, code) = read_until_close(&mut conn);
    // 3.75 s of trickle through a 1 s idle timeout: all of it, then the backend's close.
    assert_eq!(got.len(), 1500);
    assert_eq!(code, Some(1000));
}

#[test]
fn alpn_selects_http11_even_when_h2_is_offered_first() {
    let server = Server::tls();
    // A client that offers h2 first still gets http/1.1.
    let mut conn = tls_client_with(vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    let mut tcp = std::net::TcpStream::connect(server.data).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    conn.complete_io(&mut tcp).unwrap();
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[test]
fn silent_connection_is_closed_by_the_head_deadline() {
    let server = Server::tls();
    let mut tcp = std::net::TcpStream::connect(server.data).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = tcp.read(&mut buf).unwrap_or(0);
    let waited = start.elapsed();
    assert_eq!(n, 0);
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
}

#[test]
fn client_close_delivers_every_byte_to_a_dst_that_is_still_sending() {
    let server = Server::plain();
    for round in 0..3u64 {
        let got = std::sync::Arc::new(std::sync::Mutex::new(0usize));
        let counter = std::sync::Arc::clone(&got);
        // A slow reader that echoes everything: when the client's close arrives, dst still
        // has bytes of ours to read and is still sending.
        let addr = backend(move |mut stream| {
            let mut buf = vec![0u8; 16384];
            let mut echo = true;
            loop {
                std::thread::sleep(Duration::from_millis(2));
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        *counter.lock().unwrap() += n;
                        if echo && stream.write_all(&buf[..n]).is_err() {
                            echo = false;
                        }
                    }
                }
            }
        });
        let path = unique_path("linger");
        server.add(&[(&path, addr)]);
        let mut conn = server.connect();
        assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
        let data = pattern(4 << 20, round);
        let mut frames = Vec::new();
        for chunk in data.chunks(65536) {
            frames.extend(masked_frame(true, 0x2, chunk));
        }
        frames.extend(masked_frame(true, 0x8, &[0x03, 0xe8]));
        let mut write_half = conn.tcp().try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = write_half.write_all(&frames);
        });
        let mut sink = Vec::new();
        let _ = conn.tcp().try_clone().unwrap().read_to_end(&mut sink);
        writer.join().unwrap();
        let deadline = Instant::now() + WAIT;
        while *got.lock().unwrap() < data.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(*got.lock().unwrap(), data.len(), "round {round}");
    }
}

#[test]
fn idle_tunnel_whose_client_stopped_reading_is_still_closed() {
    let server = Server::start(&["-timeout", "1s"]);
    let addr = backend(|mut stream| {
        let junk = vec![7u8; 65536];
        while stream.write_all(&junk).is_ok() {}
    });
    let path = unique_path("flood");
    server.add(&[(&path, addr)]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    // The client reads nothing: the server's frame to it blocks half-written, nothing
    // moves, and the tunnel goes idle. It must still end.
    std::thread::sleep(Duration::from_secs(4));
    conn.tcp()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("still open {:?} later: {e}", start.elapsed()),
        }
    }
}

/// An open, idle TLS tunnel holds no buffers, no timer and no room for the stages it has
/// left (handshake, head, upgrade): measured 6.5 KiB of server memory in a release build,
/// 15.5 KiB before its task stopped carrying its future twice (a debug build: 10.4 and
/// 19.3 KiB). Guarded at 10 KiB (14 in a debug build), which the old layout exceeds; issue
/// 4 asks for at most 16 and aims at 12.
#[test]
fn idle_tls_tunnels_stay_small() {
    let server = Server::start(&["-force-tls", "-timeout", "1h", "-workers", "1"]);
    let path = unique_path("idle-memory");
    let (backend, accepted) = capture_backend();
    server.add(&[(&path, backend)]);
    let open = || {
        let mut ws = server.ws(&path, &[]);
        // One message through, so the relay has run and its buffers come and go.
        ws.send(Message::Binary(vec![7u8; 16].into())).unwrap();
        ws
    };
    // The first tunnels size the worker's tables and the allocator's arenas.
    let warm: Vec<Ws> = (0..200).map(|_| open()).collect();
    let before = server.rss_kib();
    const COUNT: u64 = 1000;
    let tunnels: Vec<Ws> = (0..COUNT).map(|_| open()).collect();
    let mut held = Vec::new();
    while held.len() < warm.len() + tunnels.len() {
        held.push(
            accepted
                .recv_timeout(WAIT)
                .expect("the server dialed each tunnel"),
        );
    }
    let per_tunnel = (server.rss_kib() - before) as f64 / COUNT as f64;
    // Debug builds lay futures out with more temporaries.
    let limit = if cfg!(debug_assertions) { 14.0 } else { 10.0 };
    assert!(
        per_tunnel < limit,
        "{per_tunnel:.1} KiB of server memory per idle TLS tunnel"
    );
    drop((warm, tunnels, held));
}

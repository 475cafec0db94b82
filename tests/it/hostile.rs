//! The hostile-input suite: real clients doing bad things over real
//! sockets to the real server, and destinations that fail. Every case asserts what the client
//! gets back (an HTTP status, a WebSocket close code, an smux FIN, a closed socket, each within
//! a generous bound), then that the server still serves a normal user
//! (`testkit::server::assert_still_serves`), that nothing panicked, and that the server's open
//! file descriptors come back to their baseline once the hostile connections are gone
//! (`testkit::server::finish`). The cases' building blocks and bounds are in
//! `testkit::hostile`, `testkit::sock` and `testkit::smux`.
//!
//! The slow cases (the 10 s head deadline, the controller's 30 s body deadline, the 10 s dial
//! bound) run side by side in one test, so the file takes little more than those 30 s.
//!
//! Not here: fuzzing (`fuzz/`), the codecs' property tests (`properties.rs`), operator
//! limits (`operations.rs`) and shutdown (`shutdown.rs`).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::backend::{counting_echo, flooding_backend};
use testkit::hostile::*;
use testkit::http::json_reply;
use testkit::prelude::*;
use testkit::server::{
    assert_fds_settle_within, assert_still_serves, fd_baseline, finish, with_server,
};
use testkit::smux::{fin, smux, smux_with, FromServer, MuxReader, FIN, NOP, PSH, SYN};
use testkit::sock::*;
use testkit::tls::client_hello;
use testkit::ws::{close_payload, long_header, upgrade_request};

// =============================================================================================
// TLS port.

#[test]
fn tls_port_hangs_up_on_random_garbage() {
    assert_tls_refused(&pattern(4096, 1), false);
}

#[test]
fn tls_port_hangs_up_on_a_record_longer_than_tls_allows() {
    // A handshake record announcing 65535 bytes: over 2^14 + 2048, refused from its header.
    assert_tls_refused(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00], false);
}

#[test]
fn tls_port_hangs_up_on_application_data_before_the_handshake() {
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    record.extend_from_slice(&[0xAB; 32]);
    assert_tls_refused(&record, false);
}

#[test]
fn tls_port_hangs_up_on_a_fatal_alert_as_first_record() {
    assert_tls_refused(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28], false);
}

#[test]
fn tls_port_hangs_up_on_a_corrupted_client_hello() {
    let mut hello = client_hello();
    // Keep the record and handshake headers, scramble from the session id on: the lengths
    // inside no longer add up.
    let scramble = pattern(hello.len() - 43, 5);
    hello[43..].copy_from_slice(&scramble);
    assert_tls_refused(&hello, false);
}

#[test]
fn tls_port_closes_at_once_on_a_truncated_client_hello_then_eof() {
    let hello = client_hello();
    assert_tls_refused(&hello[..hello.len() / 2], true);
}

#[test]
fn tls_port_gives_plain_http_no_http_answer() {
    // Whatever an HTTPS server says to plain HTTP, it must not look like a tunnel's HTTP.
    assert_tls_refused(
        b"GET /anything HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        false,
    );
}

#[test]
fn tls_port_hangs_up_on_bad_records_after_the_handshake() {
    with_server(true, |server| {
        let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x40];
        forged.extend(pattern(0x40, 11));
        let cases: [(&str, Vec<u8>, bool); 5] = [
            ("a record that fails its MAC", forged, false),
            (
                "a header announcing 65535 bytes",
                vec![0x17, 0x03, 0x03, 0xff, 0xff],
                false,
            ),
            ("a plaintext handshake record", client_hello(), false),
            ("an empty record", vec![0x17, 0x03, 0x03, 0x00, 0x00], false),
            (
                "half a record, then EOF",
                vec![0x17, 0x03, 0x03, 0x00, 0x40, 1, 2, 3],
                true,
            ),
        ];
        for (what, bytes, eof) in cases {
            let mut conn = server.connect();
            // Half a request head first, so the server is reading records.
            conn.write_all(b"GET /x HTTP/1.1\r\n").unwrap();
            conn.handshake().expect("TLS handshake");
            conn.flush().unwrap();
            let Transport::Tls(tls) = conn else {
                unreachable!("TLS server")
            };
            let mut tls = *tls;
            assert_eq!(
                tls.conn.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            tls.sock.write_all(&bytes).unwrap();
            if eof {
                tls.sock.shutdown(Shutdown::Write).unwrap();
            }
            let started = Instant::now();
            read_to_close(&mut tls.sock);
            assert!(
                started.elapsed() < PROMPT,
                "{what}: closed after {:?}",
                started.elapsed()
            );
        }
    });
}

#[test]
fn plain_port_answers_a_client_hello_with_400() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (status, head, _, mut s) = ask(server.data, &client_hello());
    assert_eq!(status, 400, "{head}");
    expect_closed(&mut s, PROMPT);
    finish(&server, base);
}

#[test]
fn abandoned_and_reset_tls_handshakes_leak_nothing() {
    let server = Server::tls();
    let base = fd_baseline(&server);
    let hello = client_hello();
    let mut open = Vec::new();
    for i in 0..120 {
        let mut s = raw(server.data);
        match i % 4 {
            0 => reset(s),
            1 => {
                s.write_all(&hello[..hello.len() / 3]).unwrap();
                reset(s);
            }
            2 => {
                s.write_all(&hello).unwrap();
                drop(s);
            }
            _ => {
                // Left half-way through a handshake while the rest are cut off.
                s.write_all(&hello[..10]).unwrap();
                open.push(s);
            }
        }
    }
    // The half-open ones hold descriptors only until they are gone.
    assert_still_serves(&server);
    for s in open {
        reset(s);
    }
    // Complete handshakes, then drop without a word.
    for _ in 0..20 {
        let mut conn = server.connect();
        conn.write_all(b"GET").unwrap();
        drop(conn);
    }
    finish(&server, base);
}

// =============================================================================================
// Request heads.

#[test]
fn head_over_16_kib_gets_431_and_one_under_it_does_not() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let over = format!(
        "GET /x HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(17 * 1024)
    );
    assert_status_then_close(server.data, over.as_bytes(), 431);
    // Sent in a single write or in pieces, same answer.
    let mut s = raw(server.data);
    for piece in over.as_bytes().chunks(1000) {
        if s.write_all(piece).is_err() {
            break;
        }
    }
    let (status, _, _) = read_response(&mut s);
    assert_eq!(status, 431);
    let under = format!(
        "GET /x HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(15 * 1024)
    );
    assert_eq!(ask(server.data, under.as_bytes()).0, 404);
    finish(&server, base);
}

#[test]
fn more_than_100_headers_get_431() {
    let server = Server::tls();
    let base = fd_baseline(&server);
    let mut request = "GET /x HTTP/1.1\r\nHost: x\r\n".to_string();
    for i in 0..150 {
        request.push_str(&format!("X-{i}: y\r\n"));
    }
    request.push_str("\r\n");
    let mut conn = server.connect();
    conn.write_all(request.as_bytes()).unwrap();
    let (status, head, _) = read_response(&mut conn);
    assert_eq!(status, 431, "{head}");
    expect_closed(&mut conn, PROMPT);
    finish(&server, base);
}

#[test]
fn path_over_16_kib_gets_431() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let request = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(20 * 1024));
    assert_status_then_close(server.data, request.as_bytes(), 431);
    // Even as a known user's path with a valid upgrade around it.
    let long = format!("/{}", "q".repeat(17 * 1024));
    server.add(&[(&long, echo_backend())]);
    let request = upgrade_request("GET", &long, "HTTP/1.1", &[], "");
    assert_status_then_close(server.data, request.as_bytes(), 431);
    finish(&server, base);
}

#[test]
fn malformed_request_lines_and_headers_get_400() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let cases: [&[u8]; 10] = [
        b"GET\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / FTP/1.1\r\nHost: x\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
        b"GET / HTTP/1.1\rHost: x\r\n\r\n",
        b"\xff\xfe\xfd\xfc\r\n\r\n",
    ];
    for request in cases {
        assert_status_then_close(server.data, request, 400);
    }
    finish(&server, base);
}

#[test]
fn truncated_head_then_eof_gets_no_answer() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let mut s = raw(server.data);
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upg")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = expect_closed(&mut s, PROMPT);
    assert!(
        got.is_empty(),
        "answered a head that never ended: {:?}",
        lossy(&got)
    );
    finish(&server, base);
}

#[test]
fn keep_alive_request_flood_is_capped() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let mut s = raw(server.data);
    let mut served = 0;
    loop {
        if s.write_all(b"GET /nobody HTTP/1.1\r\nHost: x\r\n\r\n")
            .is_err()
        {
            break;
        }
        // One response, or the end of the connection.
        let mut first = [0u8; 1];
        match s.read(&mut first) {
            Ok(1) => {}
            _ => break,
        }
        let (status, _, _) = read_response(&mut (&first[..]).chain(&mut s));
        assert_eq!(status, 404);
        served += 1;
        assert!(served <= 1000, "one connection served over 1000 requests");
    }
    assert!(served >= 10, "closed after only {served} requests");
    finish(&server, base);
}

#[test]
fn last_response_before_the_keep_alive_cap_says_close() {
    with_server(false, |server| {
        let mut s = raw(server.data);
        let mut last = String::new();
        loop {
            if s.write_all(b"GET /nobody HTTP/1.1\r\nHost: x\r\n\r\n")
                .is_err()
            {
                break;
            }
            let mut first = [0u8; 1];
            match s.read(&mut first) {
                Ok(1) => {}
                _ => break,
            }
            last = read_response(&mut (&first[..]).chain(&mut s)).1;
        }
        // RFC 9112 9.6: a server that will close after this response says so in it.
        assert_eq!(
            header(&last, "connection").as_deref(),
            Some("close"),
            "{last}"
        );
    });
}

#[test]
fn pipelined_requests_before_an_upgrade_are_answered_in_order() {
    with_server(false, |server| {
        let path = unique_path("pipelined");
        server.add(&[(&path, echo_backend())]);
        let mut s = raw(server.data);
        let mut burst = b"GET /nobody HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        burst.extend(b"HEAD /nobody HTTP/1.1\r\nHost: x\r\n\r\n");
        burst.extend(upgrade_request("GET", &path, "HTTP/1.1", &[], "").as_bytes());
        burst.extend(masked_frame(true, 0x2, b"in the same packet"));
        s.write_all(&burst).unwrap();
        assert_eq!(read_response(&mut s).0, 404);
        // HEAD: the head of a 404 page and no body.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 404"), "{:?}", lossy(&head));
        let (status, head, _) = read_response(&mut s);
        assert_eq!(status, 101, "{head}");
        assert_eq!(read_data(&mut s, 18), b"in the same packet");
    });
}

#[test]
fn many_half_sent_heads_do_not_disturb_other_users() {
    with_server(true, |server| {
        let hello = client_hello();
        let held: Vec<TcpStream> = (0..500)
            .map(|i| {
                let mut s = raw(server.data);
                let bytes: &[u8] = if i % 2 == 0 { &hello[..20] } else { &hello };
                s.write_all(bytes).unwrap();
                s
            })
            .collect();
        let started = Instant::now();
        assert_still_serves(server);
        assert!(
            started.elapsed() < PROMPT,
            "served only after {:?}",
            started.elapsed()
        );
        for s in held {
            reset(s);
        }
    });
}

#[test]
fn upgrade_without_key_gets_400() {
    with_server(false, |server| {
        let request = |p: &str| upgrade_request("GET", p, "HTTP/1.1", &["Sec-WebSocket-Key"], "");
        upgrade_refused(server, request, 400);
        let empty = "Sec-WebSocket-Key: \r\n";
        let request =
            |p: &str| upgrade_request("GET", p, "HTTP/1.1", &["Sec-WebSocket-Key"], empty);
        upgrade_refused(server, request, 400);
    });
}

#[test]
fn upgrade_with_wrong_or_missing_version_gets_426() {
    with_server(false, |server| {
        let eight = "Sec-WebSocket-Version: 8\r\n";
        let request =
            |p: &str| upgrade_request("GET", p, "HTTP/1.1", &["Sec-WebSocket-Version"], eight);
        let head = upgrade_refused(server, request, 426);
        assert_eq!(
            header(&head, "sec-websocket-version").as_deref(),
            Some("13")
        );
        let request =
            |p: &str| upgrade_request("GET", p, "HTTP/1.1", &["Sec-WebSocket-Version"], "");
        upgrade_refused(server, request, 426);
    });
}

#[test]
fn upgrade_by_post_gets_405() {
    with_server(false, |server| {
        let request =
            |p: &str| upgrade_request("POST", p, "HTTP/1.1", &[], "Content-Length: 0\r\n");
        let head = upgrade_refused(server, request, 405);
        assert_eq!(header(&head, "allow").as_deref(), Some("GET"));
    });
}

#[test]
fn upgrade_over_http_1_0_gets_400() {
    with_server(true, |server| {
        upgrade_refused(
            server,
            |p| upgrade_request("GET", p, "HTTP/1.0", &[], ""),
            400,
        );
    });
}

#[test]
fn upgrade_without_upgrade_headers_gets_426() {
    with_server(false, |server| {
        let request = |p: &str| upgrade_request("GET", p, "HTTP/1.1", &["Upgrade"], "");
        upgrade_refused(server, request, 426);
        let request =
            |p: &str| upgrade_request("GET", p, "HTTP/1.1", &["Upgrade"], "Upgrade: h2c\r\n");
        upgrade_refused(server, request, 426);
        let keep = "Connection: keep-alive\r\n";
        let request = |p: &str| upgrade_request("GET", p, "HTTP/1.1", &["Connection"], keep);
        upgrade_refused(server, request, 426);
    });
}

#[test]
fn upgrade_with_a_body_gets_400() {
    with_server(false, |server| {
        let length = "Content-Length: 5\r\n";
        let request = |p: &str| upgrade_request("GET", p, "HTTP/1.1", &[], length) + "hello";
        upgrade_refused(server, request, 400);
        let chunked = "Transfer-Encoding: chunked\r\n";
        let request = |p: &str| upgrade_request("GET", p, "HTTP/1.1", &[], chunked) + "0\r\n\r\n";
        upgrade_refused(server, request, 400);
    });
}

#[test]
fn upgrade_to_unknown_or_undecodable_paths_gets_404() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    server.add(&[("/user", echo_backend())]);
    for path in [
        "/nobody",
        "/user/",
        "/USER",
        "/user%",
        "/%zz",
        "/%ff%fe",
        "*",
        "/user\u{e9}",
    ] {
        let (status, head, _, _) = ask(
            server.data,
            upgrade_request("GET", path, "HTTP/1.1", &[], "").as_bytes(),
        );
        assert_eq!(status, 404, "{path}: want a web server's 404");
        assert!(header(&head, "sec-websocket-accept").is_none());
    }
    finish(&server, base);
}

// =============================================================================================
// WebSocket frames.

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

#[test]
fn unmasked_frame_gets_1002() {
    with_server(true, |server| {
        let mut frames = masked_frame(true, 0x2, b"before");
        frames.extend(frame_with(true, 0x2, b"unmasked", None, 0));
        ws_violation(server, &frames, 1002, b"before", b"before");
    });
}

#[test]
fn reserved_bits_get_1002() {
    with_server(false, |server| {
        for rsv in [0b100, 0b010, 0b001] {
            let frames = frame_with(true, 0x2, b"x", Some(KEY), rsv);
            ws_violation(server, &frames, 1002, b"", b"");
        }
    });
}

#[test]
fn oversized_control_frame_gets_1002() {
    with_server(true, |server| {
        ws_violation(server, &masked_frame(true, 0x9, &[1; 126]), 1002, b"", b"");
        // Announced with a 64-bit length, refused before its payload.
        ws_violation(server, &long_header(0x8, 1 << 20, KEY), 1002, b"", b"");
    });
}

#[test]
fn fragmented_control_frame_gets_1002() {
    with_server(false, |server| {
        let frames = masked_frame(false, 0x9, b"half a ping");
        ws_violation(server, &frames, 1002, b"", b"");
    });
}

#[test]
fn reserved_opcodes_get_1002() {
    with_server(false, |server| {
        for opcode in [0x3, 0x7, 0xB, 0xF] {
            ws_violation(server, &masked_frame(true, opcode, b"?"), 1002, b"", b"");
        }
    });
}

#[test]
fn bad_close_codes_get_1002() {
    with_server(false, |server| {
        for code in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535] {
            let frames = masked_frame(true, 0x8, &close_payload(code, b""));
            ws_violation(server, &frames, 1002, b"", b"");
        }
    });
}

#[test]
fn close_with_a_one_byte_payload_gets_1002() {
    with_server(true, |server| {
        ws_violation(server, &masked_frame(true, 0x8, &[0x03]), 1002, b"", b"");
    });
}

#[test]
fn invalid_utf8_text_gets_1007() {
    with_server(false, |server| {
        // A bad byte after a valid start, in one frame and after a valid fragment.
        let frames = masked_frame(true, 0x1, b"ok \xff");
        ws_violation(server, &frames, 1007, b"", b"ok ");
        let mut frames = masked_frame(false, 0x1, b"ok ");
        frames.extend(masked_frame(true, 0x0, b"\xff"));
        ws_violation(server, &frames, 1007, b"ok ", b"ok ");
        // A message that ends inside a character.
        let mut frames = masked_frame(false, 0x1, b"caf");
        frames.extend(masked_frame(true, 0x0, &[0xC3]));
        ws_violation(server, &frames, 1007, b"caf", b"caf\xC3");
        // An overlong encoding and a surrogate.
        ws_violation(
            server,
            &masked_frame(true, 0x1, b"\xC0\xAF"),
            1007,
            b"",
            b"",
        );
        ws_violation(
            server,
            &masked_frame(true, 0x1, b"\xED\xA0\x80"),
            1007,
            b"",
            b"",
        );
    });
}

#[test]
fn invalid_utf8_close_reason_gets_1007() {
    with_server(false, |server| {
        let frames = masked_frame(true, 0x8, &close_payload(1000, b"bye \xff"));
        ws_violation(server, &frames, 1007, b"", b"");
    });
}

#[test]
fn continuation_without_a_start_gets_1002() {
    with_server(true, |server| {
        ws_violation(server, &masked_frame(true, 0x0, b"orphan"), 1002, b"", b"");
    });
}

#[test]
fn new_message_inside_a_fragmented_one_gets_1002() {
    with_server(false, |server| {
        let mut frames = masked_frame(false, 0x2, b"first ");
        frames.extend(masked_frame(true, 0x2, b"second"));
        ws_violation(server, &frames, 1002, b"first ", b"first ");
    });
}

#[test]
fn length_of_2_pow_63_gets_1002() {
    with_server(false, |server| {
        let mut frames = masked_frame(true, 0x2, b"ok");
        frames.extend(long_header(0x2, 1 << 63, KEY));
        ws_violation(server, &frames, 1002, b"ok", b"ok");
        ws_violation(server, &long_header(0x2, u64::MAX, KEY), 1002, b"", b"");
    });
}

#[test]
fn truncated_frame_then_eof_closes_both_sides() {
    let server = Server::tls();
    let base = fd_baseline(&server);
    let (mut conn, mut backend) = tunnel(&server);
    // A frame announcing 1000 bytes, 10 of them sent, then the client's EOF.
    let frame = masked_frame(true, 0x2, &pattern(1000, 8));
    conn.write_all(&frame[..4 + 4 + 10]).unwrap();
    conn.flush().unwrap();
    if let Transport::Tls(tls) = &mut conn {
        tls.conn.send_close_notify();
        tls.conn.write_tls(&mut tls.sock).unwrap();
        tls.sock.shutdown(Shutdown::Write).unwrap();
    }
    // dst gets the 10 bytes that came, then EOF; the client's connection is closed.
    assert_eq!(expect_closed(&mut backend, PROMPT), pattern(1000, 8)[..10]);
    let after = expect_closed(&mut conn, PROMPT);
    assert!(
        after.is_empty() || after[0] == 0x88,
        "only a close frame may follow: {after:?}"
    );
    finish(&server, base);
}

#[test]
fn huge_legal_length_is_streamed_not_buffered() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (mut conn, mut backend) = tunnel(&server);
    let rss_before = server.rss_kib();
    // A frame announcing 2^62 bytes, of which 4 MiB come before the client goes away.
    let data = pattern(4 << 20, 9);
    let mut masked = data.clone();
    for (i, b) in masked.iter_mut().enumerate() {
        *b ^= KEY[i % 4];
    }
    let reader = thread::spawn(move || {
        let mut got = vec![0u8; 4 << 20];
        backend.read_exact(&mut got).unwrap();
        (got, backend)
    });
    conn.write_all(&long_header(0x2, 1 << 62, KEY)).unwrap();
    conn.write_all(&masked).unwrap();
    let (got, mut backend) = reader.join().unwrap();
    assert!(got == data, "payload of a huge frame corrupted");
    assert!(
        server.rss_kib() < rss_before + RSS_SLACK_KIB,
        "RSS grew with a huge announced length"
    );
    conn.tcp().shutdown(Shutdown::Write).unwrap();
    expect_closed(&mut backend, PROMPT);
    expect_closed(&mut conn, PROMPT);
    finish(&server, base);
}

#[test]
fn ping_flood_is_answered_pong_for_pong() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (conn, _backend) = tunnel(&server);
    let Transport::Tcp(mut conn) = conn else {
        unreachable!("plain server")
    };
    const PINGS: usize = 20_000;
    let mut writer = conn.try_clone().unwrap();
    let flood = thread::spawn(move || {
        let mut frames = Vec::new();
        for i in 0..PINGS {
            let mut payload = (i as u32).to_be_bytes().to_vec();
            payload.resize(125, 0xEE);
            frames.extend(masked_frame(true, 0x9, &payload));
        }
        writer.write_all(&frames).unwrap();
    });
    for i in 0..PINGS {
        let (fin, opcode, payload) = read_frame(&mut conn).expect("pong");
        assert_eq!((fin, opcode), (true, 0xA));
        assert_eq!(payload[..4], (i as u32).to_be_bytes(), "pong {i}");
    }
    flood.join().unwrap();
    conn.write_all(&masked_frame(true, 0x8, &close_payload(1000, b"")))
        .unwrap();
    assert_eq!(read_until_close(&mut conn).1, Some(1000));
    finish(&server, base);
}

#[test]
fn frames_sent_one_byte_per_write_are_decoded() {
    let server = Server::tls();
    let base = fd_baseline(&server);
    let path = unique_path("bytewise");
    server.add(&[(&path, echo_backend())]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    let mut frames = masked_frame(false, 0x1, "h\u{e9}".as_bytes());
    frames.extend(masked_frame(true, 0x9, b"between"));
    frames.extend(masked_frame(true, 0x0, "llo \u{1F600}".as_bytes()));
    for byte in &frames {
        conn.write_all(&[*byte]).unwrap();
        conn.flush().unwrap();
    }
    // Data may be relayed before the ping completes: take frames in any order.
    let expected = "h\u{e9}llo \u{1F600}".as_bytes();
    let mut data = Vec::new();
    let mut pong = None;
    while data.len() < expected.len() || pong.is_none() {
        match read_frame(&mut conn).unwrap() {
            (_, 0xA, payload) => pong = Some(payload),
            (_, 0x2, payload) => data.extend_from_slice(&payload),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pong.as_deref(), Some(&b"between"[..]));
    assert_eq!(data, expected);
    finish(&server, base);
}

#[test]
fn floods_of_empty_frames_and_tiny_fragments_are_harmless() {
    with_server(false, |server| {
        let (mut conn, mut backend) = tunnel(server);
        let mut frames = Vec::new();
        for _ in 0..100_000 {
            frames.extend(masked_frame(true, 0x2, b""));
        }
        frames.extend(masked_frame(false, 0x2, b"<"));
        for _ in 0..100_000 {
            frames.extend(masked_frame(false, 0x0, b"."));
        }
        frames.extend(masked_frame(true, 0x0, b">"));
        for _ in 0..10_000 {
            frames.extend(masked_frame(true, 0xA, b"unsolicited pong"));
        }
        let started = Instant::now();
        let writer = {
            let mut conn = conn.tcp().try_clone().unwrap();
            thread::spawn(move || conn.write_all(&frames).unwrap())
        };
        let mut got = vec![0u8; 100_002];
        backend.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!((got[0], got[100_001]), (b'<', b'>'));
        assert!(got[1..100_001].iter().all(|&b| b == b'.'));
        assert!(
            started.elapsed() < PROMPT * 2,
            "took {:?}",
            started.elapsed()
        );
        conn.write_all(&masked_frame(true, 0x8, &close_payload(1000, b"")))
            .unwrap();
        assert_eq!(read_until_close(&mut conn).1, Some(1000));
    });
}

#[test]
fn bytes_after_a_close_frame_are_ignored() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (mut conn, mut backend) = tunnel(&server);
    let mut frames = masked_frame(true, 0x2, b"last words");
    frames.extend(masked_frame(true, 0x8, &close_payload(1000, b"bye")));
    frames.extend(masked_frame(true, 0x2, b"after close"));
    frames.extend(frame_with(true, 0x2, b"unmasked garbage", None, 0b111));
    conn.write_all(&frames).unwrap();
    assert_eq!(read_until_close(&mut conn).1, Some(1000));
    assert_eq!(expect_closed(&mut backend, PROMPT), b"last words");
    finish(&server, base);
}

// =============================================================================================
// smux.

#[test]
fn smux_bad_version_ends_the_session_with_1002() {
    with_server(false, |server| {
        smux_violation(server, &smux_with(2, SYN, 0, 3, b""));
        smux_violation(server, &smux_with(0, PSH, 2, 1, b"hi"));
    });
}

#[test]
fn smux_bad_cmd_ends_the_session_with_1002() {
    // UPD (4) is version 2 only.
    with_server(false, |server| {
        smux_violation(server, &smux_with(1, 4, 8, 1, &[0; 8]));
        smux_violation(server, &smux_with(1, 0xff, 0, 1, b""));
    });
}

#[test]
fn websocket_violation_inside_a_mux_session_gets_1002() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (dst, _) = counting_echo();
    let mut conn = mux_session(&server, dst);
    let mut rx = MuxReader::default();
    conn.write_all(&frame_with(true, 0x2, &smux(SYN, 1, b""), None, 0))
        .unwrap();
    assert_eq!(rx.next(&mut conn), FromServer::Close(Some(1002)));
    expect_closed(&mut conn, PROMPT);
    finish(&server, base);
}

#[test]
fn smux_syn_flood_gets_fins_beyond_16_streams_and_the_session_lives() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (dst, dialed) = counting_echo();
    let mut conn = mux_session(&server, dst);
    let mut rx = MuxReader::default();
    let sids: Vec<u32> = (0..40).map(|i| 2 * i + 1).collect();
    let syns: Vec<u8> = sids.iter().flat_map(|&sid| smux(SYN, sid, b"")).collect();
    send_mux(&mut conn, &syns);
    let mut refused = BTreeSet::new();
    while refused.len() < 24 {
        match rx.next(&mut conn) {
            FromServer::Smux {
                cmd: FIN,
                sid,
                payload,
            } if payload.is_empty() => assert!(refused.insert(sid), "two FINs for {sid}"),
            other => panic!("expected FINs for the refused SYNs, got {other:?}"),
        }
    }
    assert_eq!(refused, sids[16..].iter().copied().collect());
    // Data for an open stream flows; data for a refused one is dropped.
    send_mux(&mut conn, &smux(PSH, sids[20], b"refused"));
    send_mux(&mut conn, &smux(PSH, 1, b"hello"));
    assert_eq!(rx.read_stream(&mut conn, 1, 5), b"hello");
    assert!(rx.ping(&mut conn).is_empty());
    let deadline = Instant::now() + PROMPT;
    while dialed.load(Ordering::SeqCst) < 16 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(dialed.load(Ordering::SeqCst), 16, "dst connections");
    // The limit is on open streams: once one closes, a new SYN is accepted.
    send_mux(&mut conn, &smux(FIN, 1, b""));
    send_mux(&mut conn, &smux(SYN, 101, b""));
    send_mux(&mut conn, &smux(PSH, 101, b"again"));
    loop {
        match rx.next(&mut conn) {
            // The server may say FIN for stream 1 once its dst closes.
            FromServer::Smux {
                cmd: FIN, sid: 1, ..
            } => {}
            FromServer::Smux {
                cmd: PSH,
                sid: 101,
                payload,
            } => {
                let mut got = payload;
                if got.len() < 5 {
                    got.extend(rx.read_stream(&mut conn, 101, 5 - got.len()));
                }
                assert_eq!(got, b"again");
                break;
            }
            other => panic!("expected stream 101's echo, got {other:?}"),
        }
    }
    drop(conn);
    finish(&server, base);
}

#[test]
fn smux_data_for_unknown_streams_is_dropped_and_the_session_lives() {
    let server = Server::tls();
    let base = fd_baseline(&server);
    let (dst, dialed) = counting_echo();
    let mut conn = mux_session(&server, dst);
    let mut rx = MuxReader::default();
    send_mux(&mut conn, &smux(PSH, 7, &pattern(1000, 1)));
    send_mux(&mut conn, &smux(PSH, 0, b"sid zero"));
    send_mux(&mut conn, &smux(PSH, u32::MAX, &pattern(65535, 2)));
    send_mux(&mut conn, &smux(SYN, 1, b""));
    send_mux(&mut conn, &smux(PSH, 1, b"only me"));
    assert_eq!(rx.read_stream(&mut conn, 1, 7), b"only me");
    assert!(rx.ping(&mut conn).is_empty());
    assert_eq!(dialed.load(Ordering::SeqCst), 1);
    finish(&server, base);
}

#[test]
fn smux_fin_for_unknown_streams_is_ignored() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (dst, dialed) = counting_echo();
    let mut conn = mux_session(&server, dst);
    let mut rx = MuxReader::default();
    for sid in [1, 3, 12345, u32::MAX] {
        send_mux(&mut conn, &smux(FIN, sid, b""));
    }
    // A FIN with a payload, and a NOP with one: both consumed and ignored.
    send_mux(&mut conn, &smux(FIN, 9, b"junk"));
    send_mux(&mut conn, &smux(NOP, 0, &[0xAA; 300]));
    assert!(rx.ping(&mut conn).is_empty());
    send_mux(&mut conn, &smux(SYN, 1, b""));
    send_mux(&mut conn, &smux(PSH, 1, b"still here"));
    assert_eq!(rx.read_stream(&mut conn, 1, 10), b"still here");
    assert_eq!(dialed.load(Ordering::SeqCst), 1);
    finish(&server, base);
}

#[test]
fn smux_duplicate_syn_opens_one_stream() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (dst, dialed) = counting_echo();
    let mut conn = mux_session(&server, dst);
    let mut rx = MuxReader::default();
    send_mux(&mut conn, &[smux(SYN, 5, b""), smux(SYN, 5, b"")].concat());
    send_mux(&mut conn, &smux(SYN, 5, b""));
    send_mux(&mut conn, &smux(PSH, 5, b"once"));
    assert_eq!(rx.read_stream(&mut conn, 5, 4), b"once");
    assert!(rx.ping(&mut conn).is_empty());
    assert_eq!(dialed.load(Ordering::SeqCst), 1);
    finish(&server, base);
}

#[test]
fn smux_frames_split_across_websocket_frames_byte_by_byte() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (dst, _) = counting_echo();
    let mut conn = mux_session(&server, dst);
    let mut rx = MuxReader::default();
    let bytes = [smux(SYN, 1, b""), smux(PSH, 1, b"split everywhere")].concat();
    for byte in &bytes {
        send_mux(&mut conn, &[*byte]);
    }
    assert_eq!(rx.read_stream(&mut conn, 1, 16), b"split everywhere");
    finish(&server, base);
}

#[test]
fn smux_stream_churn_leaks_nothing() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (dst, dialed) = counting_echo();
    let mut conn = mux_session(&server, dst);
    let mut rx = MuxReader::default();
    let mut sid = 1;
    for _ in 0..25 {
        let batch: Vec<u32> = (0..10).map(|i| sid + 2 * i).collect();
        sid += 20;
        let mut out = Vec::new();
        for s in &batch {
            out.extend(smux(SYN, *s, b""));
            out.extend(smux(PSH, *s, &s.to_le_bytes()));
        }
        send_mux(&mut conn, &out);
        let mut echoed = BTreeSet::new();
        while echoed.len() < batch.len() {
            match rx.next(&mut conn) {
                FromServer::Smux {
                    cmd: PSH,
                    sid: s,
                    payload,
                } => {
                    assert_eq!(payload, s.to_le_bytes());
                    echoed.insert(s);
                }
                FromServer::Smux { cmd: FIN, .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let fins: Vec<u8> = batch.iter().flat_map(|s| smux(FIN, *s, b"")).collect();
        send_mux(&mut conn, &fins);
    }
    assert_eq!(dialed.load(Ordering::SeqCst), 250);
    // Every stream is closed, the session alone stays: the fds of 250 dst connections are
    // back, the session's own included once it goes.
    conn.write_all(&masked_frame(true, 0x8, &close_payload(1000, b"")))
        .unwrap();
    loop {
        if let FromServer::Close(code) = rx.next(&mut conn) {
            assert_eq!(code, Some(1000));
            break;
        }
    }
    finish(&server, base);
}

#[test]
fn dropping_a_mux_session_cancels_its_pending_dials() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let hole = black_hole();
    let mut conn = mux_session(&server, hole.addr);
    let syns: Vec<u8> = (0..16).flat_map(|i| smux(SYN, 2 * i + 1, b"")).collect();
    send_mux(&mut conn, &syns);
    let mut rx = MuxReader::default();
    assert!(rx.ping(&mut conn).is_empty());
    drop(conn);
    // The 16 hanging dials go with the session, well before the 10 s dial bound.
    assert_fds_settle_within(&server, base, Duration::from_secs(4));
    finish(&server, base);
}

#[test]
fn dropping_a_mux_session_closes_all_its_streams() {
    let server = Server::tls();
    let base = fd_baseline(&server);
    let (dst, accepted) = capture_backend();
    let mut conn = mux_session(&server, dst);
    let syns: Vec<u8> = (0..16).flat_map(|i| smux(SYN, 2 * i + 1, b"")).collect();
    send_mux(&mut conn, &syns);
    let mut backends: Vec<TcpStream> = (0..16)
        .map(|_| {
            let b = accepted.recv_timeout(WAIT).expect("16 streams dialed");
            b.set_read_timeout(Some(WAIT)).unwrap();
            b
        })
        .collect();
    let Transport::Tls(tls) = conn else {
        unreachable!("TLS server")
    };
    let tls = *tls;
    reset(tls.sock);
    for backend in &mut backends {
        expect_closed(backend, PROMPT);
    }
    finish(&server, base);
}

// =============================================================================================
// Controller.

#[test]
fn controller_bad_json_gets_400() {
    let bodies: Vec<Vec<u8>> = [
        &b"{"[..],
        b"{\"opt\":}",
        b"{\"opt\":9,}",
        b"{'opt':9}",
        b"{opt:9}",
        b"{\"opt\":9",
        b"\xff\xfe{\"opt\":9}",
        b"{\"opt\":9}\x00",
        b"{\"opt\":NaN}",
        b"{\"opt\":Infinity}",
        b"{\"opt\":1,\"args_bunch\":[{\"path\":\"/\\ud800\",\"dst\":\"h:1\"}]}",
        b"{\"opt\":1,\"args_bunch\":[{\"path\":\"/\xff\",\"dst\":\"h:1\"}]}",
        b"{\"opt\":1,\"args_bunch\":[{\"path\":\"/a\\q\",\"dst\":\"h:1\"}]}",
        b"\"just a string\"",
        b"42",
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    assert_bodies_refused(&bodies, 400);
}

#[test]
fn controller_wrong_types_get_400() {
    let bodies: Vec<Vec<u8>> = [
        r#"{"opt":[9]}"#,
        r#"{"opt":{"value":9}}"#,
        r#"{"opt":"9"}"#,
        r#"{"opt":false}"#,
        r#"{"opt":1,"args_bunch":"/a h:1"}"#,
        r#"{"opt":1,"args_bunch":[1,2]}"#,
        r#"{"opt":1,"args_bunch":[null]}"#,
        r#"{"opt":1,"args_bunch":[{"path":"/a","dst":["h:1"]}]}"#,
        r#"{"opt":1,"args_bunch":[{"path":{"p":"/a"},"dst":"h:1"}]}"#,
        r#"{"opt":2,"args_bunch":[{"path":true}]}"#,
    ]
    .iter()
    .map(|b| b.as_bytes().to_vec())
    .collect();
    assert_bodies_refused(&bodies, 400);
}

#[test]
fn controller_entry_given_as_an_array_gets_400() {
    // The controller's contract: fields of the wrong JSON type are a 400. An args_bunch entry must be an
    // object; serde's derived struct visitor also takes a sequence, field by field.
    let bodies: Vec<Vec<u8>> = [
        r#"{"opt":1,"args_bunch":[["/a","h:1"]]}"#,
        r#"{"opt":2,"args_bunch":[["/keep"]]}"#,
        r#"{"opt":1,"args_bunch":[[]]}"#,
    ]
    .iter()
    .map(|b| b.as_bytes().to_vec())
    .collect();
    assert_bodies_refused(&bodies, 400);
}

#[test]
fn controller_huge_numbers_are_refused_not_wrapped() {
    let million = "9".repeat(1_000_000);
    let cases: Vec<(String, u16, u64)> = vec![
        (r#"{"opt":1e400}"#.into(), 400, 2),
        (r#"{"opt":9.0}"#.into(), 400, 2),
        (r#"{"opt":9e0}"#.into(), 400, 2),
        (r#"{"opt":18446744073709551625}"#.into(), 400, 2),
        (r#"{"opt":-9223372036854775809}"#.into(), 400, 2),
        (format!(r#"{{"opt":{million}}}"#), 400, 2),
        // 9 modulo 2^32 and 2^64 - 7: numbers that would wrap to a real command must not.
        (r#"{"opt":4294967305}"#.into(), 200, 2),
        (r#"{"opt":-9223372036854775799}"#.into(), 200, 2),
        // Unknown fields are skipped, however large their numbers.
        (format!(r#"{{"opt":9,"x":{million}}}"#), 200, 1),
        (r#"{"opt":9,"x":1e999999,"y":-0.0e-99999}"#.into(), 200, 1),
    ];
    with_server(false, |server| {
        for (body, status, res) in &cases {
            let started = Instant::now();
            let (got, reply) = ctl_post(server, body.as_bytes());
            assert_eq!(
                (got, reply["res"].as_u64()),
                (*status, Some(*res)),
                "{}: {reply}",
                lossy(body.as_bytes())
            );
            assert_eq!(reply["current_users"], 0);
            assert!(started.elapsed() < PROMPT);
        }
    });
}

#[test]
fn controller_deep_nesting_is_refused_or_skipped_without_a_crash() {
    let depth = 500_000;
    let server = Server::plain();
    let base = fd_baseline(&server);
    let refused = [
        format!(r#"{{"opt":{}{}}}"#, "[".repeat(depth), "]".repeat(depth)),
        format!(r#"{{"opt":1,"args_bunch":{}}}"#, "[".repeat(depth)),
        format!(
            r#"{{"opt":1,"args_bunch":[{}]}}"#,
            r#"{"path":"#.repeat(depth / 4)
        ),
        // The whole 2 MiB of '['.
        "[".repeat(2 * 1024 * 1024),
    ];
    for body in &refused {
        let started = Instant::now();
        let (status, reply) = ctl_post(&server, body.as_bytes());
        assert_eq!(
            (status, reply["res"].as_u64()),
            (400, Some(2)),
            "{}",
            lossy(body.as_bytes())
        );
        assert!(started.elapsed() < PROMPT);
    }
    // Deep nesting inside an unknown field: valid JSON, skipped (or refused), never a crash.
    let ignored = format!(
        r#"{{"opt":1,"args_bunch":[{{"path":"/deep","dst":"h:1","x":{}1{}}}]}}"#,
        r#"{"a":"#.repeat(depth / 4),
        "}".repeat(depth / 4)
    );
    let (status, reply) = ctl_post(&server, ignored.as_bytes());
    match status {
        200 => assert_eq!((reply["res"].as_u64(), users(&server)), (Some(1), 1)),
        400 => assert_eq!((reply["res"].as_u64(), users(&server)), (Some(2), 0)),
        other => panic!("{other}: {reply}"),
    }
    finish(&server, base);
}

#[test]
fn controller_duplicate_keys_get_400() {
    let bodies: Vec<Vec<u8>> = [
        r#"{"opt":9,"opt":9}"#,
        r#"{"opt":3,"opt":1,"args_bunch":[{"path":"/a","dst":"h:1"}]}"#,
        r#"{"opt":1,"args_bunch":[],"args_bunch":[{"path":"/a","dst":"h:1"}]}"#,
        r#"{"opt":1,"args_bunch":[{"path":"/a","path":"/b","dst":"h:1"}]}"#,
        r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"h:1","dst":"h:2"}]}"#,
    ]
    .iter()
    .map(|b| b.as_bytes().to_vec())
    .collect();
    assert_bodies_refused(&bodies, 400);
}

#[test]
fn controller_missing_fields_are_command_errors() {
    let bodies: Vec<Vec<u8>> = [
        r#"{}"#,
        r#"{"args_bunch":[{"path":"/a","dst":"h:1"}]}"#,
        r#"{"opt":null}"#,
        r#"{"opt":1}"#,
        r#"{"opt":1,"args_bunch":null}"#,
        r#"{"opt":1,"args_bunch":[]}"#,
        r#"{"opt":2}"#,
        r#"{"opt":1,"args_bunch":[{"path":"/a"}]}"#,
        r#"{"opt":1,"args_bunch":[{"dst":"h:1"}]}"#,
        r#"{"opt":1,"args_bunch":[{}]}"#,
        r#"{"opt":1,"args_bunch":[{"path":"/ok","dst":"h:1"},{"path":"/b"}]}"#,
        r#"{"opt":2,"args_bunch":[{"dst":"h:1"}]}"#,
        r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"h:99999"}]}"#,
        r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"[::1"}]}"#,
        r#"{"opt":1,"args_bunch":[{"path":"a","dst":"h:1"}]}"#,
    ]
    .iter()
    .map(|b| b.as_bytes().to_vec())
    .collect();
    assert_bodies_refused(&bodies, 200);
}

#[test]
fn controller_body_of_2_mib_plus_1_gets_413() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let announce = b"POST / HTTP/1.1\r\nHost: c\r\nContent-Length: 2097153\r\n\r\n";
    // Refused from the head alone...
    let (status, reply, _) = ctl_raw(&server, announce);
    assert_eq!((status, reply["res"].as_u64()), (413, Some(2)));
    // ...and with the body on its way.
    let mut request = announce.to_vec();
    request.extend(std::iter::repeat_n(b' ', 64 * 1024));
    let (status, reply, _) = ctl_raw(&server, &request);
    assert_eq!((status, reply["res"].as_u64()), (413, Some(2)));
    // All of it, sent while the reply comes.
    let mut s = raw(server.controller);
    let mut writer = s.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let _ = writer.write_all(announce);
        let _ = writer.write_all(&vec![b' '; 2 * 1024 * 1024 + 1]);
    });
    let (status, head, body) = read_response(&mut s);
    assert_eq!(status, 413);
    assert_eq!(json_reply(&head, &body)["res"], 2);
    sender.join().unwrap();
    assert_eq!(users(&server), 0);
    finish(&server, base);
}

#[test]
fn controller_body_shorter_than_its_length_then_eof_gets_no_reply() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let mut s = raw(server.controller);
    let body = br#"{"opt":1,"args_bunch":[{"path":"/half","dst":"h:1"}]}"#;
    s.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\n\r\n",
            body.len() + 100
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(body).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = expect_closed(&mut s, PROMPT);
    assert!(got.is_empty(), "replied to half a body: {:?}", lossy(&got));
    assert_eq!(users(&server), 0, "half a body was applied");
    finish(&server, base);
}

#[test]
fn controller_bad_content_lengths_get_400_and_chunked_411() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    for length in [
        "Content-Length: abc\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 1, 2\r\n",
        "Content-Length: 9\r\nContent-Length: 10\r\n",
        "Content-Length: 18446744073709551616\r\n",
        "Content-Length: 0x10\r\n",
    ] {
        let request = format!("POST / HTTP/1.1\r\nHost: c\r\n{length}\r\n{{\"opt\":9}}");
        let (status, reply, _) = ctl_raw(&server, request.as_bytes());
        assert_eq!((status, reply["res"].as_u64()), (400, Some(2)), "{length}");
    }
    let (status, reply, _) = ctl_raw(
        &server,
        b"POST / HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"opt\":9}\r\n0\r\n\r\n",
    );
    assert_eq!((status, reply["res"].as_u64()), (411, Some(2)));
    finish(&server, base);
}

#[test]
fn controller_other_methods_get_405() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    for method in ["GET", "post", "OPTIONS", "CONNECT", "PATCH"] {
        let request = format!("{method} / HTTP/1.1\r\nHost: c\r\nContent-Length: 0\r\n\r\n");
        let (status, reply, _) = ctl_raw(&server, request.as_bytes());
        assert_eq!((status, reply["res"].as_u64()), (405, Some(2)), "{method}");
    }
    finish(&server, base);
}

#[test]
fn controller_head_request_gets_405_without_a_body() {
    with_server(false, |server| {
        let mut s = raw(server.controller);
        s.write_all(b"HEAD / HTTP/1.1\r\nHost: c\r\n\r\n").unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 405"), "{:?}", lossy(&head));
        // RFC 9110 9.3.2: the response to HEAD has no content.
        let rest = expect_closed(&mut s, PROMPT);
        assert!(
            rest.is_empty(),
            "a body after a HEAD response: {:?}",
            lossy(&rest)
        );
    });
}

#[test]
fn controller_huge_heads_get_431_and_garbage_400() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let huge = format!(
        "POST / HTTP/1.1\r\nHost: c\r\nX-Pad: {}\r\nContent-Length: 9\r\n\r\n{{\"opt\":9}}",
        "z".repeat(64 * 1024)
    );
    let (status, reply, mut s) = ctl_raw(&server, huge.as_bytes());
    assert_eq!((status, reply["res"].as_u64()), (431, Some(2)));
    expect_closed(&mut s, PROMPT);
    let mut many = "POST / HTTP/1.1\r\nHost: c\r\n".to_string();
    for i in 0..200 {
        many.push_str(&format!("X-{i}: y\r\n"));
    }
    many.push_str("Content-Length: 9\r\n\r\n{\"opt\":9}");
    assert_eq!(ctl_raw(&server, many.as_bytes()).0, 431);
    for garbage in [
        &b"\x16\x03\x01\x00\x05hello\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost c\r\n\r\n",
        b"POST\r\n\r\n",
    ] {
        let (status, reply, mut s) = ctl_raw(&server, garbage);
        assert_eq!((status, reply["res"].as_u64()), (400, Some(2)));
        expect_closed(&mut s, PROMPT);
    }
    finish(&server, base);
}

#[test]
fn controller_pipelined_garbage_after_a_good_request() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let mut s = raw(server.controller);
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: c\r\nContent-Length: 9\r\n\r\n{\"opt\":9}\x00\x01\x02 garbage\r\n\r\n",
    )
    .unwrap();
    let (status, head, body) = read_response(&mut s);
    assert_eq!(
        (status, json_reply(&head, &body)["res"].as_u64()),
        (200, Some(1))
    );
    let (status, head, body) = read_response(&mut s);
    assert_eq!(
        (status, json_reply(&head, &body)["res"].as_u64()),
        (400, Some(2))
    );
    expect_closed(&mut s, PROMPT);
    finish(&server, base);
}

#[test]
fn controller_many_concurrent_posts_good_and_bad() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    thread::scope(|scope| {
        for t in 0..16 {
            let server = &server;
            scope.spawn(move || {
                for i in 0..20 {
                    let path = format!("/cc{t}-{i}");
                    let add = json!({"opt":1,"args_bunch":[{"path":path,"dst":"127.0.0.1:1"}]});
                    let (status, reply) = ctl_post(server, add.to_string().as_bytes());
                    assert_eq!((status, reply["res"].as_u64()), (200, Some(1)), "{reply}");
                    // Every other user is deleted again; a bad request in between changes
                    // nothing.
                    if i % 2 == 1 {
                        let del = json!({"opt":2,"args_bunch":[{"path":path}]});
                        let (status, reply) = ctl_post(server, del.to_string().as_bytes());
                        assert_eq!((status, reply["res"].as_u64()), (200, Some(1)));
                    }
                    let (status, reply) =
                        ctl_post(server, b"{\"opt\":1,\"args_bunch\":[{\"path\":");
                    assert_eq!((status, reply["res"].as_u64()), (400, Some(2)));
                }
            });
        }
    });
    assert_eq!(users(&server), 16 * 10);
    finish(&server, base);
}

#[test]
fn controller_stalled_and_flooding_clients_do_not_block_others() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    // 64 clients that sent a head and part of the body, then went quiet.
    let stalled: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = raw(server.controller);
            s.write_all(b"POST / HTTP/1.1\r\nHost: c\r\nContent-Length: 100\r\n\r\n{\"opt\":")
                .unwrap();
            s
        })
        .collect();
    // 300 that connect and go at once, half of them with a reset.
    for i in 0..300 {
        let s = raw(server.controller);
        if i % 2 == 0 {
            reset(s);
        }
    }
    let started = Instant::now();
    assert_eq!(users(&server), 0);
    assert!(
        started.elapsed() < PROMPT,
        "controller blocked by stalled clients"
    );
    assert_still_serves(&server);
    for s in stalled {
        reset(s);
    }
    finish(&server, base);
}

// =============================================================================================
// Deadlines: every head and body deadline and the dial bound, side by side (about 30 s in
// all, the controller's body deadline being the longest).

#[test]
fn all_deadlines_cut_off_slow_clients_and_black_holed_dials() {
    let plain = Server::plain();
    let tls = Server::tls();
    let plain_base = fd_baseline(&plain);
    let tls_base = fd_baseline(&tls);
    let hole = black_hole();
    let every = Duration::from_millis(250);
    let head = b"GET /slow HTTP/1.1\r\nHost: example.com\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    thread::scope(|scope| {
        // A head trickled to the data port, plain.
        let data_plain = scope.spawn(|| {
            let start = Instant::now();
            let mut s = raw(plain.data);
            s.set_read_timeout(Some(every)).unwrap();
            trickle_until_closed(&mut s, head, start)
        });
        // A ClientHello trickled to the TLS port: the 10 s include the handshake.
        let hello_tls = scope.spawn(|| {
            let start = Instant::now();
            let mut s = raw(tls.data);
            s.set_read_timeout(Some(every)).unwrap();
            trickle_until_closed(&mut s, &client_hello(), start)
        });
        // A quick handshake, then a head trickled inside TLS.
        let head_tls = scope.spawn(|| {
            let start = Instant::now();
            let mut conn = tls.connect();
            conn.handshake().expect("TLS handshake");
            conn.tcp().set_read_timeout(Some(every)).unwrap();
            trickle_until_closed(&mut conn, head, start)
        });
        // A head trickled to the controller.
        let controller_head = scope.spawn(|| {
            let start = Instant::now();
            let mut s = raw(plain.controller);
            s.set_read_timeout(Some(every)).unwrap();
            let head =
                b"POST / HTTP/1.1\r\nHost: c\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            trickle_until_closed(&mut s, head, start)
        });
        // A complete controller head, then a body trickled at 2 bytes a second.
        let controller_body = scope.spawn(|| {
            let mut s = raw(plain.controller);
            s.write_all(b"POST / HTTP/1.1\r\nHost: c\r\nContent-Length: 1000\r\n\r\n")
                .unwrap();
            let start = Instant::now();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            trickle_until_closed(&mut s, b"{\"opt\":9,\"x\":\"", start)
        });
        // A user whose dst black-holes its SYNs, in plain mode: the contract allows a 502 before
        // the 101, or a 101 and then close 1011.
        let dial_plain = scope.spawn(|| {
            let path = unique_path("hole");
            tls.add(&[(&path, hole.addr)]);
            let mut conn = tls.connect();
            let started = Instant::now();
            let (status, head) = raw_upgrade(&mut conn, &path, "");
            if status == 101 {
                assert_eq!(read_until_close(&mut conn).1, Some(1011));
            } else {
                assert_eq!(status, 502, "{head}");
            }
            let took = started.elapsed();
            expect_closed(&mut conn, PROMPT);
            took
        });
        // The same in a mux stream: a FIN for it, while the session goes on answering.
        let dial_mux = scope.spawn(|| {
            let mut conn = mux_session(&plain, hole.addr);
            let mut rx = MuxReader::default();
            let started = Instant::now();
            send_mux(
                &mut conn,
                &[smux(SYN, 1, b""), smux(PSH, 1, b"lost")].concat(),
            );
            assert!(rx.ping(&mut conn).is_empty());
            assert!(
                started.elapsed() < PROMPT,
                "a hanging dial stalled the session"
            );
            assert_eq!(rx.next(&mut conn), fin(1));
            let took = started.elapsed();
            assert!(rx.ping(&mut conn).is_empty());
            took
        });
        // Meanwhile everybody else is served as usual.
        thread::sleep(Duration::from_secs(2));
        assert_still_serves(&plain);
        assert_still_serves(&tls);
        within(dial_plain.join().unwrap(), DIAL_CUTOFF, "plain mode dial");
        within(dial_mux.join().unwrap(), DIAL_CUTOFF, "mux stream dial");

        for (name, case, bound) in [
            ("data port head, plain", data_plain, HEAD_CUTOFF),
            ("ClientHello, TLS", hello_tls, HEAD_CUTOFF),
            ("data port head inside TLS", head_tls, HEAD_CUTOFF),
            ("controller head", controller_head, HEAD_CUTOFF),
            ("controller body", controller_body, BODY_CUTOFF),
        ] {
            let (took, got) = case.join().unwrap();
            within(took, bound, name);
            // Cut off without a word: no response to an incomplete request.
            assert!(got.is_empty(), "{name}: answered {:?}", lossy(&got));
        }
    });
    finish(&plain, plain_base);
    finish(&tls, tls_base);
}

// =============================================================================================
// Failing destinations.

#[test]
fn refused_dst_gets_502_in_plain_mode() {
    let server = Server::tls();
    let base = fd_baseline(&server);
    let path = unique_path("refused-dst");
    server.add(&[(&path, dead_addr())]);
    let started = Instant::now();
    let mut conn = server.connect();
    let (status, head) = raw_upgrade(&mut conn, &path, "");
    assert_eq!(status, 502, "{head}");
    assert!(started.elapsed() < PROMPT);
    assert!(header(&head, "sec-websocket-accept").is_none());
    expect_closed(&mut conn, PROMPT);
    finish(&server, base);
}

#[test]
fn refused_dst_gets_a_fin_in_mux_mode_and_the_session_lives() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let mut conn = mux_session(&server, dead_addr());
    let mut rx = MuxReader::default();
    for sid in [1, 3, 5] {
        let started = Instant::now();
        send_mux(
            &mut conn,
            &[smux(SYN, sid, b""), smux(PSH, sid, b"nobody")].concat(),
        );
        assert_eq!(rx.next(&mut conn), fin(sid));
        assert!(started.elapsed() < PROMPT);
    }
    assert!(rx.ping(&mut conn).is_empty());
    finish(&server, base);
}

#[test]
fn dst_reset_mid_stream_closes_the_plain_tunnel_with_1011() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let dst = backend(|mut stream| {
        let mut hello = [0u8; 5];
        stream.read_exact(&mut hello).unwrap();
        stream.write_all(b"world").unwrap();
        thread::sleep(Duration::from_millis(100));
        reset(stream);
    });
    let path = unique_path("reset");
    server.add(&[(&path, dst)]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    conn.write_all(&masked_frame(true, 0x2, b"hello")).unwrap();
    let (data, code) = read_until_close(&mut conn);
    assert_eq!(data, b"world");
    assert_eq!(code, Some(1011));
    expect_closed(&mut conn, PROMPT);
    finish(&server, base);
}

#[test]
fn dst_reset_mid_stream_gets_the_mux_stream_a_fin() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let dst = backend(|mut stream| {
        let mut hello = [0u8; 5];
        stream.read_exact(&mut hello).unwrap();
        stream.write_all(&hello).unwrap();
        thread::sleep(Duration::from_millis(100));
        reset(stream);
    });
    let mut conn = mux_session(&server, dst);
    let mut rx = MuxReader::default();
    for sid in [1, 3] {
        send_mux(
            &mut conn,
            &[smux(SYN, sid, b""), smux(PSH, sid, b"hello")].concat(),
        );
        assert_eq!(rx.read_stream(&mut conn, sid, 5), b"hello");
        assert_eq!(rx.next(&mut conn), fin(sid));
    }
    assert!(rx.ping(&mut conn).is_empty());
    finish(&server, base);
}

#[test]
fn dst_closing_at_once_gets_close_1000_or_a_fin() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let dst = backend(drop::<TcpStream>);
    let path = unique_path("closing");
    server.add(&[(&path, dst)]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    assert_eq!(read_until_close(&mut conn), (Vec::new(), Some(1000)));
    conn.write_all(&masked_frame(true, 0x8, &close_payload(1000, b"")))
        .unwrap();
    expect_closed(&mut conn, PROMPT);
    let mut conn = mux_session(&server, dst);
    let mut rx = MuxReader::default();
    send_mux(&mut conn, &smux(SYN, 1, b""));
    assert_eq!(rx.next(&mut conn), fin(1));
    assert!(rx.ping(&mut conn).is_empty());
    finish(&server, base);
}

#[test]
fn dst_that_never_reads_pushes_back_on_a_plain_client() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (conn, mut backend) = tunnel(&server);
    let Transport::Tcp(mut conn) = conn else {
        unreachable!("plain server")
    };
    let payload = pattern(1 << 20, 7);
    let chunk = masked_frame(true, 0x2, &payload);
    let rss_before = server.rss_kib();
    let sent = push_until_blocked(&mut conn, &chunk, PUSH);
    let rss_after = server.rss_kib();
    assert!(
        sent < PUSH,
        "the client pushed all {PUSH} bytes at a dst that reads nothing"
    );
    assert!(
        rss_after < rss_before + RSS_SLACK_KIB,
        "RSS grew from {rss_before} KiB to {rss_after} KiB holding {sent} undeliverable bytes"
    );
    // Once dst reads, every byte sent arrives (none lost), then the client's EOF closes it.
    conn.shutdown(Shutdown::Write).unwrap();
    let header = chunk.len() - payload.len();
    let whole = sent / chunk.len();
    let expected = whole * payload.len() + (sent % chunk.len()).saturating_sub(header);
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match backend.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut off = 0;
                while off < n {
                    let at = (got + off) % payload.len();
                    let k = (n - off).min(payload.len() - at);
                    assert!(
                        buf[off..off + k] == payload[at..at + k],
                        "dst got corrupted bytes at {}",
                        got + off
                    );
                    off += k;
                }
                got += n;
            }
            Err(e) => panic!("dst read failed after {got} of {expected} bytes: {e}"),
        }
    }
    assert_eq!(got, expected, "bytes delivered once dst read");
    expect_closed(&mut conn, PROMPT);
    finish(&server, base);
}

#[test]
fn dst_that_never_reads_pushes_back_on_a_mux_client() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (dst, accepted) = capture_backend();
    let conn = mux_session(&server, dst);
    let Transport::Tcp(mut conn) = conn else {
        unreachable!("plain server")
    };
    conn.write_all(&masked_frame(true, 0x2, &smux(SYN, 1, b"")))
        .unwrap();
    let mut backend = accepted.recv_timeout(WAIT).expect("stream dialed");
    backend.set_read_timeout(Some(WAIT)).unwrap();
    let psh: Vec<u8> = (0..16)
        .flat_map(|i| smux(PSH, 1, &pattern(65535, i)))
        .collect();
    let chunk = masked_frame(true, 0x2, &psh);
    let rss_before = server.rss_kib();
    let sent = push_until_blocked(&mut conn, &chunk, PUSH);
    let rss_after = server.rss_kib();
    assert!(
        sent < PUSH,
        "the client pushed all {PUSH} bytes at a dst that reads nothing"
    );
    assert!(
        rss_after < rss_before + RSS_SLACK_KIB,
        "RSS grew from {rss_before} KiB to {rss_after} KiB holding {sent} undeliverable bytes"
    );
    // When the client goes, dst is closed (after what the server had for it).
    drop(conn);
    let drained = thread::spawn(move || read_to_close(&mut backend).len());
    let got = drained.join().unwrap();
    assert!(got > 0 && got < sent, "dst got {got} of {sent}");
    finish(&server, base);
}

#[test]
fn client_that_never_reads_pushes_back_on_a_flooding_dst() {
    let server = Server::plain();
    let base = fd_baseline(&server);
    let (dst, flooded) = flooding_backend(PUSH);
    let path = unique_path("flood");
    server.add(&[(&path, dst)]);
    let rss_before = server.rss_kib();
    // Plain mode.
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    let (written, plain_dst) = flooded.recv_timeout(WAIT * 3).expect("the flood blocked");
    let rss_after = server.rss_kib();
    assert!(
        written < PUSH,
        "dst wrote all {PUSH} bytes to a client that reads nothing"
    );
    assert!(
        rss_after < rss_before + RSS_SLACK_KIB,
        "plain: RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Mux mode.
    let mut mux = mux_session(&server, dst);
    send_mux(&mut mux, &smux(SYN, 1, b""));
    let (written, mux_dst) = flooded.recv_timeout(WAIT * 3).expect("the flood blocked");
    let rss_after = server.rss_kib();
    assert!(
        written < PUSH,
        "dst wrote all {PUSH} bytes to a mux client that reads nothing"
    );
    assert!(
        rss_after < rss_before + RSS_SLACK_KIB,
        "mux: RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The clients vanish: both destinations are closed.
    reset(match conn {
        Transport::Tcp(s) => s,
        Transport::Tls(_) => unreachable!("plain server"),
    });
    reset(match mux {
        Transport::Tcp(s) => s,
        Transport::Tls(_) => unreachable!("plain server"),
    });
    for mut dst in [plain_dst, mux_dst] {
        dst.set_read_timeout(Some(WAIT)).unwrap();
        expect_closed(&mut dst, PROMPT);
    }
    finish(&server, base);
}

#[test]
fn stuck_tunnels_to_a_dst_that_never_reads_are_freed_by_the_idle_timeout() {
    let server = Server::start(&["-timeout", "2s"]);
    let base = fd_baseline(&server);
    // A plain tunnel stuck writing to dst, then its client vanishes: only -timeout can
    // notice, since no byte moves either way.
    let (conn, _held) = tunnel(&server);
    let Transport::Tcp(mut conn) = conn else {
        unreachable!("plain server")
    };
    // The idle timeout may end it while the push still waits to see it stall.
    let (pushed, _) = push(&mut conn, &masked_frame(true, 0x2, &[1; 65536]), PUSH);
    assert!(pushed < PUSH);
    reset(conn);
    // A mux stream stuck the same way: -timeout ends the stream (a FIN; its dst closed), and
    // the session then drops the rest of its data as data for an unknown stream.
    let (dst, accepted) = capture_backend();
    let mut mux = mux_session(&server, dst);
    send_mux(&mut mux, &smux(SYN, 1, b""));
    let mut stream_dst = accepted.recv_timeout(WAIT).expect("stream dialed");
    stream_dst.set_read_timeout(Some(WAIT)).unwrap();
    let psh = masked_frame(true, 0x2, &smux(PSH, 1, &[2; 65535]));
    let Transport::Tcp(tcp) = &mut mux else {
        unreachable!("plain server")
    };
    push(tcp, &psh, 64 << 20);
    let mut rx = MuxReader::default();
    assert_eq!(rx.next(&mut mux), fin(1));
    read_to_close(&mut stream_dst);
    let Transport::Tcp(tcp) = mux else {
        unreachable!("plain server")
    };
    reset(tcp);
    finish(&server, base);
}

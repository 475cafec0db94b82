//! The TLS 1.3 record layer tried as a TLS test suite would try it: the kit's
//! [`RecordClient`] does a real handshake with rustls, then takes the traffic keys (rustls'
//! kernel-handoff API, which also derives every key update for it) and writes the records
//! the test chooses: a bad
//! tag, an oversized record or inner plaintext, a zero or unknown content type, a
//! change_cipher_spec after Finished, KeyUpdates, alerts, a FIN without close_notify.
//! Each test asserts the alert the server sends back and what `dst` sees: a FIN only after
//! a real close (the WebSocket close or close_notify), an RST otherwise. A second kind of
//! client is rustls' own stream, refreshing its keys, which checks our key-update
//! derivation against another implementation; and a tunnel is pushed past the sending
//! key's record limit (small in debug builds, see `KEY_UPDATE_AFTER`). OpenSSL (Python's
//! `ssl`) is the third peer.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::sync::mpsc::Receiver;

use mtt_mu_server::tls_record::{alert, KEY_UPDATE_AFTER, MAX_RECORDS_WITHOUT_DATA};
use rustls::{StreamOwned, SupportedCipherSuite};
use testkit::backend::{capture_backend, echo_backend, next_captured};
use testkit::http::read_response;
use testkit::records::{
    tls13_config, Received, RecordClient, AES_128, ALERT, APPLICATION_DATA, CHANGE_CIPHER_SPEC,
    FATAL, HANDSHAKE, KEY_UPDATE, MAX_PLAINTEXT, SUITES, WARNING,
};
use testkit::server::{unique_path, Server};
use testkit::smux::{smux, PSH, SYN};
use testkit::sock::{raw, read_to_ending, Ending};
use testkit::tls::{client, tls_config_versions, TEST_SERVER_NAME};
use testkit::ws::{masked_frame, raw_upgrade, Event, WsReader, OP_BINARY, OP_CLOSE};

/// The server these tests try: TLS, one worker.
fn server() -> Server {
    Server::start(&["-force-tls", "-workers", "1"])
}

/// Upgrades `conn` to a WebSocket at `path` asking for `protocol` (`smux_on`, `smux_off`).
fn upgrade(conn: &mut (impl Read + Write), path: &str, protocol: &str) {
    let extra = format!("Sec-WebSocket-Protocol: {protocol}\r\n");
    let (status, head) = raw_upgrade(conn, path, &extra);
    assert_eq!(status, 101, "{head}");
}

/// A binary frame as a client sends it.
fn binary(payload: &[u8]) -> Vec<u8> {
    masked_frame(true, OP_BINARY, payload)
}

// ---------------------------------------------------------------------------------------
// Helpers for the tests: a plain tunnel with some data through it.

/// A server, a record client with a plain tunnel open, and the tunnel's `dst`, which has
/// already received `hello`.
fn tunnel(suite: SupportedCipherSuite) -> (Server, RecordClient, TcpStream) {
    let server = server();
    let (dst, accepted) = capture_backend();
    let path = unique_path("records");
    server.add(&[(&path, dst)]);
    let mut client = RecordClient::connect(server.data, suite);
    upgrade(&mut client, &path, "smux_off");
    let mut backend = next_captured(&accepted);
    client.send_data(&binary(b"hello"));
    let mut got = [0u8; 5];
    backend.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    (server, client, backend)
}

/// Sends the records `make` crafts into an open tunnel; the server must answer with this
/// fatal alert, end the connection, and reset `dst`, which got nothing more.
fn assert_refused(description: u8, make: impl FnOnce(&mut RecordClient) -> Vec<u8>) {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let records = make(&mut client);
    client.send(&records);
    client.expect_alert_then_end(description);
    assert_eq!(read_to_ending(&mut backend), (Vec::new(), Ending::Reset));
}

// ---------------------------------------------------------------------------------------
// Faulty records: the alert, then an aborted dst.

#[test]
fn a_bad_tag_gets_bad_record_mac_and_dst_is_reset() {
    assert_refused(alert::BAD_RECORD_MAC, |client| {
        let mut record = client.record(APPLICATION_DATA, &binary(b"forged"));
        let last = record.len() - 1;
        record[last] ^= 1;
        record
    });
}

#[test]
fn a_record_longer_than_the_ciphertext_limit_gets_record_overflow() {
    // The header alone says it: 2^14 + 257 bytes of ciphertext.
    let len = (MAX_PLAINTEXT + 257) as u16;
    let mut records = vec![APPLICATION_DATA, 3, 3];
    records.extend_from_slice(&len.to_be_bytes());
    records.extend_from_slice(&[0u8; 100]);
    assert_refused(alert::RECORD_OVERFLOW, |_| records);
}

#[test]
fn content_of_two_to_the_14_plus_1_bytes_gets_record_overflow() {
    assert_refused(alert::RECORD_OVERFLOW, |client| {
        client.record(APPLICATION_DATA, &vec![0x55; MAX_PLAINTEXT + 1])
    });
}

#[test]
fn padding_past_the_inner_plaintext_limit_gets_record_overflow() {
    // Ten bytes of content, then padding: 2^14 + 2 bytes of TLSInnerPlaintext in all.
    let mut inner = binary(b"tiny");
    inner.push(APPLICATION_DATA);
    inner.resize(MAX_PLAINTEXT + 2, 0);
    assert_refused(alert::RECORD_OVERFLOW, |client| client.seal_inner(&inner));
}

#[test]
fn padding_up_to_the_limit_is_accepted() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let frame = binary(b"padded");
    let mut inner = frame.clone();
    inner.push(APPLICATION_DATA);
    inner.resize(MAX_PLAINTEXT + 1, 0);
    let record = client.seal_inner(&inner);
    client.send(&record);
    let mut got = [0u8; 6];
    backend.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"padded");
}

#[test]
fn all_zero_and_unknown_content_types_get_unexpected_message() {
    assert_refused(alert::UNEXPECTED_MESSAGE, |client| {
        client.seal_inner(&[0, 0, 0, 0])
    });
    assert_refused(alert::UNEXPECTED_MESSAGE, |client| {
        client.record(99, b"what is this")
    });
}

#[test]
fn change_cipher_spec_after_finished_gets_unexpected_message() {
    assert_refused(alert::UNEXPECTED_MESSAGE, |_| {
        vec![CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1]
    });
    // And inside a protected record too.
    assert_refused(alert::UNEXPECTED_MESSAGE, |client| {
        client.record(CHANGE_CIPHER_SPEC, &[1])
    });
}

#[test]
fn a_handshake_message_other_than_key_update_gets_unexpected_message() {
    // A ClientHello-typed message after the handshake.
    assert_refused(alert::UNEXPECTED_MESSAGE, |client| {
        client.record(HANDSHAKE, &[1, 0, 0, 2, 3, 3])
    });
}

#[test]
fn a_key_update_of_the_wrong_length_gets_decode_error() {
    assert_refused(alert::DECODE_ERROR, |client| {
        client.record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 2, 0, 0])
    });
}

#[test]
fn endless_empty_records_are_cut_off() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let mut records = Vec::new();
    for _ in 0..MAX_RECORDS_WITHOUT_DATA {
        records.extend(client.record(APPLICATION_DATA, b""));
    }
    // Data resets the count; then padding-only records, one too many.
    records.extend(client.data_records(&binary(b"still here")));
    for _ in 0..=MAX_RECORDS_WITHOUT_DATA {
        records.extend(client.seal_inner(&[APPLICATION_DATA, 0, 0, 0]));
    }
    client.send(&records);
    client.expect_alert_then_end(alert::UNEXPECTED_MESSAGE);
    // What came before the flood was delivered, then dst was reset.
    assert_eq!(
        read_to_ending(&mut backend),
        (b"still here".to_vec(), Ending::Reset)
    );
}

// ---------------------------------------------------------------------------------------
// Alerts and ends from the client.

#[test]
fn a_fatal_alert_from_the_client_closes_at_once_without_close_notify() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let record = client.record(ALERT, &[FATAL, 40]);
    client.send(&record);
    assert_eq!(client.receive(), Received::End);
    assert_eq!(read_to_ending(&mut backend), (Vec::new(), Ending::Reset));
}

#[test]
fn a_fin_without_close_notify_resets_dst() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    client.send_data(&binary(b" world"));
    client.tcp().shutdown(Shutdown::Write).unwrap();
    // No close_notify from us either: it was not an orderly close.
    assert_eq!(client.receive(), Received::End);
    assert_eq!(
        read_to_ending(&mut backend),
        (b" world".to_vec(), Ending::Reset)
    );
}

#[test]
fn close_notify_ends_dst_cleanly_and_is_answered() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let mut records = client.data_records(&binary(b" world"));
    records.extend(client.record(ALERT, &[WARNING, alert::CLOSE_NOTIFY]));
    client.send(&records);
    assert_eq!(
        read_to_ending(&mut backend),
        (b" world".to_vec(), Ending::Fin)
    );
    assert_eq!(
        client.receive(),
        Received::Alert(WARNING, alert::CLOSE_NOTIFY)
    );
    assert_eq!(client.receive(), Received::End);
}

#[test]
fn a_websocket_close_then_a_fin_ends_dst_cleanly() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    client.send_data(&masked_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
    let (opcode, _) = client.frame();
    assert_eq!(opcode, 0x8);
    client.tcp().shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_ending(&mut backend), (Vec::new(), Ending::Fin));
}

/// A record client with a mux session open at a fresh path of `server`; each stream's
/// `dst` (a capture backend) comes out of the receiver as it is dialed.
fn mux_session(server: &Server) -> (RecordClient, Receiver<TcpStream>) {
    let (dst, accepted) = capture_backend();
    let path = unique_path("mux");
    server.add(&[(&path, dst)]);
    let mut client = RecordClient::connect(server.data, AES_128);
    upgrade(&mut client, &path, "smux_on");
    (client, accepted)
}

/// Opens stream `sid` with `data` on it; returns its `dst` once `data` arrived there.
fn open_stream(
    client: &mut RecordClient,
    accepted: &Receiver<TcpStream>,
    sid: u32,
    data: &[u8],
) -> TcpStream {
    let mut frames = smux(SYN, sid, b"");
    frames.extend(smux(PSH, sid, data));
    client.send_data(&binary(&frames));
    let mut backend = next_captured(accepted);
    let mut got = vec![0u8; data.len()];
    backend.read_exact(&mut got).unwrap();
    assert_eq!(got, data);
    backend
}

#[test]
fn a_broken_mux_session_resets_every_stream() {
    let server = server();
    let (mut client, accepted) = mux_session(&server);
    let mut backends: Vec<_> = [1u32, 3]
        .into_iter()
        .map(|sid| open_stream(&mut client, &accepted, sid, b"data"))
        .collect();
    let mut record = client.record(APPLICATION_DATA, &binary(b"x"));
    record[7] ^= 0x80;
    client.send(&record);
    client.expect_alert_then_end(alert::BAD_RECORD_MAC);
    for backend in &mut backends {
        assert_eq!(read_to_ending(backend), (Vec::new(), Ending::Reset));
    }
}

#[test]
fn data_after_close_notify_in_the_finished_segment_is_ignored() {
    let server = server();
    let mut client = RecordClient::handshake(server.data, AES_128, true);
    let mut segment = client.take_held();
    assert!(!segment.is_empty(), "the Finished flight was held");
    segment.extend(client.data_records(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"));
    segment.extend(client.record(ALERT, &[WARNING, alert::CLOSE_NOTIFY]));
    segment.extend(client.data_records(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"));
    client.send(&segment);
    // The answer to the first request, its body read to its Content-Length.
    let (status, head, _) = read_response(&mut client);
    assert_eq!(status, 404, "{head}");
    // No answer to the second request: close_notify, then the end.
    assert_eq!(
        client.receive(),
        Received::Alert(WARNING, alert::CLOSE_NOTIFY)
    );
    assert_eq!(client.receive(), Received::End);
    assert!(client.unread().is_empty());
}

#[test]
fn answers_in_the_http_phase_end_with_close_notify() {
    let server = server();
    let requests = [
        (
            "GET /nobody HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_string(),
            404,
        ),
        ("GET / HTTP/1.1\r\nHost a\r\n\r\n".to_string(), 400),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
                "x".repeat(17000)
            ),
            431,
        ),
    ];
    for (request, status) in requests {
        let mut client = RecordClient::connect(server.data, AES_128);
        client.send_data(request.as_bytes());
        let (got, head, _) = read_response(&mut client);
        assert_eq!(got, status, "{head}");
        loop {
            match client.receive_skipping_updates() {
                Received::Data(_) => {}
                Received::Alert(WARNING, alert::CLOSE_NOTIFY) => break,
                other => panic!("{status}: expected close_notify, got {other:?}"),
            }
        }
        assert_eq!(client.receive(), Received::End);
    }
}

// ---------------------------------------------------------------------------------------
// KeyUpdate.

/// Sends `message` through the tunnel, in its own frame, and reads its echo.
fn echo_round(client: &mut RecordClient, message: &[u8]) {
    client.send_data(&binary(message));
    let mut got = Vec::new();
    while got.len() < message.len() {
        let (opcode, payload) = client.frame();
        assert_eq!(opcode, 0x2);
        got.extend_from_slice(&payload);
    }
    assert_eq!(got, message);
}

fn echo_tunnel(suite: SupportedCipherSuite) -> (Server, RecordClient) {
    let server = server();
    let path = unique_path("echo");
    server.add(&[(&path, echo_backend())]);
    let mut client = RecordClient::connect(server.data, suite);
    upgrade(&mut client, &path, "smux_off");
    (server, client)
}

#[test]
fn key_updates_with_and_without_request_are_followed_in_every_suite() {
    for suite in SUITES {
        let (_server, mut client) = echo_tunnel(suite);
        echo_round(&mut client, b"before");
        // Not requested: the server follows ours, and does not answer.
        let update = client.key_update(false);
        client.send(&update);
        echo_round(&mut client, b"after an update");
        assert_eq!(client.key_updates_seen(), 0, "{suite:?}");
        // Requested: the server's own KeyUpdate comes before its next data.
        let update = client.key_update(true);
        client.send(&update);
        client.send_data(&binary(b"after a request"));
        assert_eq!(client.receive(), Received::KeyUpdate(false), "{suite:?}");
        let (_, payload) = client.frame();
        assert_eq!(payload, b"after a request");
        echo_round(&mut client, b"and on");
    }
}

#[test]
fn many_key_updates_in_a_row_are_followed_and_answered_once() {
    let (_server, mut client) = echo_tunnel(AES_128);
    let mut updates = Vec::new();
    for i in 0..MAX_RECORDS_WITHOUT_DATA {
        updates.extend(client.key_update(i % 2 == 0));
    }
    client.send(&updates);
    client.send_data(&binary(b"after many"));
    assert_eq!(client.receive(), Received::KeyUpdate(false));
    let (_, payload) = client.frame();
    assert_eq!(payload, b"after many");

    // One more than that without data between is a flood.
    assert_refused(alert::UNEXPECTED_MESSAGE, |client| {
        (0..=MAX_RECORDS_WITHOUT_DATA)
            .flat_map(|_| client.key_update(false))
            .collect()
    });
}

#[test]
fn a_tunnel_outlives_the_sending_keys_record_limit() {
    if !cfg!(debug_assertions) {
        // Release builds keep the real limit (2^23 records): too many for a test.
        return;
    }
    let (_server, mut client) = echo_tunnel(AES_128);
    // Each round is one record each way; the client updates its key now and then too.
    let rounds = 2 * KEY_UPDATE_AFTER as usize + 100;
    for i in 0..rounds {
        if i % 700 == 699 {
            let update = client.key_update(false);
            client.send(&update);
        }
        echo_round(&mut client, format!("round {i}").as_bytes());
    }
    assert!(
        client.key_updates_seen() >= 2,
        "{} key updates from the server in {rounds} records",
        client.key_updates_seen()
    );
}

/// rustls' own client, refreshing its keys every so often, through an echo tunnel: both
/// directions cross several key updates, ours derived by our code, its by rustls.
#[test]
fn rustls_as_the_peer_agrees_on_every_key_update() {
    for suite in SUITES {
        let server = server();
        let path = unique_path("rustls");
        server.add(&[(&path, echo_backend())]);
        let conn = client(tls13_config(suite), TEST_SERVER_NAME);
        let mut tls = StreamOwned::new(conn, raw(server.data));
        upgrade(&mut tls, &path, "smux_off");
        // 4 MiB each way in 1 KiB frames, so thousands of records either way. The echo
        // is checked byte by byte: frames come back joined or split as dst reads.
        let message: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        let mut frames = WsReader::new(&[]);
        let mut echoed = 0usize;
        // Reads echoed bytes until `echoed` reaches `until`.
        let mut take_echo = |tls: &mut StreamOwned<_, _>, echoed: &mut usize, until: usize| {
            while *echoed < until {
                match frames.next(tls).unwrap() {
                    Event::Data(range) => {
                        for &byte in &frames.buf[range] {
                            assert_eq!(byte, message[*echoed % 1024], "{suite:?} at {echoed}");
                            *echoed += 1;
                        }
                    }
                    other => panic!("{suite:?}: {other:?} at {echoed}"),
                }
            }
        };
        for i in 0..4096 {
            if i % 500 == 0 {
                tls.conn.refresh_traffic_keys().unwrap();
            }
            tls.write_all(&binary(&message)).unwrap();
            // Let the echo catch up now and then (the windows are finite).
            if echoed + 64 * 1024 < (i + 1) * 1024 {
                take_echo(&mut tls, &mut echoed, (i + 1) * 1024 - 64 * 1024);
            }
        }
        take_echo(&mut tls, &mut echoed, 4096 * 1024);
        assert_eq!(echoed, 4096 * 1024, "{suite:?}");
    }
}

/// OpenSSL (Python's `ssl`) as the peer: it must follow the KeyUpdates we send while
/// thousands of records go each way, and take our close_notify at its orderly shutdown.
#[test]
fn openssl_as_the_peer_follows_our_key_updates() {
    let server = server();
    let path = unique_path("openssl");
    server.add(&[(&path, echo_backend())]);
    let script = r#"
import socket, ssl, sys
port, path, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
s.settimeout(20)
s.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Protocol: smux_off\r\n\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(65536)
head, buf = buf.split(b"\r\n\r\n", 1)
assert head.startswith(b"HTTP/1.1 101"), head
def frames(buf):
    out = []
    while len(buf) >= 2:
        n, at = buf[1] & 0x7f, 2
        if n == 126:
            if len(buf) < 4: break
            n, at = int.from_bytes(buf[2:4], "big"), 4
        if len(buf) < at + n: break
        out.append(buf[at:at + n]); buf = buf[at + n:]
    return out, buf
for i in range(rounds):
    message = b"%08d" % i * 64
    # Masked with a zero key: the payload goes as it is.
    s.sendall(bytes([0x82, 0x80 | 126]) + len(message).to_bytes(2, "big") + b"\0\0\0\0" + message)
    got = b""
    while len(got) < len(message):
        payloads, buf = frames(buf)
        got += b"".join(payloads)
        if len(got) < len(message):
            chunk = s.recv(65536)
            assert chunk, "the tunnel ended"
            buf += chunk
    assert got == message, (i, got[:20])
s.unwrap()
print("ok")
"#;
    let rounds = 2 * KEY_UPDATE_AFTER.min(4096) + 100;
    let output = Command::new("python3")
        .args(["-c", script, &server.data.port().to_string(), &path])
        .arg(rounds.to_string())
        .output()
        .expect("python3");
    assert!(
        output.status.success() && output.stdout.starts_with(b"ok"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// TLS 1.2 goes through rustls' own stream, and keeps the same rule: a FIN without
/// close_notify resets `dst`, close_notify ends it cleanly.
#[test]
fn tls_12_truncation_resets_dst_and_close_notify_ends_it_cleanly() {
    let server = server();
    let (dst, accepted) = capture_backend();
    let path = unique_path("tls12");
    server.add(&[(&path, dst)]);
    for orderly in [false, true] {
        // A configuration of its own each time: no resumption.
        let config = tls_config_versions(Vec::new(), &[&rustls::version::TLS12]);
        let mut tls = StreamOwned::new(client(config, TEST_SERVER_NAME), raw(server.data));
        upgrade(&mut tls, &path, "smux_off");
        assert_eq!(
            tls.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        let mut backend = next_captured(&accepted);
        tls.write_all(&binary(b"twelve")).unwrap();
        if orderly {
            tls.conn.send_close_notify();
            tls.flush().unwrap();
        }
        tls.sock.shutdown(Shutdown::Write).unwrap();
        let want = if orderly { Ending::Fin } else { Ending::Reset };
        assert_eq!(read_to_ending(&mut backend), (b"twelve".to_vec(), want));
    }
}

// ---------------------------------------------------------------------------------------
// The records a download travels in.

/// One binary frame of a download: its length (header and payload) and the plaintext
/// lengths of the records that carried it.
struct Carried {
    len: usize,
    records: Vec<usize>,
}

/// Receives binary frames until they carry `total` bytes, not counting `overhead` bytes
/// of each payload (an smux header), and says which records carried each. Panics if a
/// record holds parts of two frames.
fn frames_in_records(client: &mut RecordClient, total: usize, overhead: usize) -> Vec<Carried> {
    let mut frames = Vec::new();
    let (mut got, mut frame, mut records) = (0, Vec::new(), Vec::new());
    while got < total {
        let Received::Data(data) = client.receive_skipping_updates() else {
            panic!("the download ended after {got} of {total} bytes");
        };
        records.push(data.len());
        frame.extend_from_slice(&data);
        // An unmasked server frame: FIN and opcode, then a 7-bit, 16-bit or 64-bit length.
        let (header, payload) = match frame.get(1).map(|b| b & 0x7f) {
            Some(126) if frame.len() >= 4 => (4, u16::from_be_bytes([frame[2], frame[3]]) as usize),
            Some(127) if frame.len() >= 10 => (
                10,
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
            ),
            Some(n) if n < 126 => (2, n as usize),
            _ => continue,
        };
        assert_eq!(frame[0], 0x80 | OP_BINARY, "a binary frame");
        if frame.len() < header + payload {
            continue;
        }
        assert_eq!(
            frame.len(),
            header + payload,
            "a record ends where its frame ends"
        );
        got += payload - overhead;
        frames.push(Carried {
            len: frame.len(),
            records: std::mem::take(&mut records),
        });
        frame.clear();
    }
    frames
}

/// What every download must show: no record is cut short inside a frame, and the frames
/// of full reads (the largest) fill whole records, so no sliver of a record follows them.
fn assert_whole_records(frames: &[Carried]) {
    for f in frames {
        let (last, full) = f.records.split_last().unwrap();
        assert!(full.iter().all(|&r| r == MAX_PLAINTEXT), "{:?}", f.records);
        assert!(*last > 0 && *last <= MAX_PLAINTEXT);
    }
    let largest = frames.iter().map(|f| f.len).max().unwrap();
    assert_eq!(
        largest % MAX_PLAINTEXT,
        0,
        "the largest frames ({largest} bytes) end in a record of {} bytes",
        largest % MAX_PLAINTEXT
    );
    let full_reads = frames.iter().filter(|f| f.len == largest).count();
    assert!(
        largest >= 2 * MAX_PLAINTEXT && full_reads >= 16,
        "{full_reads} frames of {largest} bytes in {}",
        frames.len()
    );
}

/// 8 MiB that `backend` sends as fast as it can, from a thread.
fn send_download(mut backend: TcpStream) -> std::thread::JoinHandle<TcpStream> {
    std::thread::spawn(move || {
        backend.write_all(&vec![0x5a; 8 << 20]).unwrap();
        backend
    })
}

#[test]
fn a_download_fills_whole_records() {
    let (_server, mut client, backend) = tunnel(AES_128);
    let sending = send_download(backend);
    let frames = frames_in_records(&mut client, 8 << 20, 0);
    sending.join().unwrap();
    assert_whole_records(&frames);
}

#[test]
fn a_mux_download_fills_whole_records() {
    let server = server();
    let (mut client, accepted) = mux_session(&server);
    let backend = open_stream(&mut client, &accepted, 1, b"go");
    let sending = send_download(backend);
    let frames = frames_in_records(&mut client, 8 << 20, 8);
    sending.join().unwrap();
    assert_whole_records(&frames);
}

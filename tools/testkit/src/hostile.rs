//! The hostile-input suite's cases: a client does one bad thing
//! to a fresh or shared server, and what it gets back is asserted (a status, a close code,
//! a hang-up within a bound), with the bounds the suite holds the server to. The health
//! checks each case ends with are in [`crate::server`].

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend::capture_backend;
use crate::http::{header, json_reply, post_request, read_response};
use crate::server::{assert_still_serves, fd_baseline, finish, unique_path, Server, WAIT};
use crate::smux::{smux, FromServer, MuxReader, SYN};
use crate::sock::dead_addr;
use crate::sock::{expect_closed, lossy, raw};
use crate::tls::{assert_only_alerts, Transport};
use crate::ws::{masked_frame, raw_upgrade, read_until_close};

/// Bound on anything the server can decide at once: an answer, a close, a FIN.
pub const PROMPT: Duration = Duration::from_secs(5);
/// A request head must be complete 10 s after accept; a slow one is cut off in here.
pub const HEAD_CUTOFF: (Duration, Duration) = (Duration::from_secs(8), Duration::from_secs(20));
/// Dialing `dst` is bounded by 10 s; a black-holed dial ends in here.
pub const DIAL_CUTOFF: (Duration, Duration) = (Duration::from_secs(8), Duration::from_secs(20));
/// The controller gives a body 30 s once its head is in; a slow one is cut off in here.
pub const BODY_CUTOFF: (Duration, Duration) = (Duration::from_secs(25), Duration::from_secs(45));
/// Growth of the server's RSS allowed while it holds bytes it cannot deliver.
pub const RSS_SLACK_KIB: u64 = 64 * 1024;
/// What a client tries to push at a destination that never reads (or a destination at a
/// client that never reads).
pub const PUSH: usize = 256 << 20;

/// Sends `bytes` to the TLS port (then EOF when `eof`), and asserts the server hangs up
/// promptly saying at most a TLS alert.
pub fn assert_tls_refused(bytes: &[u8], eof: bool) {
    let server = Server::tls();
    let base = fd_baseline(&server);
    let mut s = raw(server.data);
    s.write_all(bytes).unwrap();
    if eof {
        s.shutdown(Shutdown::Write).unwrap();
    }
    assert_only_alerts(&expect_closed(&mut s, PROMPT));
    finish(&server, base);
}

/// Sends `request` on a fresh plain TCP connection to `addr`; returns the response and the
/// connection.
pub fn ask(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>, TcpStream) {
    let mut s = raw(addr);
    s.write_all(request).unwrap();
    let (status, head, body) = read_response(&mut s);
    (status, head, body, s)
}

/// Sends `request` and asserts the answer is `status` and that the server then closes.
pub fn assert_status_then_close(addr: SocketAddr, request: &[u8], status: u16) -> String {
    let (got, head, _, mut s) = ask(addr, request);
    assert_eq!(got, status, "{:?} got {head}", lossy(request));
    assert_eq!(header(&head, "connection").as_deref(), Some("close"));
    expect_closed(&mut s, PROMPT);
    head
}

/// A known path refuses the upgrade `request(path)` with `status`, sends no
/// `Sec-WebSocket-Accept`, and never dials the user's destination.
pub fn upgrade_refused(server: &Server, request: impl Fn(&str) -> String, status: u16) -> String {
    let (dst, dialed) = capture_backend();
    let path = unique_path("refused");
    server.add(&[(&path, dst)]);
    let mut conn = server.connect();
    conn.write_all(request(&path).as_bytes()).unwrap();
    let (got, head, _) = read_response(&mut conn);
    assert_eq!(got, status, "{head}");
    assert!(header(&head, "sec-websocket-accept").is_none(), "{head}");
    // A dial would have happened before the answer (plain mode dials first).
    assert_still_serves(server);
    assert!(
        dialed.try_recv().is_err(),
        "dst was dialed for a refused upgrade"
    );
    head
}

/// A plain tunnel to a backend that hands its side over: (client, dst side).
pub fn tunnel(server: &Server) -> (Transport, TcpStream) {
    let (dst, accepted) = capture_backend();
    let path = unique_path("ws");
    server.add(&[(&path, dst)]);
    let mut conn = server.connect();
    let (status, head) = raw_upgrade(&mut conn, &path, "");
    assert_eq!(status, 101, "{head}");
    let backend = accepted.recv_timeout(WAIT).expect("dst dialed");
    backend.set_read_timeout(Some(WAIT)).unwrap();
    (conn, backend)
}

/// Sends `frames` into a fresh tunnel and asserts the server answers with a close frame
/// carrying `code`, closes the connection, and closes `dst` after delivering at least
/// `at_least` and at most `at_most` (a prefix of it: where a frame's bytes were split decides
/// how much of a bad text frame's valid start goes out).
pub fn ws_violation(server: &Server, frames: &[u8], code: u16, at_least: &[u8], at_most: &[u8]) {
    let (mut conn, mut backend) = tunnel(server);
    conn.write_all(frames).unwrap();
    let (data, got) = read_until_close(&mut conn);
    assert_eq!(got, Some(code), "close code for {frames:02x?}");
    assert!(data.is_empty());
    expect_closed(&mut conn, PROMPT);
    let delivered = expect_closed(&mut backend, PROMPT);
    assert!(
        delivered.starts_with(at_least) && at_most.starts_with(&delivered),
        "dst got {delivered:?}, want {at_least:?}..{at_most:?}"
    );
}

/// Opens a mux session to `dst` (smux_on offered and echoed).
pub fn mux_session(server: &Server, dst: SocketAddr) -> Transport {
    let path = unique_path("mux");
    server.add(&[(&path, dst)]);
    let mut conn = server.connect();
    let (status, head) = raw_upgrade(&mut conn, &path, "Sec-WebSocket-Protocol: smux_on\r\n");
    assert_eq!(status, 101, "{head}");
    assert_eq!(
        header(&head, "sec-websocket-protocol").as_deref(),
        Some("smux_on")
    );
    conn
}

/// Sends smux bytes in one masked binary frame.
pub fn send_mux(conn: &mut Transport, bytes: &[u8]) {
    conn.write_all(&masked_frame(true, 0x2, bytes)).unwrap();
}

/// Sends smux bytes that break the protocol and asserts the session ends with close 1002,
/// the socket closes, and the open stream's `dst` is closed.
pub fn smux_violation(server: &Server, bad: &[u8]) {
    let (dst, accepted) = capture_backend();
    let mut conn = mux_session(server, dst);
    let mut rx = MuxReader::default();
    send_mux(&mut conn, &smux(SYN, 1, b""));
    let mut backend = accepted.recv_timeout(WAIT).expect("stream dialed");
    backend.set_read_timeout(Some(WAIT)).unwrap();
    send_mux(&mut conn, bad);
    assert_eq!(rx.next(&mut conn), FromServer::Close(Some(1002)));
    expect_closed(&mut conn, PROMPT);
    expect_closed(&mut backend, PROMPT);
}

/// Sends a raw request to the controller and reads one reply.
pub fn ctl_raw(server: &Server, request: &[u8]) -> (u16, Value, TcpStream) {
    let mut s = raw(server.controller);
    s.write_all(request).unwrap();
    let (status, head, body) = read_response(&mut s);
    (status, json_reply(&head, &body), s)
}

/// POSTs `body` (any bytes) to the controller.
pub fn ctl_post(server: &Server, body: &[u8]) -> (u16, Value) {
    let (status, reply, _) = ctl_raw(server, &post_request(body));
    (status, reply)
}

/// The controller's user count (a ping).
pub fn users(server: &Server) -> u64 {
    let (status, reply) = ctl_post(server, br#"{"opt":9}"#);
    assert_eq!((status, reply["res"].as_u64()), (200, Some(1)), "{reply}");
    reply["current_users"].as_u64().unwrap()
}

/// Each body is refused with `status` and res 2, with a reason, and changes nothing.
pub fn assert_bodies_refused(bodies: &[Vec<u8>], status: u16) {
    let server = Server::plain();
    let base = fd_baseline(&server);
    server.add(&[("/keep", dead_addr())]);
    for body in bodies {
        let started = Instant::now();
        let (got, reply) = ctl_post(&server, body);
        assert_eq!(got, status, "{:?}: {reply}", lossy(body));
        assert_eq!(reply["res"], 2, "{:?}", lossy(body));
        assert_ne!(reply["err_string"], "", "{:?}", lossy(body));
        assert_eq!(reply["current_users"], 1, "{:?}", lossy(body));
        assert!(started.elapsed() < PROMPT, "{:?}", lossy(body));
    }
    assert_eq!(users(&server), 1);
    finish(&server, base);
}

//! Per-user limits and billing against the real server with real clients: the
//! speed limit measured over real sockets (one tunnel, and 16 spread over both workers,
//! each direction), exact connection and device limits under concurrent opens, quota and
//! expiry cutting open tunnels (close 1008) and refusing new ones with the unknown-path 404,
//! limits changed on open tunnels, kick on delete and sync, per-user counters with zeros
//! and limits, and billing reports whose reply is lost, across a restart with `-state`.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::prelude::*;

const MIB: u64 = 1024 * 1024;

/// Adds one user with these extra fields (limits), asserting success.
fn add_user(server: &Server, path: &str, dst: SocketAddr, limits: Value) {
    let mut user = json!({"path": path, "dst": dst.to_string()});
    user.as_object_mut()
        .unwrap()
        .extend(limits.as_object().unwrap().clone());
    let (status, reply) = server.post(&json!({"opt":1,"args_bunch":[user]}).to_string());
    assert_eq!((status, reply["res"].as_u64()), (200, Some(1)), "{reply}");
}

/// A TCP connection to `addr` from the loopback address 127.0.0.`last`.
fn connect_from(addr: SocketAddr, last: u8) -> TcpStream {
    // SAFETY: plain socket calls on a descriptor we own; on failure it is closed and we
    // panic. The sockaddr structs are fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut local: libc::sockaddr_in = std::mem::zeroed();
        local.sin_family = libc::AF_INET as libc::sa_family_t;
        local.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, last]).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let bound = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        let SocketAddr::V4(v4) = addr else {
            panic!("IPv4 only")
        };
        let mut remote: libc::sockaddr_in = std::mem::zeroed();
        remote.sin_family = libc::AF_INET as libc::sa_family_t;
        remote.sin_port = v4.port().to_be();
        remote.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
        let connected =
            bound == 0 && libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) == 0;
        if !connected {
            libc::close(fd);
            panic!(
                "connect from 127.0.0.{last}: {}",
                std::io::Error::last_os_error()
            );
        }
        let stream = TcpStream::from_raw_fd(fd);
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }
}

/// Upgrades a fresh connection from 127.0.0.`last` to `path`: the status and the stream.
fn open_from(server: &Server, path: &str, last: u8) -> (u16, TcpStream) {
    let mut stream = connect_from(server.data, last);
    let (status, _) = raw_upgrade(&mut stream, path, "Sec-WebSocket-Protocol: smux_off\r\n");
    (status, stream)
}

fn open(server: &Server, path: &str) -> (u16, TcpStream) {
    open_from(server, path, 1)
}

/// Whether the server closes this tunnel with a close frame of `code` (within [`WAIT`]).
fn closed_with(stream: &mut TcpStream, code: u16) -> bool {
    let (_, got) = read_until_close(stream);
    got == Some(code)
}

/// Traffic both ways through `tunnels` tunnels of `path` for `secs` seconds after a
/// second's warm-up (which spends the bucket's initial burst): bytes per second up (as
/// `dst` received them) and down (as the clients received them).
fn measure(
    server: &Server,
    path: &str,
    dst_up: &Arc<AtomicU64>,
    tunnels: usize,
    secs: u64,
) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let down = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for _ in 0..tunnels {
        let (status, stream) = open(server, path);
        assert_eq!(status, 101);
        let writer = stream.try_clone().unwrap();
        let stop_w = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut writer = writer;
            let frame = masked_frame(true, 0x2, &pattern(64 * 1024, 3));
            while !stop_w.load(Ordering::Relaxed) {
                if writer.write_all(&frame).is_err() {
                    return;
                }
            }
        });
        let reader = stream.try_clone().unwrap();
        let down = Arc::clone(&down);
        std::thread::spawn(move || {
            let mut reader = BufReader::with_capacity(256 * 1024, reader);
            while let Ok((_, _, payload)) = read_frame(&mut reader) {
                down.fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
        });
        streams.push(stream);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (up0, down0) = (dst_up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (up1, down1) = (dst_up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for stream in &streams {
        let _ = stream.shutdown(Shutdown::Both);
    }
    (
        (up1 - up0) as f64 / elapsed,
        (down1 - down0) as f64 / elapsed,
    )
}

/// A backend that counts what it receives into the returned counter and sends without
/// pause on every connection.
fn full_duplex_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let addr = backend(move |stream| {
        let mut writer = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = pattern(64 * 1024, 9);
            while writer.write_all(&chunk).is_ok() {}
        });
        let mut reader = stream;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    (addr, received)
}

fn assert_rate(what: &str, measured: f64, limit: u64) {
    let ratio = measured / limit as f64;
    eprintln!("{what}: {measured:.0} B/s, {ratio:.3} x the limit");
    assert!(
        (0.8..=1.2).contains(&ratio),
        "{what}: {measured:.0} B/s is {ratio:.2} x the limit of {limit} B/s"
    );
}

#[test]
fn speed_limit_holds_for_one_tunnel_each_direction() {
    let server = Server::plain();
    let (dst, up) = full_duplex_backend();
    add_user(&server, "/speed1", dst, json!({"speed_limit": 2 * MIB}));
    let (rate_up, rate_down) = measure(&server, "/speed1", &up, 1, 5);
    assert_rate("one tunnel, up", rate_up, 2 * MIB);
    assert_rate("one tunnel, down", rate_down, 2 * MIB);
}

#[test]
fn speed_limit_is_shared_by_16_tunnels_over_every_worker() {
    let server = Server::plain();
    let (dst, up) = full_duplex_backend();
    add_user(&server, "/speed16", dst, json!({"speed_limit": 2 * MIB}));
    let (rate_up, rate_down) = measure(&server, "/speed16", &up, 16, 5);
    assert_rate("16 tunnels, up", rate_up, 2 * MIB);
    assert_rate("16 tunnels, down", rate_down, 2 * MIB);
    // The tunnels were spread over both workers (the kernel balances SO_REUSEPORT by
    // connection): each worker reports some of the user's tunnels opened.
    for worker in ["worker=\"0\"", "worker=\"1\""] {
        let opened = metric(&server, "mtt_tunnels_total", worker);
        assert!(opened > 0.0, "no tunnel reached {worker}");
    }
}

#[test]
fn limits_changed_apply_to_open_tunnels_without_reconnecting() {
    let server = Server::plain();
    let (dst, up) = full_duplex_backend();
    add_user(&server, "/change", dst, json!({}));
    let stop = Arc::new(AtomicBool::new(false));
    let (status, stream) = open(&server, "/change");
    assert_eq!(status, 101);
    let down = Arc::new(AtomicU64::new(0));
    {
        let down = Arc::clone(&down);
        let reader = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut reader = BufReader::with_capacity(256 * 1024, reader);
            while let Ok((_, _, payload)) = read_frame(&mut reader) {
                down.fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    // Unlimited first: far above the limit about to be set.
    let before = down.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    let unlimited = down.load(Ordering::Relaxed) - before;
    assert!(
        unlimited > 4 * MIB,
        "unlimited tunnel moved only {unlimited} B/s"
    );
    add_user(&server, "/change", dst, json!({"speed_limit": MIB}));
    // Within a second the open tunnel is shaped (its burst spent by then, too).
    std::thread::sleep(Duration::from_secs(2));
    let before = down.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(4));
    let limited = (down.load(Ordering::Relaxed) - before) as f64 / 4.0;
    assert_rate("after the change", limited, MIB);
    // Raised on the fly, the same tunnel goes faster again.
    add_user(&server, "/change", dst, json!({"speed_limit": 3 * MIB}));
    std::thread::sleep(Duration::from_secs(1));
    let before = down.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    let raised = (down.load(Ordering::Relaxed) - before) as f64 / 3.0;
    assert_rate("after raising", raised, 3 * MIB);
    stop.store(true, Ordering::Relaxed);
    drop(up);
}

#[test]
fn conn_limit_is_exact_under_concurrent_opens_across_workers() {
    let server = Server::plain();
    let dst = echo_backend();
    add_user(&server, "/conns", dst, json!({"conn_limit": 3}));
    for round in 0..3 {
        let barrier = Arc::new(Barrier::new(12));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                let data = server.data;
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(data).unwrap();
                    stream.set_read_timeout(Some(WAIT)).unwrap();
                    barrier.wait();
                    let (status, _) = raw_upgrade(&mut stream, "/conns", "");
                    (status, stream)
                })
            })
            .collect();
        let results: Vec<(u16, TcpStream)> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let admitted = results.iter().filter(|(s, _)| *s == 101).count();
        let refused = results.iter().filter(|(s, _)| *s == 404).count();
        assert_eq!((admitted, refused), (3, 9), "round {round}");
        drop(results);
        // Closed tunnels free their places (the server notices the clients gone).
        eventually("the places to be freed", || {
            let (_, reply) = server.post(r#"{"opt":5,"args_bunch":[{"path":"/conns"}]}"#);
            reply["users"][0]["tunnels_open"] == 0
        });
    }
    assert!(metric(&server, "mtt_refused_total", "reason=\"conn_limit\"") >= 27.0);
    // The refusal is the unknown-path page itself.
    let mut held: Vec<TcpStream> = (0..3).map(|_| open(&server, "/conns").1).collect();
    let mut refused = TcpStream::connect(server.data).unwrap();
    refused.set_read_timeout(Some(WAIT)).unwrap();
    refused
        .write_all(b"GET /conns HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .unwrap();
    let (status, head, body) = read_response(&mut refused);
    let mut unknown = TcpStream::connect(server.data).unwrap();
    unknown.set_read_timeout(Some(WAIT)).unwrap();
    unknown
        .write_all(b"GET /nobody HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .unwrap();
    let (status_unknown, head_unknown, body_unknown) = read_response(&mut unknown);
    assert_eq!((status, &body), (status_unknown, &body_unknown));
    assert_eq!(header(&head, "server"), header(&head_unknown, "server"));
    held.clear();
}

#[test]
fn device_limit_counts_distinct_client_addresses_exactly() {
    let server = Server::plain();
    let dst = echo_backend();
    add_user(&server, "/devices", dst, json!({"device_limit": 2}));
    // Two devices, one with two tunnels: all admitted; a third device is not.
    let (s1, a1) = open_from(&server, "/devices", 2);
    let (s2, _a2) = open_from(&server, "/devices", 2);
    let (s3, b) = open_from(&server, "/devices", 3);
    assert_eq!((s1, s2, s3), (101, 101, 101));
    assert_eq!(open_from(&server, "/devices", 4).0, 404);
    // The same device may open more.
    let (s4, _a3) = open_from(&server, "/devices", 2);
    assert_eq!(s4, 101);
    // A device whose tunnels are all closed frees its place.
    drop(b);
    eventually("device 3 to be released", || {
        open_from(&server, "/devices", 4).0 == 101
    });
    drop(a1);
    assert!(metric(&server, "mtt_refused_total", "reason=\"device_limit\"") >= 1.0);
}

#[test]
fn device_limit_is_exact_under_concurrent_opens_across_workers() {
    let server = Server::plain();
    let dst = echo_backend();
    add_user(&server, "/devrace", dst, json!({"device_limit": 2}));
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let data = server.data;
            std::thread::spawn(move || {
                let mut stream = connect_from(data, 10 + i);
                barrier.wait();
                let (status, _) = raw_upgrade(&mut stream, "/devrace", "");
                (status, stream)
            })
        })
        .collect();
    let results: Vec<(u16, TcpStream)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let admitted = results.iter().filter(|(s, _)| *s == 101).count();
    assert_eq!(
        admitted,
        2,
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
}

#[test]
fn quota_cuts_every_open_tunnel_and_refuses_new_ones_until_resent() {
    let server = Server::plain();
    let dst = echo_backend();
    add_user(&server, "/quota", dst, json!({"quota": MIB}));
    let (_, reply) = server.post(r#"{"opt":5,"args_bunch":[{"path":"/quota"}]}"#);
    assert_eq!(reply["users"][0]["quota"], MIB);
    assert_eq!(reply["users"][0]["quota_left"], MIB);
    // Several idle tunnels (on both workers, likely) and one that moves the bytes.
    let mut idle: Vec<TcpStream> = (0..6).map(|_| open(&server, "/quota").1).collect();
    let (status, mut busy) = open(&server, "/quota");
    assert_eq!(status, 101);
    let chunk = pattern(64 * 1024, 5);
    let writer = busy.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut writer = writer;
        // 2 MiB each way through the echo: far past the quota.
        for _ in 0..32 {
            if writer.write_all(&masked_frame(true, 0x2, &chunk)).is_err() {
                return;
            }
        }
    });
    let (echoed, code) = read_until_close(&mut busy);
    assert_eq!(code, Some(1008));
    assert!(
        (echoed.len() as u64) < 2 * MIB,
        "moved {} bytes on a quota of 1 MiB",
        echoed.len()
    );
    let started = Instant::now();
    for tunnel in &mut idle {
        assert!(closed_with(tunnel, 1008));
    }
    // Every worker's sweep runs each second; the bound is generous for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(open(&server, "/quota").0, 404);
    assert!(metric(&server, "mtt_refused_total", "reason=\"quota\"") >= 1.0);
    let (_, reply) = server.post(r#"{"opt":5,"args_bunch":[{"path":"/quota"}]}"#);
    assert_eq!(reply["users"][0]["quota_left"], 0);
    // Re-sending the quota starts the count over.
    add_user(&server, "/quota", dst, json!({"quota": MIB}));
    assert_eq!(open(&server, "/quota").0, 101);
}

#[test]
fn expiry_refuses_new_tunnels_and_closes_open_ones() {
    let server = Server::plain();
    let dst = echo_backend();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    add_user(&server, "/past", dst, json!({"expire": now - 10}));
    assert_eq!(open(&server, "/past").0, 404);
    assert!(metric(&server, "mtt_refused_total", "reason=\"expired\"") >= 1.0);
    add_user(&server, "/soon", dst, json!({"expire": now + 3}));
    let mut tunnels: Vec<TcpStream> = (0..4)
        .map(|_| {
            let (status, stream) = open(&server, "/soon");
            assert_eq!(status, 101);
            stream
        })
        .collect();
    for tunnel in &mut tunnels {
        assert!(closed_with(tunnel, 1008));
    }
    assert_eq!(open(&server, "/soon").0, 404);
}

#[test]
fn delete_and_sync_with_kick_close_the_removed_users_tunnels() {
    let server = Server::plain();
    let dst = echo_backend();
    server.add(&[("/del-kick", dst), ("/sync-kick", dst), ("/stay", dst)]);
    let (_, mut deleted) = open(&server, "/del-kick");
    let (_, mut synced) = open(&server, "/sync-kick");
    let (_, mut stays) = open(&server, "/stay");
    let (_, reply) = server.post(r#"{"opt":2,"kick":true,"args_bunch":[{"path":"/del-kick"}]}"#);
    assert_eq!(
        (reply["res"].as_u64(), reply["kicked"].as_u64()),
        (Some(1), Some(1)),
        "{reply}"
    );
    assert!(closed_with(&mut deleted, 1008));
    let body = json!({"opt":4,"kick":true,"args_bunch":[{"path":"/stay","dst":dst.to_string()}]});
    let (_, reply) = server.post(&body.to_string());
    assert_eq!(
        (reply["removed"].as_u64(), reply["kicked"].as_u64()),
        (Some(1), Some(1)),
        "{reply}"
    );
    assert!(closed_with(&mut synced, 1008));
    // The user kept is untouched.
    stays
        .write_all(&masked_frame(true, 0x2, b"still here"))
        .unwrap();
    assert_eq!(read_data(&mut stays, 10), b"still here");
}

#[test]
fn counters_list_asked_users_with_zeros_and_their_limits() {
    let server = Server::plain();
    let dst = echo_backend();
    add_user(
        &server,
        "/limited",
        dst,
        json!({"speed_limit": 1000, "device_limit": 2, "conn_limit": 3, "quota": 4000, "expire": 4_000_000_000u64}),
    );
    server.add(&[("/free", dst)]);
    let (_, reply) = server.post(
        r#"{"opt":5,"args_bunch":[{"path":"/limited"},{"path":"/free"},{"path":"/nobody"}]}"#,
    );
    assert_eq!(
        reply["users"],
        json!([
            {"path":"/limited","bytes_up":0,"bytes_down":0,"tunnels_opened":0,"tunnels_open":0,
             "clients":[],"speed_limit":1000,"device_limit":2,"conn_limit":3,"quota":4000,
             "expire":4_000_000_000u64,"quota_left":4000},
            {"path":"/free","bytes_up":0,"bytes_down":0,"tunnels_opened":0,"tunnels_open":0,
             "clients":[]}
        ])
    );
    // Limits removed: the user is listed without them.
    add_user(&server, "/limited", dst, json!({}));
    let (_, reply) = server.post(r#"{"opt":5,"args_bunch":[{"path":"/limited"}]}"#);
    assert!(reply["users"][0].get("speed_limit").is_none(), "{reply}");
}

#[test]
fn bad_limits_and_acks_are_refused_and_change_nothing() {
    let server = Server::plain();
    let dst = echo_backend();
    add_user(&server, "/keep", dst, json!({"conn_limit": 1}));
    for (body, status) in [
        (
            json!({"opt":1,"args_bunch":[{"path":"/new","dst":"h:1"},{"path":"/keep","dst":"h:1","quota":-1}]}),
            200,
        ),
        (
            json!({"opt":4,"args_bunch":[{"path":"/keep","dst":"h:1","conn_limit":-3}]}),
            200,
        ),
        (
            json!({"opt":1,"args_bunch":[{"path":"/new","dst":"h:1","speed_limit":"fast"}]}),
            400,
        ),
        (
            json!({"opt":1,"args_bunch":[{"path":"/new","dst":"h:1","expire":1.5}]}),
            400,
        ),
        (
            json!({"opt":2,"kick":1,"args_bunch":[{"path":"/keep"}]}),
            400,
        ),
        (json!({"opt":8}), 200),
        (json!({"opt":8,"report_id":"1"}), 200),
        (json!({"opt":8,"report_id":7}), 400),
    ] {
        let (got, reply) = server.post(&body.to_string());
        assert_eq!(
            (got, reply["res"].as_u64()),
            (status, Some(2)),
            "{body}: {reply}"
        );
        assert!(!reply["err_string"].as_str().unwrap().is_empty());
        assert_eq!(reply["current_users"], 1);
    }
    let (_, reply) = server.post(r#"{"opt":5,"args_bunch":[{"path":"/keep"}]}"#);
    assert_eq!(reply["users"][0]["conn_limit"], 1);
    assert!(reply["users"][0].get("quota").is_none());
}

/// POSTs `body` on a fresh connection and closes it without reading the reply.
fn post_and_hang_up(server: &Server, body: &str) {
    let mut stream = TcpStream::connect(server.controller).unwrap();
    stream
        .write_all(&testkit::http::post_request(body.as_bytes()))
        .unwrap();
    stream.shutdown(Shutdown::Both).unwrap();
}

/// Moves `up` bytes to the echo backend and back through one tunnel, then closes it.
fn echo_through(server: &Server, path: &str, up: usize) {
    let (status, mut stream) = open(server, path);
    assert_eq!(status, 101);
    let data = pattern(up, 7);
    stream.write_all(&masked_frame(true, 0x2, &data)).unwrap();
    assert!(read_data(&mut stream, up) == data);
    stream
        .write_all(&masked_frame(true, 0x8, &[0x03, 0xe8]))
        .unwrap();
    let _ = read_until_close(&mut stream);
}

/// The report's line for `path`: (bytes up, bytes down, tunnels opened).
fn line(reply: &Value, path: &str) -> Option<(u64, u64, u64)> {
    reply["users"].as_array().unwrap().iter().find_map(|u| {
        (u["path"] == path).then(|| {
            (
                u["bytes_up"].as_u64().unwrap(),
                u["bytes_down"].as_u64().unwrap(),
                u["tunnels_opened"].as_u64().unwrap(),
            )
        })
    })
}

#[test]
fn billing_loses_nothing_when_a_reply_is_lost_or_the_server_restarts() {
    let dir = std::env::temp_dir().join(format!("mtt-policy-billing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("users.state");
    let state_arg = state.to_str().unwrap();
    let dst = echo_backend();
    let server = Server::start(&["-state", state_arg]);
    add_user(&server, "/bill", dst, json!({"conn_limit": 1}));
    echo_through(&server, "/bill", 1000);
    // The panel asks and never reads the reply.
    post_and_hang_up(&server, r#"{"opt":7}"#);
    // Asked again: the same counts, whether or not the lost one was made.
    let (_, first) = server.post(r#"{"opt":7}"#);
    assert_eq!(first["res"], 1, "{first}");
    assert_eq!(line(&first, "/bill"), Some((1000, 1000, 1)), "{first}");
    let first_id = first["report_id"].as_str().unwrap().to_string();
    // opt 5 with reset (an old panel) takes nothing away from billing.
    server.post(r#"{"opt":5,"reset":true}"#);
    echo_through(&server, "/bill", 500);
    let (_, second) = server.post(r#"{"opt":7}"#);
    assert_eq!(line(&second, "/bill"), Some((1500, 1500, 2)), "{second}");
    let second_id = second["report_id"].as_str().unwrap().to_string();
    assert_ne!(first_id, second_id);
    // A crash before the acknowledgement.
    drop(server);
    let server = Server::start(&["-state", state_arg]);
    assert_eq!(server.post(r#"{"opt":9}"#).1["current_users"], 1);
    // Limits came back too: one tunnel at a time.
    let (status, _held) = open(&server, "/bill");
    assert_eq!(status, 101);
    assert_eq!(open(&server, "/bill").0, 404);
    drop(_held);
    // The unacknowledged report is repeated, never lost (with the tunnel opened since).
    let (_, third) = server.post(r#"{"opt":7}"#);
    assert_eq!(line(&third, "/bill"), Some((1500, 1500, 3)), "{third}");
    let third_id = third["report_id"].as_str().unwrap().to_string();
    // Only the newest id acknowledges; an older one is an error that changes nothing.
    let (status, reply) = server.post(&json!({"opt":8,"report_id":second_id}).to_string());
    assert_eq!((status, reply["res"].as_u64()), (200, Some(2)), "{reply}");
    let (status, reply) = server.post(&json!({"opt":8,"report_id":third_id}).to_string());
    assert_eq!((status, reply["res"].as_u64()), (200, Some(1)), "{reply}");
    let (_, reply) = server.post(&json!({"opt":8,"report_id":third_id}).to_string());
    assert_eq!(reply["res"], 2, "{reply}");
    // Acknowledged bytes are never reported again, across a restart either.
    drop(server);
    let server = Server::start(&["-state", state_arg]);
    let (_, fourth) = server.post(r#"{"opt":7}"#);
    assert_eq!(line(&fourth, "/bill"), None, "{fourth}");
    assert!(
        fourth["report_id"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 3
    );
    drop(server);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_graceful_restart_keeps_what_was_counted_since_the_last_report() {
    let dir = temp_dir("policy-restart");
    let state = dir.join("users.state");
    let state_arg = state.to_str().unwrap();
    let dst = echo_backend();
    let mut server = Server::start(&["-state", state_arg, "-grace", "2s"]);
    add_user(&server, "/kept", dst, json!({"conn_limit": 2}));
    echo_through(&server, "/kept", 4096);
    // Nothing was collected yet: the counts live only in the worker that carried the
    // tunnel. A SIGTERM (a deploy, a package upgrade) must not throw them away.
    server.signal(libc::SIGTERM);
    assert_eq!(
        server.wait_exit(WAIT),
        Some(Some(0)),
        "{}",
        server.log_text()
    );
    let server = Server::start(&["-state", state_arg]);
    let (_, report) = server.post(r#"{"opt":7}"#);
    assert_eq!(line(&report, "/kept"), Some((4096, 4096, 1)), "{report}");
}

#[test]
fn mux_sessions_are_counted_shaped_and_cut_like_plain_tunnels() {
    let server = Server::plain();
    let (dst, _up) = full_duplex_backend();
    add_user(
        &server,
        "/mux",
        dst,
        json!({"conn_limit": 1, "speed_limit": MIB}),
    );
    let mut session = connect_from(server.data, 1);
    let (status, _) = raw_upgrade(&mut session, "/mux", "Sec-WebSocket-Protocol: smux_on\r\n");
    assert_eq!(status, 101);
    // A session is one connection: a second is refused.
    let (status, _) = raw_upgrade(
        &mut connect_from(server.data, 1),
        "/mux",
        "Sec-WebSocket-Protocol: smux_on\r\n",
    );
    assert_eq!(status, 404);
    // Two streams from the backend that sends without pause share the user's limit.
    let mut syns = testkit::smux::smux(0, 1, &[]);
    syns.extend(testkit::smux::smux(0, 3, &[]));
    session.write_all(&masked_frame(true, 0x2, &syns)).unwrap();
    let down = Arc::new(AtomicU64::new(0));
    let close = Arc::new(AtomicU64::new(0));
    {
        let (down, close) = (Arc::clone(&down), Arc::clone(&close));
        let reader = session.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut reader = BufReader::with_capacity(256 * 1024, reader);
            while let Ok((_, opcode, payload)) = read_frame(&mut reader) {
                if opcode == 0x8 && payload.len() >= 2 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    close.store(u64::from(code), Ordering::Relaxed);
                    return;
                }
                down.fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
        });
    }
    std::thread::sleep(Duration::from_millis(1500));
    let before = down.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(4));
    let rate = (down.load(Ordering::Relaxed) - before) as f64 / 4.0;
    assert_rate("mux session, down", rate, MIB);
    // A quota given now cuts the session once it is used.
    add_user(
        &server,
        "/mux",
        dst,
        json!({"conn_limit": 1, "speed_limit": MIB, "quota": MIB / 2}),
    );
    eventually("the session to be closed", || {
        close.load(Ordering::Relaxed) != 0
    });
    assert_eq!(close.load(Ordering::Relaxed), 1008);
}

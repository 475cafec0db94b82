//! Graceful shutdown and the connection cap, as an operator sees them.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use testkit::prelude::*;

#[test]
fn sigterm_stops_accepting_lets_tunnels_finish_then_exits_0() {
    let mut server = Server::start(&["-grace", "30s"]);
    let path = unique_path("drain");
    server.add(&[(&path, echo_backend())]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    server.signal(libc::SIGTERM);
    // New connections are no longer accepted.
    let refused_by = Instant::now() + WAIT;
    loop {
        match std::net::TcpStream::connect(server.data) {
            Err(_) => break,
            Ok(mut probe) => {
                probe
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let _ = probe.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
                let mut buf = [0u8; 1];
                if !matches!(probe.read(&mut buf), Ok(1)) {
                    break;
                }
            }
        }
        assert!(Instant::now() < refused_by, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The open tunnel still works while draining.
    for i in 0..5u8 {
        let payload = pattern(10_000, i as u64);
        conn.write_all(&masked_frame(true, 0x2, &payload)).unwrap();
        assert!(read_data(&mut conn, payload.len()) == payload);
    }
    assert!(server.alive(), "exited with a tunnel open");
    // Closing it lets the server exit at once, with status 0.
    conn.write_all(&masked_frame(true, 0x8, &[0x03, 0xe8]))
        .unwrap();
    let (_, code) = read_until_close(&mut conn);
    assert_eq!(code, Some(1000));
    drop(conn);
    assert_eq!(server.wait_exit(WAIT), Some(Some(0)));
}

#[test]
fn grace_period_ends_open_tunnels_and_exits_0() {
    let mut server = Server::start(&["-grace", "1s"]);
    let path = unique_path("grace");
    server.add(&[(&path, echo_backend())]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    let start = Instant::now();
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit(WAIT), Some(Some(0)));
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    // The tunnel is gone with the process.
    let mut buf = [0u8; 16];
    assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = Server::start(&["-grace", "60s"]);
    let path = unique_path("twice");
    server.add(&[(&path, echo_backend())]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    server.signal(libc::SIGTERM);
    // Wait until the drain has begun (the server says so), then signal again.
    let began = Instant::now() + WAIT;
    while !server.log.lock().unwrap().contains("no longer accepting") {
        assert!(Instant::now() < began);
        std::thread::sleep(Duration::from_millis(20));
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(Some(1)));
}

#[test]
fn connections_over_the_cap_are_closed_at_once() {
    let server = Server::start(&["-max-conns", "2"]);
    let path = unique_path("cap");
    server.add(&[(&path, echo_backend())]);
    let mut first = server.connect();
    assert_eq!(raw_upgrade(&mut first, &path, "").0, 101);
    let mut second = server.connect();
    assert_eq!(raw_upgrade(&mut second, &path, "").0, 101);
    // The third is accepted by the kernel and closed by the server without an answer.
    let mut third = std::net::TcpStream::connect(server.data).unwrap();
    third.set_read_timeout(Some(WAIT)).unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 16];
    assert!(matches!(third.read(&mut buf), Ok(0) | Err(_)));
    // Freeing a place lets a new connection in.
    first
        .write_all(&masked_frame(true, 0x8, &[0x03, 0xe8]))
        .unwrap();
    let _ = read_until_close(&mut first);
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut conn = server.connect();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 12];
        if conn.read_exact(&mut head).is_ok() {
            assert_eq!(&head, b"HTTP/1.1 404");
            break;
        }
        assert!(Instant::now() < deadline, "no place freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

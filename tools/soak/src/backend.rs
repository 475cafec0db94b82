//! The echo backend every soak user points at: a mio event loop that echoes each
//! connection's bytes verbatim, checks the upload against the tunnel's byte stream on the
//! way (so a corruption is pinned to a direction), and closes the connection itself after a
//! given number of bytes when the tunnel asked for that.
//!
//! A tunnel's stream starts with a [`HEADER_LEN`]-byte header: `SOAK`, flags, seed, and
//! the payload length after which the backend closes (when flag [`FLAG_BACKEND_CLOSES`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use testkit::rng::{mismatches, ByteStream};

pub const HEADER_LEN: usize = 24;
pub const MAGIC: &[u8; 4] = b"SOAK";
pub const FLAG_BACKEND_CLOSES: u32 = 1;

/// Encodes a tunnel header.
pub fn header(seed: u64, backend_closes_after: Option<u64>) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    let flags = if backend_closes_after.is_some() {
        FLAG_BACKEND_CLOSES
    } else {
        0
    };
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..16].copy_from_slice(&seed.to_le_bytes());
    h[16..24].copy_from_slice(&backend_closes_after.unwrap_or(0).to_le_bytes());
    h
}

/// What the backend saw.
#[derive(Default)]
pub struct BackendStats {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    /// Payload bytes (after headers) received.
    pub bytes: AtomicU64,
    /// Upload bytes that differed from the tunnel's stream (client to dst direction).
    pub corrupt_bytes: AtomicU64,
    /// Connections whose first bytes were not a valid header.
    pub bad_headers: AtomicU64,
    /// Bytes that arrived after the backend's own close point.
    pub excess_bytes: AtomicU64,
    /// Connections the backend closed itself, as asked.
    pub closed_by_backend: AtomicU64,
    /// Connections that ended with an error (reset) instead of an orderly close.
    pub errors: AtomicU64,
}

pub struct Backend {
    pub addrs: Vec<SocketAddr>,
    pub stats: Arc<BackendStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Backend {
    /// Starts `ports` listeners on 127.0.0.1, one event-loop thread each.
    pub fn start(ports: usize) -> io::Result<Backend> {
        let stats = Arc::new(BackendStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..ports.max(1) {
            let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
            addrs.push(listener.local_addr()?);
            let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
            threads.push(
                std::thread::Builder::new()
                    .name("soak-backend".into())
                    .spawn(move || event_loop(listener, &stats, &stop))?,
            );
        }
        Ok(Backend {
            addrs,
            stats,
            stop,
            threads,
        })
    }

    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

struct Conn {
    sock: TcpStream,
    hdr: [u8; HEADER_LEN],
    hdr_len: usize,
    expect: Option<ByteStream>,
    /// Close after this many payload bytes.
    close_after: Option<u64>,
    received: u64,
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
    closing: bool,
    bad: bool,
}

const LISTENER: Token = Token(usize::MAX);

fn event_loop(mut listener: TcpListener, stats: &BackendStats, stop: &AtomicBool) {
    let mut poll = Poll::new().expect("epoll");
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .expect("register listener");
    let mut events = Events::with_capacity(1024);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut scratch = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    while !stop.load(Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(100))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            panic!("epoll_wait: {e}");
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut sock, _)) => {
                            let _ = sock.set_nodelay(true);
                            let token = next;
                            next += 1;
                            poll.registry()
                                .register(
                                    &mut sock,
                                    Token(token),
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                                .expect("register connection");
                            stats.accepted.fetch_add(1, Relaxed);
                            stats.open.fetch_add(1, Relaxed);
                            conns.insert(
                                token,
                                Conn {
                                    sock,
                                    hdr: [0; HEADER_LEN],
                                    hdr_len: 0,
                                    expect: None,
                                    close_after: None,
                                    received: 0,
                                    out: Vec::new(),
                                    out_pos: 0,
                                    eof: false,
                                    closing: false,
                                    bad: false,
                                },
                            );
                            // Edge-triggered: bytes may already be waiting.
                            let c = conns.get_mut(&token).unwrap();
                            if drive(c, &mut scratch, &mut want, stats) {
                                close(&mut poll, &mut conns, token, stats);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // EMFILE and the like: retried at the next readiness.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let token = event.token().0;
            let Some(c) = conns.get_mut(&token) else {
                continue;
            };
            if drive(c, &mut scratch, &mut want, stats) {
                close(&mut poll, &mut conns, token, stats);
            }
        }
    }
}

fn close(poll: &mut Poll, conns: &mut HashMap<usize, Conn>, token: usize, stats: &BackendStats) {
    if let Some(mut c) = conns.remove(&token) {
        let _ = poll.registry().deregister(&mut c.sock);
        stats.open.fetch_sub(1, Relaxed);
    }
}

/// Moves one connection as far as it can go; true when it is finished.
fn drive(c: &mut Conn, scratch: &mut [u8], want: &mut [u8], stats: &BackendStats) -> bool {
    loop {
        while c.out_pos < c.out.len() {
            match c.sock.write(&c.out[c.out_pos..]) {
                Ok(0) => {
                    stats.errors.fetch_add(1, Relaxed);
                    return true;
                }
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    stats.errors.fetch_add(1, Relaxed);
                    return true;
                }
            }
        }
        c.out.clear();
        c.out_pos = 0;
        if c.closing {
            stats.closed_by_backend.fetch_add(1, Relaxed);
            let _ = c.sock.shutdown(Shutdown::Write);
            return true;
        }
        if c.eof {
            return true;
        }
        let n = match c.sock.read(scratch) {
            Ok(0) => {
                c.eof = true;
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                stats.errors.fetch_add(1, Relaxed);
                return true;
            }
        };
        let data = &scratch[..n];
        c.out.extend_from_slice(data);
        let mut rest = data;
        if c.hdr_len < HEADER_LEN {
            let k = (HEADER_LEN - c.hdr_len).min(rest.len());
            c.hdr[c.hdr_len..c.hdr_len + k].copy_from_slice(&rest[..k]);
            c.hdr_len += k;
            rest = &rest[k..];
            if c.hdr_len == HEADER_LEN {
                if &c.hdr[..4] != MAGIC {
                    stats.bad_headers.fetch_add(1, Relaxed);
                    c.bad = true;
                } else {
                    let flags = u32::from_le_bytes(c.hdr[4..8].try_into().unwrap());
                    let seed = u64::from_le_bytes(c.hdr[8..16].try_into().unwrap());
                    let after = u64::from_le_bytes(c.hdr[16..24].try_into().unwrap());
                    c.expect = Some(ByteStream::new(seed));
                    c.close_after = (flags & FLAG_BACKEND_CLOSES != 0).then_some(after);
                }
            }
        }
        if rest.is_empty() || c.bad {
            continue;
        }
        let mut take = rest.len() as u64;
        if let Some(limit) = c.close_after {
            let room = limit.saturating_sub(c.received);
            if take > room {
                stats.excess_bytes.fetch_add(take - room, Relaxed);
                take = room;
            }
        }
        let rest = &rest[..take as usize];
        if let Some(expect) = c.expect.as_mut() {
            let w = &mut want[..rest.len()];
            expect.fill(w);
            let bad = mismatches(rest, w);
            if bad > 0 {
                stats.corrupt_bytes.fetch_add(bad, Relaxed);
            }
        }
        c.received += take;
        stats.bytes.fetch_add(take, Relaxed);
        if c.close_after.is_some_and(|limit| c.received >= limit) {
            c.closing = true;
        }
    }
}

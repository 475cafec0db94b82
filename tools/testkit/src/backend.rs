//! The destinations the server dials, run in the test process: each accepted connection
//! gets its own thread. Echoing, capturing (the test gets the socket), counting,
//! flooding, and recording (bytes and checksum per connection, for the Go peer's streams).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::rng::pattern;
use crate::server::WAIT;
use crate::sock::wait_until;

/// A backend that echoes every connection until EOF, then closes.
pub fn echo_backend() -> SocketAddr {
    backend(|mut stream| {
        let mut buf = [0u8; 65536];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = stream.shutdown(Shutdown::Write);
    })
}

/// A backend that runs `serve` on each accepted connection in its own thread.
pub fn backend<F>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let serve = Arc::clone(&serve);
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// A backend that hands each accepted connection to the test through a channel.
pub fn capture_backend() -> (SocketAddr, std::sync::mpsc::Receiver<TcpStream>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let addr = backend(move |stream| {
        let _ = tx.lock().unwrap().send(stream);
    });
    (addr, rx)
}

/// The next connection a [`capture_backend`] accepted, within [`WAIT`], with the [`WAIT`]
/// read timeout set. Panics if the server dialed none.
pub fn next_captured(accepted: &mpsc::Receiver<TcpStream>) -> TcpStream {
    let stream = accepted
        .recv_timeout(WAIT)
        .expect("the server dialed the capture backend");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// An echo backend that counts the connections it accepted.
pub fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    let addr = backend(move |mut stream| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 65536];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    (addr, count)
}

/// A backend that writes as fast as it can until its writes stall (or `limit` bytes are
/// out), then hands the count and
/// its connection to the test.
pub fn flooding_backend(limit: usize) -> (SocketAddr, mpsc::Receiver<(usize, TcpStream)>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = backend(move |mut stream| {
        let chunk = pattern(64 * 1024, 3);
        let written = crate::sock::push_until_blocked(&mut stream, &chunk, limit);
        let _ = tx.lock().unwrap().send((written, stream));
    });
    (addr, rx)
}

/// The FNV-1a offset basis: the hash of nothing.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a of `bytes`, continuing from `hash`.
pub fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// What one backend connection saw.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    /// Bytes received from the server.
    pub received: u64,
    /// FNV-1a of those bytes.
    pub hash: u64,
    /// The server closed its side (read returned 0).
    pub eof: bool,
    /// The server reset the connection (a socket closed with unread bytes does that).
    pub reset: bool,
    /// A read failed otherwise.
    pub error: Option<String>,
}

impl ConnRecord {
    /// Adds the record of a new connection to `conns`; its index.
    fn open(conns: &Mutex<Vec<ConnRecord>>) -> usize {
        let mut conns = conns.lock().unwrap();
        conns.push(ConnRecord {
            received: 0,
            hash: FNV_OFFSET,
            eof: false,
            reset: false,
            error: None,
        });
        conns.len() - 1
    }

    /// Reads once from connection `idx`'s `stream` into `buf` and records what came
    /// (bytes and checksum) or how the connection ended; the byte count, `None` once
    /// it has ended.
    fn read(
        conns: &Mutex<Vec<ConnRecord>>,
        idx: usize,
        stream: &mut TcpStream,
        buf: &mut [u8],
    ) -> Option<usize> {
        let result = stream.read(buf);
        let mut conns = conns.lock().unwrap();
        let rec = &mut conns[idx];
        match result {
            Ok(0) => {
                rec.eof = true;
                None
            }
            Ok(n) => {
                rec.received += n as u64;
                rec.hash = fnv(rec.hash, &buf[..n]);
                Some(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                rec.reset = true;
                None
            }
            Err(e) => {
                rec.error = Some(format!("read: {e}"));
                None
            }
        }
    }

    /// Whether the server has closed this connection (in any way).
    pub fn closed(&self) -> bool {
        self.eof || self.reset || self.error.is_some()
    }
}

/// An echo backend that records every connection; with `close_first_after`, the first
/// connection echoes that many bytes, then closes its sending side (and keeps reading).
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    /// One record per connection, in accept order, updated as bytes arrive.
    pub conns: Arc<Mutex<Vec<ConnRecord>>>,
}

impl Recorder {
    /// Starts a recording echo backend (see [`Recorder`]).
    pub fn new(close_first_after: Option<u64>) -> Recorder {
        let conns = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&conns);
        let addr = backend(move |mut stream| {
            let idx = ConnRecord::open(&shared);
            let limit = if idx == 0 { close_first_after } else { None };
            let mut echoed = 0u64;
            let mut sending = true;
            let mut buf = vec![0u8; 65536];
            while let Some(n) = ConnRecord::read(&shared, idx, &mut stream, &mut buf) {
                if !sending {
                    continue;
                }
                let k = limit.map_or(n as u64, |l| (l - echoed).min(n as u64));
                // The server may close (a stream the client ended) while we echo: then
                // keep reading, to record all that arrived.
                if stream.write_all(&buf[..k as usize]).is_err() {
                    sending = false;
                    continue;
                }
                echoed += k;
                if limit == Some(echoed) {
                    let _ = stream.shutdown(Shutdown::Write);
                    sending = false;
                }
            }
            if sending {
                let _ = stream.shutdown(Shutdown::Write);
            }
        });
        Recorder { addr, conns }
    }

    /// A backend that sends all the time (junk, as fast as it can) and reads slowly,
    /// recording what it reads; it closes once it has read EOF. When the client's FIN
    /// comes, bytes still wait in the server's socket, and unread bytes from dst wait in
    /// it too: a server that closed then would reset the connection and lose the former.
    pub fn flooding() -> Recorder {
        let conns = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&conns);
        let addr = backend(move |mut stream| {
            let idx = ConnRecord::open(&shared);
            let done = Arc::new(AtomicBool::new(false));
            let flood = {
                let mut out = stream.try_clone().unwrap();
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    let junk = vec![0x5au8; 65536];
                    while !done.load(Ordering::Relaxed) && out.write_all(&junk).is_ok() {}
                })
            };
            let mut buf = vec![0u8; 16384];
            loop {
                std::thread::sleep(Duration::from_millis(1));
                if ConnRecord::read(&shared, idx, &mut stream, &mut buf).is_none() {
                    break;
                }
            }
            done.store(true, Ordering::Relaxed);
            let _ = stream.shutdown(Shutdown::Both);
            let _ = flood.join();
        });
        Recorder { addr, conns }
    }

    /// A backend that records what it reads: nothing for 300 ms, then 16 KiB a
    /// millisecond through a small receive buffer. The server's socket to it fills (its
    /// send buffer grows to a few MiB on loopback, so send more than that), and then its
    /// writes are cut short and the rest queued, again and again. It closes once it has
    /// read EOF.
    pub fn trickling() -> Recorder {
        let conns = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&conns);
        let addr = backend(move |mut stream| {
            set_receive_buffer(&stream, 32 * 1024);
            let idx = ConnRecord::open(&shared);
            let mut buf = vec![0u8; 16 * 1024];
            // First let the server's socket fill up.
            std::thread::sleep(Duration::from_millis(300));
            while ConnRecord::read(&shared, idx, &mut stream, &mut buf).is_some() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = stream.shutdown(Shutdown::Both);
        });
        Recorder { addr, conns }
    }

    /// The records as they are now.
    pub fn snapshot(&self) -> Vec<ConnRecord> {
        self.conns.lock().unwrap().clone()
    }

    /// Waits until exactly `n` connections came and the server closed every one of them
    /// (each dst is closed when its stream ends); returns them.
    pub fn wait_all_closed(&self, n: usize) -> Vec<ConnRecord> {
        let conns = wait_until("every dst connection closed by the server", || {
            let conns = self.snapshot();
            let done = conns.len() >= n && conns.iter().all(ConnRecord::closed);
            done.then_some(conns)
        });
        assert_eq!(conns.len(), n, "dst connections: {conns:?}");
        for c in &conns {
            assert!(c.error.is_none(), "dst connection failed: {c:?}");
        }
        conns
    }
}

/// Sets SO_RCVBUF on `stream` (the kernel doubles it, and keeps a floor).
fn set_receive_buffer(stream: &TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on an open socket with a value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
}

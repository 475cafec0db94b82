//! Raw sockets, as misbehaving peers use them: reading until the other side closes,
//! pushing until it stops reading, trickling a byte at a time, resetting instead of
//! closing; and addresses that refuse, hang or are free. Nothing here knows HTTP,
//! WebSocket or smux.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::server::WAIT;

/// A plain TCP connection to `addr` with the [`WAIT`] read timeout and no Nagle.
pub fn raw(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// At most 300 bytes of `bytes` as text, for a failure message.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
}

/// Whether a read error means "nothing yet" rather than "closed".
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads until the peer closes (EOF, reset, or TLS ending without close_notify) and
/// returns what came first. Panics if the connection is still open at the read timeout.
pub fn read_to_close<S: Read>(s: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => panic!(
                "connection still open at the read timeout; {} bytes came: {:?}",
                got.len(),
                lossy(&got)
            ),
            Err(_) => return got,
        }
    }
}

/// How the peer ended a connection that [`read_to_ending`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// A FIN: the peer closed it cleanly.
    Fin,
    /// An RST: the peer aborted it.
    Reset,
}

/// Reads `s` to its end: the bytes, and whether it ended with a FIN or an RST (what tells a
/// `dst` that the server closed cleanly from one it aborted). Panics on any other error,
/// the read timeout included.
pub fn read_to_ending<S: Read>(s: &mut S) -> (Vec<u8>, Ending) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ending::Fin),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (got, Ending::Reset),
            Err(e) => panic!(
                "read failed: {e} after {} bytes: {:?}",
                got.len(),
                lossy(&got)
            ),
        }
    }
}

/// Asserts the server closes `s` within `bound`; returns what it sent before.
pub fn expect_closed<S: Read>(s: &mut S, bound: Duration) -> Vec<u8> {
    let start = Instant::now();
    let got = read_to_close(s);
    let took = start.elapsed();
    assert!(took < bound, "closed only after {took:?}");
    got
}

/// Closes with a reset (SO_LINGER 0), as a crashing peer does.
pub fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor we own, with a fully initialised linger struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(stream);
}

/// Write timeout for pushing: short, so a blocked write returns quickly to be counted.
pub const WRITE_POLL: Duration = Duration::from_millis(200);
/// A push has stalled when less than [`STALL_BYTES`] got out in this long.
pub const STALL_WINDOW: Duration = Duration::from_secs(1);
/// See [`STALL_WINDOW`].
pub const STALL_BYTES: usize = 1 << 20;

/// Writes `chunk` over and over (it must be whole frames, so repeats are a valid stream)
/// until `limit` bytes are out or the peer pushes back: a whole [`STALL_WINDOW`] in which
/// less than [`STALL_BYTES`] got out. Sets the write timeout to [`WRITE_POLL`]. Returns the
/// bytes written; a write that fails fails the test.
pub fn push_until_blocked(s: &mut TcpStream, chunk: &[u8], limit: usize) -> usize {
    match push(s, chunk, limit) {
        (sent, None) => sent,
        (sent, Some(e)) => panic!("write failed after {sent} bytes: {e}"),
    }
}

/// [`push_until_blocked`], but a failed write (the server closed) also ends the push.
pub fn push(s: &mut TcpStream, chunk: &[u8], limit: usize) -> (usize, Option<io::Error>) {
    s.set_write_timeout(Some(WRITE_POLL)).unwrap();
    let mut sent = 0;
    let (mut window_start, mut window_sent) = (Instant::now(), 0);
    while sent < limit {
        let at = sent % chunk.len();
        match s.write(&chunk[at..]) {
            Ok(n) => sent += n,
            Err(e) if is_timeout(&e) => {}
            Err(e) => return (sent, Some(e)),
        }
        if window_start.elapsed() >= STALL_WINDOW {
            if sent - window_sent < STALL_BYTES {
                break;
            }
            (window_start, window_sent) = (Instant::now(), sent);
        }
    }
    (sent, None)
}

/// Sends `bytes` one at a time (cycling), each followed by a read that waits for the socket's
/// read timeout (which sets the pace), until the server closes the connection; returns how
/// long after `start` that was, and what the server sent.
pub fn trickle_until_closed<S: Read + Write>(
    s: &mut S,
    bytes: &[u8],
    start: Instant,
) -> (Duration, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut next = bytes.iter().cycle();
    loop {
        let byte = [*next.next().unwrap()];
        if s.write_all(&byte).and_then(|_| s.flush()).is_err() {
            return (start.elapsed(), got);
        }
        match s.read(&mut buf) {
            Ok(0) => return (start.elapsed(), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (start.elapsed(), got),
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never closed; got {:?}",
            lossy(&got)
        );
    }
}

/// Asserts `took` lies in `low..high`, naming `what`.
pub fn within(took: Duration, (low, high): (Duration, Duration), what: &str) {
    assert!(
        took >= low && took < high,
        "{what}: took {took:?}, expected {low:?}..{high:?}"
    );
}

/// A loopback address nothing listens on.
pub fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A loopback port that was free a moment ago (for programs that cannot report theirs).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 10 ms until it gives a value, for at most [`WAIT`].
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback TCP socket that is bound but not listening: connections to it are refused
/// until [`listen`] turns it into a listener, on the same port.
pub fn bound_not_listening() -> (OwnedFd, SocketAddr) {
    // SAFETY: plain socket calls on a socket we own, with a zeroed sockaddr_in of the
    // right size.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(raw);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let sa_ptr = &mut sa as *mut libc::sockaddr_in as *mut libc::sockaddr;
        assert_eq!(libc::bind(fd.as_raw_fd(), sa_ptr, len), 0, "bind");
        assert_eq!(libc::getsockname(fd.as_raw_fd(), sa_ptr, &mut len), 0);
        let port = u16::from_be(sa.sin_port);
        (fd, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }
}

/// Makes a socket from [`bound_not_listening`] listen, on the port it has.
pub fn listen(fd: OwnedFd) -> TcpListener {
    // SAFETY: listen(2) on a bound socket we own.
    let rc = unsafe { libc::listen(fd.as_raw_fd(), 128) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    TcpListener::from(fd)
}

/// A loopback listener whose accept queue is full, so that a connect to it hangs (its SYNs
/// are dropped): a black hole without leaving loopback.
pub struct BlackHole {
    /// Where connections hang.
    pub addr: SocketAddr,
    /// The listener that never accepts.
    _listener: TcpListener,
    /// The connections that filled its accept queue.
    _fillers: Vec<TcpStream>,
}

/// A [`BlackHole`] on loopback.
pub fn black_hole() -> BlackHole {
    // SAFETY: plain socket calls on a descriptor owned by the TcpListener from the start;
    // the sockaddr is fully initialised and its size passed exactly.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let listener = TcpListener::from_raw_fd(fd);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::bind(
            fd,
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "bind");
        assert_eq!(libc::listen(fd, 0), 0, "listen");
        listener
    };
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => {
                fillers.push(s);
                assert!(fillers.len() < 64, "the accept queue never filled");
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => break,
            Err(e) => panic!("filling the accept queue: {e}"),
        }
    }
    BlackHole {
        addr,
        _listener: listener,
        _fillers: fillers,
    }
}

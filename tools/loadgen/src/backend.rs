//! The backend every relay under test forwards to (`loadgen sink`), and the tiny protocol the
//! load generator speaks to it through the relay.
//!
//! A connection starts with a 9-byte request: a command byte and a `u64` LE count.
//! - `U n`: upload: the sink reads and discards `n` bytes, then answers one byte (`ACK`), so
//!   the client knows every byte went through the relay.
//! - `D n`: download: the sink writes `n` bytes as fast as the relay takes them.
//! - `E 0`: echo: everything read is written back.
//!
//! After that the sink waits for the other side to close. One mio event loop per thread;
//! all loops accept from every listening port (a port per group of users lets a relay open
//! more than the ~28,000 connections one source address can open to one destination).

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

pub const REQUEST_LEN: usize = 9;
pub const ACK: u8 = 0x06;

/// The request that starts a backend connection.
pub fn request(cmd: u8, count: u64) -> [u8; REQUEST_LEN] {
    let mut req = [0u8; REQUEST_LEN];
    req[0] = cmd;
    req[1..].copy_from_slice(&count.to_le_bytes());
    req
}

/// What a backend connection is doing.
enum State {
    /// Reading the 9-byte request.
    Request { buf: [u8; REQUEST_LEN], got: usize },
    /// Discarding this many more bytes, then acknowledging.
    Upload { left: u64 },
    /// Writing this many more bytes.
    Download { left: u64 },
    /// Writing back what comes in; `pending` is what the last write could not take.
    Echo { pending: Vec<u8> },
    /// Done with its work; waiting for the peer to close.
    Linger,
}

struct Conn {
    stream: TcpStream,
    state: State,
}

/// Largest read or write of one call.
const CHUNK: usize = 256 * 1024;

/// Runs the sink with `threads` event loops over `listeners` until the process is killed.
pub fn run(listeners: Vec<std::net::TcpListener>, threads: usize) -> io::Result<()> {
    for l in &listeners {
        l.set_nonblocking(true)?;
    }
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let mine = listeners
            .iter()
            .map(|l| l.try_clone().map(TcpListener::from_std))
            .collect::<io::Result<Vec<_>>>()?;
        handles.push(std::thread::spawn(move || event_loop(mine)));
    }
    for h in handles {
        h.join()
            .map_err(|_| io::Error::other("sink thread panicked"))??;
    }
    Ok(())
}

/// Binds one listener with a deep backlog.
pub fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

fn event_loop(mut listeners: Vec<TcpListener>) -> io::Result<()> {
    let mut poll = Poll::new()?;
    for (i, l) in listeners.iter_mut().enumerate() {
        poll.registry().register(l, Token(i), Interest::READABLE)?;
    }
    let first_conn = listeners.len();
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = first_conn;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; CHUNK];
    let zeros = vec![0x5au8; CHUNK];
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            let Token(t) = event.token();
            if t < first_conn {
                loop {
                    match listeners[t].accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let token = next;
                            next += 1;
                            poll.registry().register(
                                &mut stream,
                                Token(token),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            let state = State::Request {
                                buf: [0; REQUEST_LEN],
                                got: 0,
                            };
                            conns.insert(token, Conn { stream, state });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        // Out of descriptors or a connection reset before accept: go on.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let done = match conns.get_mut(&t) {
                Some(conn) => drive(conn, &mut scratch, &zeros),
                None => continue,
            };
            if done {
                if let Some(mut conn) = conns.remove(&t) {
                    let _ = poll.registry().deregister(&mut conn.stream);
                }
            }
        }
    }
}

/// Makes all the progress a connection allows; true when it should be closed.
fn drive(conn: &mut Conn, scratch: &mut [u8], zeros: &[u8]) -> bool {
    loop {
        let progressed = match &mut conn.state {
            State::Request { buf, got } => match conn.stream.read(&mut buf[*got..]) {
                Ok(0) => return true,
                Ok(n) => {
                    *got += n;
                    if *got == REQUEST_LEN {
                        let count = u64::from_le_bytes(buf[1..].try_into().unwrap_or_default());
                        conn.state = match buf[0] {
                            b'U' => State::Upload { left: count },
                            b'D' => State::Download { left: count },
                            b'E' => State::Echo {
                                pending: Vec::new(),
                            },
                            _ => return true,
                        };
                    }
                    true
                }
                Err(e) => return e.kind() != ErrorKind::WouldBlock,
            },
            State::Upload { left } => {
                if *left == 0 {
                    match conn.stream.write(&[ACK]) {
                        Ok(0) => return true,
                        Ok(_) => {
                            conn.state = State::Linger;
                            true
                        }
                        Err(e) => return e.kind() != ErrorKind::WouldBlock,
                    }
                } else {
                    let want = (*left).min(scratch.len() as u64) as usize;
                    match conn.stream.read(&mut scratch[..want]) {
                        Ok(0) => return true,
                        Ok(n) => {
                            *left -= n as u64;
                            true
                        }
                        Err(e) => return e.kind() != ErrorKind::WouldBlock,
                    }
                }
            }
            State::Download { left } => {
                if *left == 0 {
                    conn.state = State::Linger;
                    true
                } else {
                    let want = (*left).min(zeros.len() as u64) as usize;
                    match conn.stream.write(&zeros[..want]) {
                        Ok(n) => {
                            *left -= n as u64;
                            true
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            // Notice a peer that went away while we could not write.
                            return linger_check(&mut conn.stream, scratch);
                        }
                        Err(_) => return true,
                    }
                }
            }
            State::Echo { pending } => {
                if !pending.is_empty() {
                    match conn.stream.write(pending) {
                        Ok(n) => {
                            pending.drain(..n);
                            true
                        }
                        Err(e) => return e.kind() != ErrorKind::WouldBlock,
                    }
                } else {
                    match conn.stream.read(scratch) {
                        Ok(0) => return true,
                        Ok(n) => {
                            pending.extend_from_slice(&scratch[..n]);
                            true
                        }
                        Err(e) => return e.kind() != ErrorKind::WouldBlock,
                    }
                }
            }
            State::Linger => return linger_check(&mut conn.stream, scratch),
        };
        if !progressed {
            return false;
        }
    }
}

/// Reads and drops whatever arrives; true once the peer has closed.
fn linger_check(stream: &mut TcpStream, scratch: &mut [u8]) -> bool {
    loop {
        match stream.read(scratch) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() != ErrorKind::WouldBlock,
        }
    }
}

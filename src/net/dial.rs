//! Connecting to a user's destination (or the fallback site): `IP:PORT` or `HOST:PORT`,
//! names resolved off the worker thread, within a bound, with Nagle off; and ending such a
//! connection with a reset when the client's side broke.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use monoio::net::TcpStream;

use crate::net::transport::{self, ReadHalf, WriteHalf};

/// Bound on dialing a destination, name resolution included.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `dst` (`IP:PORT` or `HOST:PORT`) within [`DIAL_TIMEOUT`]. Names are
/// resolved on the runtime's blocking pool so the worker never blocks.
pub(crate) async fn dial(dst: &str) -> io::Result<TcpStream> {
    match monoio::time::timeout(DIAL_TIMEOUT, dial_unbounded(dst)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "dial timed out")),
    }
}

async fn dial_unbounded(dst: &str) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = match dst.parse::<SocketAddr>() {
        Ok(addr) => vec![addr],
        Err(_) => {
            let name = dst.to_string();
            monoio::spawn_blocking(move || name.to_socket_addrs().map(Vec::from_iter))
                .await
                .map_err(|_| io::Error::other("resolver task failed"))??
        }
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "name resolved to no address");
    for addr in addrs {
        match TcpStream::connect_addr(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Splits a connection to `dst`, and gives its descriptor for [`reset_on_close`]. (In one
/// call: borrowing the stream for its descriptor in an async body makes the future keep a
/// second copy of the stream for the whole tunnel.)
pub(crate) fn split_dst(dst: TcpStream) -> (RawFd, ReadHalf<TcpStream>, WriteHalf<TcpStream>) {
    let fd = dst.as_raw_fd();
    let (read, write) = transport::split(dst);
    (fd, read, write)
}

/// Makes closing `fd` (a connection to `dst`) reset it instead of ending it cleanly:
/// SO_LINGER with a zero timeout. For when the client's side broke (a TLS truncation, a
/// forged record, a fatal alert): a backend must not take a cut stream for a whole one.
pub(crate) fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket the caller keeps open, with a value of the size
    // given. A failure leaves a plain close, which is all we could do anyway.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

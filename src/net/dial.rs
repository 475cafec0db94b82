//! Connecting to a user's destination (or the fallback site): `IP:PORT` or `HOST:PORT`,
//! names resolved off the worker thread, within a bound, with Nagle off.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use monoio::net::TcpStream;

/// Bound on dialing a destination, name resolution included.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `dst` (`IP:PORT` or `HOST:PORT`) within [`DIAL_TIMEOUT`]. Names are
/// resolved on the runtime's blocking pool so the worker never blocks.
pub async fn dial(dst: &str) -> io::Result<TcpStream> {
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

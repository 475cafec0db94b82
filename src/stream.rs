//! The data port's transport: a TCP or unix-socket connection behind one type, so the
//! rest of the server (TLS, heads, tunnels) is written once, and the listener that yields
//! them. Bytes that arrived before the stream reached its user (after a PROXY protocol
//! header) are replayed first. Dispatch is one branch per read or write.

use std::fmt;
use std::io::{self, Cursor};
use std::net::SocketAddr;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, PrefixedReadIo, Split};
use monoio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use monoio::BufResult;

/// Who is on the other end, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client, or the client a PROXY header named.
    Ip(SocketAddr),
    /// A unix-socket client (a local reverse proxy) that sent no PROXY header.
    Local,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(addr) => addr.fmt(f),
            Peer::Local => f.write_str("unix"),
        }
    }
}

/// A data connection over TCP or a unix socket.
pub enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A data connection with any bytes already read in front of it.
pub type DataStream = PrefixedReadIo<Transport, Cursor<Vec<u8>>>;

/// Wraps a transport with bytes to replay first (empty for none).
pub fn data_stream(transport: Transport, early: Vec<u8>) -> DataStream {
    PrefixedReadIo::new(transport, Cursor::new(early))
}

// SAFETY: both variants are `Split` (their reads and writes are independent).
unsafe impl Split for Transport {}

impl AsyncReadRent for Transport {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Transport::Tcp(s) => s.read(buf).await,
            Transport::Unix(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Transport::Tcp(s) => s.readv(buf).await,
            Transport::Unix(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for Transport {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Transport::Tcp(s) => s.write(buf).await,
            Transport::Unix(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Transport::Tcp(s) => s.writev(buf).await,
            Transport::Unix(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.flush().await,
            Transport::Unix(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.shutdown().await,
            Transport::Unix(s) => s.shutdown().await,
        }
    }
}

/// A worker's data listener.
pub enum DataListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl DataListener {
    pub async fn accept(&self) -> io::Result<(Transport, Peer)> {
        match self {
            DataListener::Tcp(l) => {
                let (stream, addr) = l.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok((Transport::Tcp(stream), Peer::Ip(addr)))
            }
            DataListener::Unix(l) => {
                let (stream, _) = l.accept().await?;
                Ok((Transport::Unix(stream), Peer::Local))
            }
        }
    }
}

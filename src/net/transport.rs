//! The data port's transport: a TCP or unix-socket connection behind one type, so the
//! rest of the server (TLS, heads, tunnels) is written once, and the listener that yields
//! them. Bytes that arrived before the stream reached its user (after a PROXY protocol
//! header) are replayed first. Dispatch is one branch per read or write.
//!
//! Also here: read and write halves that can wait for readability without a buffer
//! ([`Readiness`]). A rent-based read (io_uring) owns its buffer until data comes, so an
//! idle tunnel would pin one buffer per direction; instead, once a read has drained the
//! socket, the next one first waits for readiness with no buffer at all.

use std::cell::UnsafeCell;
use std::fmt;
use std::io::{self, Cursor};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, PrefixedReadIo, Split};
use monoio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use monoio::BufResult;

/// Who is on the other end, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// A TCP client, or the client a PROXY header named.
    Ip(SocketAddr),
    /// A unix-socket client (a local reverse proxy) that sent no PROXY header.
    Local,
}

impl Peer {
    /// The IP address and port, if there is one.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        match self {
            Peer::Ip(addr) => Some(*addr),
            Peer::Local => None,
        }
    }
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
pub(crate) enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A data connection with any bytes already read in front of it (for rustls' TLS 1.2
/// path, which needs monoio's own `Split`).
pub(crate) type DataStream = PrefixedReadIo<Transport, Cursor<Vec<u8>>>;

/// Wraps a transport with bytes to replay first (empty for none).
pub(crate) fn data_stream(transport: Transport, early: Vec<u8>) -> DataStream {
    PrefixedReadIo::new(transport, Cursor::new(early))
}

// SAFETY: both variants are `Split` (their reads and writes are independent).
unsafe impl Split for Transport {}

impl AsRawFd for Transport {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Transport::Tcp(s) => s.as_raw_fd(),
            Transport::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// A read side that can wait until data is there without holding a buffer. (Not
/// "relaxed": with epoll, monoio's cached readiness would report a drained socket as
/// readable, and the read after it would pin a buffer after all.)
pub(crate) trait Readiness {
    /// Completes when a read would find data (or EOF, or an error). May complete early:
    /// the read that follows then simply waits, with its buffer.
    fn wait_readable(&self) -> impl std::future::Future<Output = io::Result<()>>;

    /// Whether the last read left the socket empty, when the reader knows better than
    /// the caller can tell from the byte count (a TLS reader returns less plaintext than
    /// it read ciphertext). `None`: judge by whether the read filled the buffer.
    fn drained(&self) -> Option<bool> {
        None
    }
}

impl Readiness for TcpStream {
    async fn wait_readable(&self) -> io::Result<()> {
        self.readable(false).await
    }
}

impl Readiness for UnixStream {
    async fn wait_readable(&self) -> io::Result<()> {
        self.readable(false).await
    }
}

impl Readiness for Transport {
    async fn wait_readable(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.readable(false).await,
            Transport::Unix(s) => s.readable(false).await,
        }
    }
}

/// rustls' TLS 1.2 path keeps its own buffers; there is nothing to gain by waiting.
impl<T> Readiness for monoio::io::OwnedReadHalf<T> {
    async fn wait_readable(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The read half of a stream split by [`split`].
pub(crate) struct ReadHalf<T>(Rc<UnsafeCell<T>>);
/// The write half of a stream split by [`split`].
pub(crate) struct WriteHalf<T>(Rc<UnsafeCell<T>>);

/// Splits a stream whose reads and writes are independent (TCP, unix sockets) into
/// halves that can be used at once, like monoio's own split, but whose read half can
/// also wait for readability.
pub(crate) fn split<T: Split>(stream: T) -> (ReadHalf<T>, WriteHalf<T>) {
    let shared = Rc::new(UnsafeCell::new(stream));
    (ReadHalf(Rc::clone(&shared)), WriteHalf(shared))
}

impl<T: AsyncReadRent> AsyncReadRent for ReadHalf<T> {
    async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: `T: Split` promises reads and writes do not interfere; only this half
        // reads, only the other writes, and both live on one thread (Rc).
        let stream = unsafe { &mut *self.0.get() };
        stream.read(buf).await
    }

    async fn readv<B: IoVecBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: as in `read`.
        let stream = unsafe { &mut *self.0.get() };
        stream.readv(buf).await
    }
}

impl<T: Readiness> Readiness for ReadHalf<T> {
    async fn wait_readable(&self) -> io::Result<()> {
        // SAFETY: readiness only looks at the descriptor, which both halves share.
        let stream = unsafe { &*self.0.get() };
        stream.wait_readable().await
    }
}

impl<T: AsyncWriteRent> AsyncWriteRent for WriteHalf<T> {
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: as in `ReadHalf::read`.
        let stream = unsafe { &mut *self.0.get() };
        stream.write(buf).await
    }

    async fn writev<B: IoVecBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: as in `ReadHalf::read`.
        let stream = unsafe { &mut *self.0.get() };
        stream.writev(buf).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        // SAFETY: as in `ReadHalf::read`.
        let stream = unsafe { &mut *self.0.get() };
        stream.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        // SAFETY: as in `ReadHalf::read`.
        let stream = unsafe { &mut *self.0.get() };
        stream.shutdown().await
    }
}

/// A plain (no TLS) data connection with bytes already read in front of it; its halves
/// can wait for readability.
pub(crate) struct PlainStream {
    early: Cursor<Vec<u8>>,
    transport: Transport,
}

impl PlainStream {
    pub(crate) fn new(transport: Transport, early: Vec<u8>) -> Self {
        Self {
            early: Cursor::new(early),
            transport,
        }
    }
}

/// Copies replayed bytes into `buf`; `None` once there are none left.
fn replay<B: IoBufMut>(early: &mut Cursor<Vec<u8>>, buf: &mut B) -> Option<usize> {
    let start = early.position() as usize;
    let rest = &early.get_ref()[start..];
    if rest.is_empty() {
        return None;
    }
    let n = fill_spare(buf, rest);
    early.set_position((start + n) as u64);
    if start + n == early.get_ref().len() {
        *early = Cursor::new(Vec::new());
    }
    Some(n)
}

/// Copies as much of `src` as fits into `buf`'s room (which may be uninitialised: it is
/// written through a raw pointer, never read or viewed as `&mut [u8]`), marks it
/// initialised, and returns how many bytes were copied.
pub(crate) fn fill_spare<B: IoBufMut>(buf: &mut B, src: &[u8]) -> usize {
    let n = src.len().min(buf.bytes_total());
    // SAFETY: `write_ptr` is valid for `bytes_total()` bytes of writes, `n` is no more,
    // and `src` is a shared borrow, so it cannot overlap the buffer we hold `&mut` to.
    // Those `n` bytes are initialised by the copy before `set_init` says so.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), buf.write_ptr(), n);
        buf.set_init(n);
    }
    n
}

impl AsyncReadRent for PlainStream {
    async fn read<B: IoBufMut>(&mut self, mut buf: B) -> BufResult<usize, B> {
        if buf.bytes_total() > 0 {
            if let Some(n) = replay(&mut self.early, &mut buf) {
                return (Ok(n), buf);
            }
        }
        self.transport.read(buf).await
    }

    async fn readv<B: IoVecBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        self.transport.readv(buf).await
    }
}

impl AsyncWriteRent for PlainStream {
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        self.transport.write(buf).await
    }

    async fn writev<B: IoVecBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        self.transport.writev(buf).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.transport.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.transport.shutdown().await
    }
}

impl monoio::io::Splitable for PlainStream {
    type OwnedRead = PlainReader;
    type OwnedWrite = WriteHalf<Transport>;

    fn into_split(self) -> (PlainReader, WriteHalf<Transport>) {
        let (read, write) = split(self.transport);
        (
            PlainReader {
                early: self.early,
                inner: read,
            },
            write,
        )
    }
}

/// The read half of a [`PlainStream`].
pub(crate) struct PlainReader {
    early: Cursor<Vec<u8>>,
    inner: ReadHalf<Transport>,
}

impl AsyncReadRent for PlainReader {
    async fn read<B: IoBufMut>(&mut self, mut buf: B) -> BufResult<usize, B> {
        if buf.bytes_total() > 0 {
            if let Some(n) = replay(&mut self.early, &mut buf) {
                return (Ok(n), buf);
            }
        }
        self.inner.read(buf).await
    }

    async fn readv<B: IoVecBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        self.inner.readv(buf).await
    }
}

impl Readiness for PlainReader {
    async fn wait_readable(&self) -> io::Result<()> {
        if self.early.position() < self.early.get_ref().len() as u64 {
            return Ok(());
        }
        self.inner.wait_readable().await
    }
}

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
pub(crate) enum DataListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl DataListener {
    pub(crate) async fn accept(&self) -> io::Result<(Transport, Peer)> {
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

/// Writes what the kernel takes of `bytes` to the socket `fd` now, without
/// waiting: a send with `MSG_DONTWAIT`. Returns how many bytes went, 0 when the socket's
/// buffer is full or the send failed (the caller queues the rest for its ordinary write,
/// which then meets the error, if any, and handles it as always).
///
/// For a writer that need not wait: handing bytes to the kernel here saves a trip through
/// the runtime (and, for a mux stream, copying them into a queue and waking the task that
/// owns the socket). The caller must know that `fd` is open and that no other write to it
/// is in progress.
pub(crate) fn send_now(fd: RawFd, bytes: &[u8]) -> usize {
    // SAFETY: send(2) reads `bytes.len()` bytes from a live slice; `fd` is an open socket
    // (the caller's duty, above). MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE.
    let sent = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(sent).unwrap_or(0)
}

/// Appends to `buf` what the socket `fd` holds now, at most `max` bytes (and no more than
/// `buf`'s spare capacity), without waiting: a recv with `MSG_DONTWAIT`. `None` when
/// there was nothing (or the peer closed, or the read failed: the caller's ordinary read
/// then reports the end or the error, or waits).
///
/// For a reader that expects data (its last read filled the buffer): taking it here saves
/// a trip through the runtime. The caller must know that `fd` is open and that no other
/// read of it is in progress.
pub(crate) fn recv_now(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> Option<usize> {
    let spare = buf.spare_capacity_mut();
    let max = max.min(spare.len());
    // SAFETY: recv(2) writes at most `max` bytes into `buf`'s spare capacity, memory the
    // Vec owns and does not read; `fd` is an open socket (the caller's duty, above).
    let got = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), max, libc::MSG_DONTWAIT) };
    let got = usize::try_from(got).ok().filter(|&n| n > 0)?;
    // SAFETY: the kernel initialised the `got` bytes after the old length.
    unsafe { buf.set_len(buf.len() + got) };
    Some(got)
}

/// Reads at most `max` bytes of `src` into `buf`'s spare capacity, after what it holds:
/// at once with [`recv_now`] when `expect_more` (the last read filled its buffer, so the
/// socket likely has more), else, or when nothing was there, with `src`'s ordinary read,
/// which waits, or reports the end or an error. `fd` is `src`'s socket (as for
/// [`recv_now`]).
pub(crate) async fn read_appending<D: AsyncReadRent>(
    src: &mut D,
    fd: RawFd,
    mut buf: Vec<u8>,
    max: usize,
    expect_more: bool,
) -> (io::Result<usize>, Vec<u8>) {
    if expect_more {
        if let Some(n) = recv_now(fd, &mut buf, max) {
            return (Ok(n), buf);
        }
    }
    let start = buf.len();
    let (result, slice) = src.read(buf.slice_mut(start..start + max)).await;
    (result, slice.into_inner())
}

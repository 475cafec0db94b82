//! The client side of a tunnel: [`ClientReader`] reads the client's frames and yields
//! their payloads in place, [`ClientWriter`] is the one writer of the frames we send.
//!
//! The reader owns one buffer that grows while reads fill it (to a bound) and shrinks
//! when traffic slows, so an idle tunnel holds little; payloads are unmasked in that buffer
//! and handed out as ranges, never copied. Every WebSocket frame the server sends goes
//! through the [`ClientWriter`], whole, one frame at a time.
//!
//! The Go server can panic when two goroutines write to one websocket; here the relay
//! direction, the pong and the close handshake (and, in mux mode, every stream) take turns
//! through an async lock local to the worker. It also remembers what must never happen
//! twice or after a failure: a second close frame, or a write after a write was cut short
//! (a cancelled TLS write leaves the stream unusable, so the writer is then poisoned). It
//! does not decode anything and knows nothing of destinations.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::ops::Range;
use std::task::{Poll, Waker};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::Instant;

use crate::net::transport::Readiness;
use crate::proto::ws::{self, OpCode, ProtocolError};

/// First size of the read buffer: small, so an idle tunnel holds little.
pub(crate) const INITIAL_BUFFER: usize = 4 * 1024;
/// Largest size the client's read buffer grows to while reads keep filling it.
const MAX_BUFFER: usize = 64 * 1024;
/// Largest plaintext of one TLS record (RFC 8446 5.1).
pub(crate) const RECORD: usize = 16 * 1024;
/// The header of a binary frame of 126 to 65535 payload bytes.
pub(crate) const SHORT_FRAME_HEADER: usize = 4;
/// The sizes of reads from `dst` that become binary frames, smallest first: a tunnel
/// starts at the first and moves up one while reads keep filling the buffer. From a
/// record's size up, each size makes a frame (header and payload) of whole TLS records:
/// a 64 KiB read made a frame of 65,546 bytes, four full records and one of 10 bytes,
/// which costs both sides a record for nothing.
pub(crate) const READ_SIZES: [usize; 5] = [
    INITIAL_BUFFER,
    8 * 1024,
    RECORD - SHORT_FRAME_HEADER,
    2 * RECORD - SHORT_FRAME_HEADER,
    4 * RECORD - SHORT_FRAME_HEADER,
];

/// What the client sent next, for the tunnel to act on. Pongs are swallowed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// Payload bytes of a data frame, unmasked, at this range of [`ClientReader::buf`].
    Data(Range<usize>),
    /// A ping; its payload is [`ClientReader::control_payload`].
    Ping,
    /// A close frame with its code, if it had one.
    Close(Option<u16>),
}

/// Why the client's frames ended without a close frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// The client ended its side cleanly: a FIN on a plain connection, close_notify
    /// over TLS.
    Gone,
    /// The connection broke: reset, or over TLS a FIN without close_notify (a cut an
    /// attacker can make), a record that failed authentication, a fatal alert. What it
    /// carried may be incomplete, so `dst` must not be given a clean end.
    Aborted,
    /// The client broke RFC 6455; answer with `close_code()` and end.
    Protocol(ProtocolError),
}

/// Reads and decodes the client's frames.
pub(crate) struct ClientReader<R> {
    /// The client connection's read half.
    inner: R,
    /// Frame decoder state carried across reads.
    decoder: ws::Decoder,
    /// Bytes read from the client; those before `pos` are consumed.
    buf: Vec<u8>,
    pos: usize,
    /// The last read emptied the socket: wait for readiness, bufferless, before the next.
    drained: bool,
    /// Data is flowing: read with a larger buffer.
    flowing: bool,
    /// A control frame found while coalescing data (see [`ClientReader::coalesce`]),
    /// returned by the next call of [`ClientReader::next`].
    pending: Option<Incoming>,
}

impl<R: AsyncReadRent + Readiness> ClientReader<R> {
    /// A reader over `inner`, starting with bytes that arrived with the request head.
    pub(crate) fn new(inner: R, early: Vec<u8>) -> Self {
        let mut buf = early;
        if buf.capacity() < INITIAL_BUFFER {
            buf.reserve_exact(INITIAL_BUFFER - buf.len());
        }
        Self {
            inner,
            decoder: ws::Decoder::new(),
            buf,
            pos: 0,
            drained: false,
            flowing: false,
            pending: None,
        }
    }

    /// The buffer that [`Incoming::Data`] ranges point into. A caller may take it (to
    /// write from it without a copy) and must put it back before the next call.
    pub(crate) fn buf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub(crate) fn buf(&self) -> &[u8] {
        &self.buf
    }

    /// The payload of the last ping.
    pub(crate) fn control_payload(&self) -> &[u8] {
        self.decoder.control_payload()
    }

    /// The next thing the client sent. `activity` is set whenever bytes arrive.
    pub(crate) async fn next(&mut self, activity: &Cell<Instant>) -> Result<Incoming, ReadEnd> {
        if let Some(event) = self.pending.take() {
            return Ok(event);
        }
        loop {
            while self.pos < self.buf.len() {
                let (event, consumed) = self
                    .decoder
                    .decode(&mut self.buf[self.pos..])
                    .map_err(ReadEnd::Protocol)?;
                let base = self.pos;
                self.pos += consumed;
                match event {
                    None => break,
                    Some(ws::Event::Data(range)) => {
                        return Ok(Incoming::Data(base + range.start..base + range.end))
                    }
                    Some(ws::Event::Ping) => return Ok(Incoming::Ping),
                    Some(ws::Event::Pong) => {}
                    Some(ws::Event::Close(code)) => return Ok(Incoming::Close(code)),
                }
            }
            self.refill(activity).await?;
        }
    }

    /// Joins to `range` (the data range [`ClientReader::next`] just returned) the payload
    /// of every further data frame already in the buffer, moving it back over the frame
    /// headers in between, so that one write to `dst` carries what one read brought: a
    /// 64 KiB read of 16 KiB frames was four sends, each with its own trip through the
    /// kernel's network stack, and is one. Decoding stops at the end of the buffered bytes
    /// and at a control frame (kept for the next call of `next`). It also stops at a
    /// protocol error, without consuming anything: the decoder repeats the error to the
    /// next `next`, after the data before it has gone out.
    pub(crate) fn coalesce(&mut self, mut range: Range<usize>) -> Range<usize> {
        while self.pending.is_none() && self.pos < self.buf.len() {
            let Ok((event, consumed)) = self.decoder.decode(&mut self.buf[self.pos..]) else {
                break;
            };
            let base = self.pos;
            self.pos += consumed;
            match event {
                None => break,
                Some(ws::Event::Data(more)) => {
                    let more = base + more.start..base + more.end;
                    let len = more.len();
                    self.buf.copy_within(more, range.end);
                    range.end += len;
                }
                Some(ws::Event::Pong) => {}
                Some(ws::Event::Ping) => self.pending = Some(Incoming::Ping),
                Some(ws::Event::Close(code)) => self.pending = Some(Incoming::Close(code)),
            }
        }
        range
    }

    async fn refill(&mut self, activity: &Cell<Instant>) -> Result<(), ReadEnd> {
        // Keep bytes the decoder did not take at the front.
        let pos = self.pos.min(self.buf.len());
        let kept = self.buf.len() - pos;
        if kept > 0 && pos > 0 {
            self.buf.copy_within(pos.., 0);
        }
        self.buf.truncate(kept);
        self.pos = 0;
        if self.drained && kept == 0 {
            // The last read drained the socket: wait for more without holding a buffer,
            // so an idle tunnel pins none.
            self.buf = Vec::new();
            if self.inner.wait_readable().await.is_err() {
                return Err(ReadEnd::Aborted);
            }
        }
        // While data flows, read in large gulps (fewer reads here, fewer writes to dst);
        // when it trickles, go back to a small buffer.
        let want = if self.flowing {
            (self.buf.capacity() * 2).clamp(INITIAL_BUFFER, MAX_BUFFER)
        } else {
            INITIAL_BUFFER
        };
        if self.buf.capacity() < want {
            self.buf.reserve_exact(want - self.buf.len());
        } else if self.buf.capacity() > want.max(kept) {
            self.buf.shrink_to(want.max(kept));
        }
        let start = self.buf.len();
        let end = self.buf.capacity();
        let buf = std::mem::take(&mut self.buf);
        let (result, slice) = self.inner.read(buf.slice_mut(start..end)).await;
        self.buf = slice.into_inner();
        match result {
            Ok(0) => Err(ReadEnd::Gone),
            Err(_) => Err(ReadEnd::Aborted),
            Ok(n) => {
                activity.set(Instant::now());
                let room = end - start;
                // A TLS reader knows better than the plaintext count whether the socket
                // had more: it read ciphertext.
                self.drained = self.inner.drained().unwrap_or(n < room);
                self.flowing = n > room / 2 || !self.drained;
                Ok(())
            }
        }
    }
}

/// Room kept in front of payload buffers for the largest frame header (10 bytes), so a
/// data frame goes out as one contiguous write with no copy.
pub(crate) const HEADER_ROOM: usize = 10;

/// The write half of a client connection, shared by the tasks of one tunnel.
pub(crate) struct ClientWriter<W> {
    /// The write half, absent while a task is writing with it.
    inner: RefCell<Option<W>>,
    /// Tasks waiting for their turn.
    waiters: RefCell<Vec<Waker>>,
    /// A close frame has been sent: nothing may follow it.
    close_sent: Cell<bool>,
    /// A write was cancelled or failed part-way: the stream is unusable.
    poisoned: Cell<bool>,
}

/// One turn at the writer; gives the write half back when dropped. If the turn is dropped
/// with a write in progress, the writer is poisoned.
struct Turn<'a, W> {
    owner: &'a ClientWriter<W>,
    inner: Option<W>,
    writing: bool,
}

impl<W> Drop for Turn<'_, W> {
    fn drop(&mut self) {
        if self.writing {
            self.owner.poisoned.set(true);
        }
        *self.owner.inner.borrow_mut() = self.inner.take();
        for waker in self.owner.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

impl<W: AsyncWriteRent> ClientWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner: RefCell::new(Some(inner)),
            waiters: RefCell::new(Vec::new()),
            close_sent: Cell::new(false),
            poisoned: Cell::new(false),
        }
    }

    async fn turn(&self) -> Turn<'_, W> {
        poll_fn(|cx| match self.inner.borrow_mut().take() {
            Some(inner) => Poll::Ready(Turn {
                owner: self,
                inner: Some(inner),
                writing: false,
            }),
            None => {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Whether a task is writing right now (a frame may be half-sent).
    pub(crate) fn busy(&self) -> bool {
        self.inner.borrow().is_none()
    }

    /// Whether frames can still be sent.
    pub(crate) fn is_open(&self) -> bool {
        !self.close_sent.get() && !self.poisoned.get()
    }

    /// Writes `buf` as it is (already framed). Returns the buffer for reuse.
    async fn write_raw<T: IoBuf>(&self, buf: T) -> (io::Result<()>, T) {
        let mut turn = self.turn().await;
        if !self.is_open() {
            return (Err(io::ErrorKind::BrokenPipe.into()), buf);
        }
        // `turn.inner` is always Some while the turn is alive.
        let Some(inner) = turn.inner.as_mut() else {
            return (Err(io::ErrorKind::BrokenPipe.into()), buf);
        };
        turn.writing = true;
        let (result, buf) = inner.write_all(buf).await;
        turn.writing = false;
        if result.is_err() {
            self.poisoned.set(true);
        }
        (result.map(|_| ()), buf)
    }

    /// Sends `buf[HEADER_ROOM..]` as one binary frame, writing its header into the room in
    /// front of it. Returns the buffer for reuse.
    pub(crate) async fn send_binary(&self, mut buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let payload_len = buf.len() - HEADER_ROOM;
        let mut header = [0u8; 10];
        let header_len = ws::encode_header(OpCode::Binary, payload_len as u64, &mut header);
        let start = HEADER_ROOM - header_len;
        buf[start..HEADER_ROOM].copy_from_slice(&header[..header_len]);
        let (result, slice) = self.write_raw(buf.slice(start..)).await;
        (result, slice.into_inner())
    }

    /// Sends a small frame (a pong or a short data frame).
    pub(crate) async fn send_small(&self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 10);
        ws::encode_frame(opcode, payload, &mut frame);
        self.write_raw(frame).await.0
    }

    /// Sends a close frame, once; later calls do nothing.
    pub(crate) async fn send_close(&self, code: u16, reason: &str) -> io::Result<()> {
        if !self.is_open() {
            return Ok(());
        }
        let mut frame = Vec::with_capacity(4 + reason.len().min(123));
        ws::encode_close(code, reason, &mut frame);
        let result = self.write_raw(frame).await.0;
        self.close_sent.set(true);
        result
    }

    /// Flushes and closes the connection's write side (TLS close_notify, then FIN), unless
    /// the stream is unusable.
    pub(crate) async fn shutdown(&self) {
        let mut turn = self.turn().await;
        if self.poisoned.get() {
            return;
        }
        if let Some(inner) = turn.inner.as_mut() {
            turn.writing = true;
            let _ = inner.shutdown().await;
            turn.writing = false;
        }
        self.poisoned.set(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that sent nothing beyond the bytes given to the reader up front.
    struct Silent;

    impl AsyncReadRent for Silent {
        async fn read<T: IoBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
            (Ok(0), buf)
        }
        async fn readv<T: monoio::buf::IoVecBufMut>(
            &mut self,
            buf: T,
        ) -> monoio::BufResult<usize, T> {
            (Ok(0), buf)
        }
    }

    impl Readiness for Silent {
        async fn wait_readable(&self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Runs `body` on a runtime of its own.
    fn block_on(body: impl std::future::Future<Output = ()>) {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap()
            .block_on(body)
    }

    /// The next thing the reader gives, which must be data: its range.
    async fn data(reader: &mut ClientReader<Silent>, activity: &Cell<Instant>) -> Range<usize> {
        match reader.next(activity).await {
            Ok(Incoming::Data(range)) => range,
            other => panic!("expected data, got {other:?}"),
        }
    }

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![u8::from(fin) << 7 | opcode, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn coalescing_joins_buffered_data_and_keeps_control_frames_in_order() {
        let mut wire = Vec::new();
        wire.extend(frame(true, 0x2, b"ab"));
        wire.extend(frame(false, 0x1, b"c\xc3")); // a text message, a character split
        wire.extend(frame(true, 0x0, b"\xa9d"));
        wire.extend(frame(true, 0xA, b"pong")); // swallowed
        wire.extend(frame(true, 0x9, b"ping"));
        wire.extend(frame(true, 0x2, b"ef"));
        wire.extend(frame(true, 0x8, &[0x03, 0xE8]));
        let mut reader = ClientReader::new(Silent, wire);
        let activity = Cell::new(Instant::now());
        block_on(async {
            let first = data(&mut reader, &activity).await;
            assert_eq!(&reader.buf()[first.clone()], b"ab");
            let joined = reader.coalesce(first);
            assert_eq!(&reader.buf()[joined], "abc\u{e9}d".as_bytes());
            assert_eq!(reader.next(&activity).await, Ok(Incoming::Ping));
            assert_eq!(reader.control_payload(), b"ping");
            let last = data(&mut reader, &activity).await;
            let last = reader.coalesce(last);
            assert_eq!(&reader.buf()[last], b"ef");
            assert_eq!(
                reader.next(&activity).await,
                Ok(Incoming::Close(Some(1000)))
            );
            assert_eq!(reader.next(&activity).await, Err(ReadEnd::Gone));
        });
    }

    #[test]
    fn coalescing_stops_before_a_protocol_error_and_the_error_follows() {
        let mut wire = frame(true, 0x2, b"ok");
        wire.extend(frame(true, 0x2, b"too"));
        wire.extend(frame(true, 0x3, b"")); // a reserved opcode
        let mut reader = ClientReader::new(Silent, wire);
        let activity = Cell::new(Instant::now());
        block_on(async {
            let first = data(&mut reader, &activity).await;
            let joined = reader.coalesce(first);
            assert_eq!(&reader.buf()[joined], b"oktoo");
            assert!(matches!(
                reader.next(&activity).await,
                Err(ReadEnd::Protocol(_))
            ));
        });
    }
}

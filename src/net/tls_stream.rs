//! TLS after accept: we drive rustls through the handshake ourselves, feeding it whole
//! records, so that we know exactly where the handshake ends in the byte stream. Then:
//!
//! - TLS 1.3 (what mtt-client, browsers and curl speak): the traffic keys are taken from
//!   rustls and our own record layer does the rest with ring's AEAD, in the caller's
//!   buffer: ciphertext is read straight into it, opened in place, and the plaintext of
//!   each record moved down to close the gaps. No intermediate buffers: an idle reader
//!   holds nothing but the caller's buffer, where rustls with monoio-rustls would pin
//!   two 16 KiB buffers of its own and copy every byte three more times. Each write is
//!   sealed into records of at most 16 KiB.
//! - TLS 1.2 (old clients): rustls itself, through monoio-rustls, from the first byte
//!   after the handshake.
//!
//! Limits of the TLS 1.3 record layer, on purpose: a post-handshake handshake message
//! from the client (KeyUpdate) ends the connection (rustls does not hand out the traffic
//! secret needed to follow it; Go, curl and browsers do not send one in practice), and a
//! connection is closed before either direction reaches the AEAD's confidentiality
//! limit. It does not parse HTTP or frames.

use std::io;
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::BufResult;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, ServerConfig, ServerConnection};

use crate::net::transport::{self, DataStream, ReadHalf, Readiness, Transport, WriteHalf};

/// Record header: type, legacy version, length.
const HEADER: usize = 5;
/// Largest plaintext in one record (RFC 8446 5.1).
const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest ciphertext a peer may send in one record (RFC 8446 5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// AEAD tag length of every suite we handle.
const TAG: usize = 16;
/// Most bytes buffered while the handshake is under way (rustls caps handshake
/// messages at 64 KiB).
const MAX_HANDSHAKE_BUFFER: usize = 80 * 1024;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;

/// A TLS connection ready for HTTP. The TLS 1.2 stream (rustls's whole connection, about
/// 1.4 KiB) is boxed: the caller's task keeps room for this value while a TLS 1.3 tunnel
/// runs, and it should be the size of the common case.
pub enum Accepted {
    V13(Tls13Stream),
    V12(Box<monoio_rustls::ServerTlsStream<DataStream>>),
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn tls_error(e: rustls::Error) -> io::Error {
    invalid(e.to_string())
}

/// The length of the complete record at the start of `buf`, if there is one.
fn complete_record(buf: &[u8]) -> Option<usize> {
    if buf.len() < HEADER {
        return None;
    }
    let len = HEADER + u16::from_be_bytes([buf[3], buf[4]]) as usize;
    (buf.len() >= len).then_some(len)
}

/// Whether `buf` starts with something that can be a TLS record header during the
/// handshake: a known content type, a 3.x version, a length rustls would take. Anything
/// else (plain HTTP to the TLS port, a scanner's garbage) is refused at once instead of
/// waiting for a "record" that never comes.
fn plausible_header(buf: &[u8]) -> bool {
    if buf.is_empty() {
        return true;
    }
    let content_type_ok = (20..=23).contains(&buf[0]);
    let version_ok = buf.len() < 2 || buf[1] == 3;
    let length_ok = buf.len() < HEADER
        || (u16::from_be_bytes([buf[3], buf[4]]) as usize) <= MAX_PLAINTEXT + 2048;
    content_type_ok && version_ok && length_ok
}

/// Runs the handshake on `transport` (after `early`, bytes already read) with
/// `config`. The caller bounds it in time.
pub async fn accept(
    config: &Arc<ServerConfig>,
    mut transport: Transport,
    early: Vec<u8>,
) -> io::Result<Accepted> {
    let mut conn = ServerConnection::new(Arc::clone(config)).map_err(tls_error)?;
    let mut buf = early;
    let mut out = Vec::new();
    'handshake: loop {
        let mut pos = 0;
        while let Some(len) = complete_record(&buf[pos..]) {
            let mut record = &buf[pos..pos + len];
            while !record.is_empty() {
                if conn.read_tls(&mut record)? == 0 {
                    return Err(invalid("handshake record not taken"));
                }
            }
            pos += len;
            let processed = conn.process_new_packets();
            // Whatever rustls has to say (the next flight, or an alert) goes out first.
            while conn.wants_write() {
                out.clear();
                conn.write_tls(&mut out)?;
                let (result, back) = transport.write_all(out).await;
                out = back;
                result?;
            }
            processed.map_err(tls_error)?;
            if !conn.is_handshaking() {
                buf.drain(..pos);
                break 'handshake;
            }
        }
        buf.drain(..pos);
        if !plausible_header(&buf) {
            return Err(invalid("not a TLS record"));
        }
        if buf.len() >= MAX_HANDSHAKE_BUFFER {
            return Err(invalid("handshake too large"));
        }
        let want = (buf.len() + 4096)
            .max(buf.capacity())
            .min(MAX_HANDSHAKE_BUFFER);
        buf.reserve(want - buf.len());
        let start = buf.len();
        let end = buf.capacity().min(MAX_HANDSHAKE_BUFFER);
        let (result, slice) = transport.read(buf.slice_mut(start..end)).await;
        buf = slice.into_inner();
        if result? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    // `buf` now holds exactly the bytes after the handshake's last record.
    if conn.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
        return Ok(Accepted::V12(Box::new(
            monoio_rustls::ServerTlsStream::new(transport::data_stream(transport, buf), conn),
        )));
    }
    let secrets = conn.dangerous_extract_secrets().map_err(tls_error)?;
    // An idle connection should not keep the handshake's buffer.
    if buf.is_empty() {
        buf = Vec::new();
    }
    let (rx_seq, rx) = secrets.rx;
    let (tx_seq, tx) = secrets.tx;
    let (read, write) = transport::split(transport);
    Ok(Accepted::V13(Tls13Stream {
        reader: Tls13Reader {
            io: read,
            keys: Box::new(RecordKeys::new(rx, rx_seq)?),
            stash: buf,
            plain: Vec::new(),
            plain_pos: 0,
            eof: false,
            drained: false,
        },
        writer: Tls13Writer {
            io: write,
            keys: Box::new(RecordKeys::new(tx, tx_seq)?),
        },
    }))
}

/// One direction's AEAD key, IV and record sequence number.
struct RecordKeys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// Records allowed under this key before the AEAD's limits call for a new one.
    limit: u64,
}

impl RecordKeys {
    fn new(secrets: ConnectionTrafficSecrets, seq: u64) -> io::Result<Self> {
        let (algorithm, key, iv, limit) = match secrets {
            // RFC 8446 5.5 and the AEAD-limits draft: 2^24.5 records for AES-GCM.
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&aead::AES_128_GCM, key, iv, 1 << 24)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&aead::AES_256_GCM, key, iv, 1 << 24)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, u64::MAX)
            }
            _ => return Err(invalid("cipher suite without a record layer here")),
        };
        let key = UnboundKey::new(algorithm, key.as_ref()).map_err(|_| invalid("bad key"))?;
        let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| invalid("bad iv"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
            limit,
        })
    }

    /// The per-record nonce (RFC 8446 5.3) for the next record, and advances.
    fn next_nonce(&mut self) -> io::Result<Nonce> {
        if self.seq >= self.limit {
            return Err(invalid("key usage limit reached"));
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Opens the record `record` (header included) in place; returns the inner content
    /// type and where its content is within `record`.
    fn open(&mut self, record: &mut [u8]) -> io::Result<(u8, std::ops::Range<usize>)> {
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&record[..HEADER]);
        if header[0] != CONTENT_APPLICATION_DATA {
            return Err(invalid("unencrypted record after the handshake"));
        }
        if record.len() - HEADER > MAX_CIPHERTEXT {
            return Err(invalid("record overflow"));
        }
        let nonce = self.next_nonce()?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(header), &mut record[HEADER..])
            .map_err(|_| invalid("bad record mac"))?;
        // TLSInnerPlaintext: content, then the real type, then zero padding.
        let Some(type_at) = plain.iter().rposition(|&b| b != 0) else {
            return Err(invalid("record without a content type"));
        };
        if type_at > MAX_PLAINTEXT {
            return Err(invalid("record overflow"));
        }
        Ok((plain[type_at], HEADER..HEADER + type_at))
    }

    /// Appends one sealed record carrying `content` of type `content_type` to `out`.
    fn seal(&mut self, content_type: u8, content: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let len = content.len() + 1 + TAG;
        let header = [CONTENT_APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        out.extend_from_slice(&header);
        let start = out.len();
        out.extend_from_slice(content);
        out.push(content_type);
        let nonce = self.next_nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start..])
            .map_err(|_| invalid("seal failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// A TLS 1.3 connection with our record layer.
pub struct Tls13Stream {
    reader: Tls13Reader<ReadHalf<Transport>>,
    writer: Tls13Writer<WriteHalf<Transport>>,
}

impl Splitable for Tls13Stream {
    type OwnedRead = Tls13Reader<ReadHalf<Transport>>;
    type OwnedWrite = Tls13Writer<WriteHalf<Transport>>;

    fn into_split(self) -> (Self::OwnedRead, Self::OwnedWrite) {
        (self.reader, self.writer)
    }
}

impl AsyncReadRent for Tls13Stream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.reader.read(buf).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.reader.readv(buf).await
    }
}

impl AsyncWriteRent for Tls13Stream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.writer.write(buf).await
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.writer.writev(buf).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.writer.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.writer.shutdown().await
    }
}

/// The reading half: opens records into the caller's buffers.
pub struct Tls13Reader<R> {
    io: R,
    /// Boxed: a key schedule is several hundred bytes, and the futures that hold a
    /// stream would each reserve room for it.
    keys: Box<RecordKeys>,
    /// Ciphertext of a record not yet complete (and, right after the handshake, whatever
    /// followed it). Empty, and without capacity, while the connection is idle.
    stash: Vec<u8>,
    /// Plaintext opened but not yet delivered (the caller's buffer was smaller).
    plain: Vec<u8>,
    plain_pos: usize,
    /// The peer sent close_notify.
    eof: bool,
    /// The last socket read returned less than it had room for.
    drained: bool,
}

impl<R: AsyncReadRent> Tls13Reader<R> {
    /// Copies out pending plaintext; `None` if there is none.
    fn deliver_pending(&mut self, out: &mut [u8]) -> Option<usize> {
        if self.plain_pos >= self.plain.len() {
            return None;
        }
        let n = out.len().min(self.plain.len() - self.plain_pos);
        out[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        if self.plain_pos == self.plain.len() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
        Some(n)
    }

    /// Acts on a non-data record's content; `Ok(true)` when the peer closed.
    fn control(content_type: u8, content: &[u8]) -> io::Result<bool> {
        match content_type {
            CONTENT_ALERT if content.len() == 2 && content[1] == 0 => Ok(true),
            CONTENT_ALERT => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("TLS alert {}", content.get(1).copied().unwrap_or(0)),
            )),
            CONTENT_HANDSHAKE => Err(invalid("post-handshake message not supported")),
            _ => Err(invalid("unexpected record type")),
        }
    }

    /// Opens every complete record in `stash` into `out` (and `plain`, past its end).
    fn open_stash(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut written = 0;
        let mut pos = 0;
        while let Some(len) = complete_record(&self.stash[pos..]) {
            let (content_type, range) = self.keys.open(&mut self.stash[pos..pos + len])?;
            let content = &self.stash[pos + range.start..pos + range.end];
            if content_type == CONTENT_APPLICATION_DATA {
                let n = (out.len() - written).min(content.len());
                out[written..written + n].copy_from_slice(&content[..n]);
                written += n;
                self.plain.extend_from_slice(&content[n..]);
            } else if Self::control(content_type, content)? {
                self.eof = true;
                pos += len;
                break;
            }
            pos += len;
            if !self.plain.is_empty() {
                break;
            }
        }
        self.stash.drain(..pos);
        if self.stash.is_empty() {
            self.stash = Vec::new();
        }
        Ok(written)
    }

    async fn read_inner<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let total = buf.bytes_total();
        if total == 0 {
            return (Ok(0), buf);
        }
        loop {
            // SAFETY: the buffer's spare room is ours to write until we return it.
            let out = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), total) };
            if let Some(n) = self.deliver_pending(out) {
                unsafe { buf.set_init(n) };
                return (Ok(n), buf);
            }
            if !self.stash.is_empty() {
                match self.open_stash(out) {
                    Ok(0) if self.eof => return (Ok(0), buf),
                    Ok(0) => {}
                    Ok(n) => {
                        unsafe { buf.set_init(n) };
                        return (Ok(n), buf);
                    }
                    Err(e) => return (Err(e), buf),
                }
            }
            if self.eof {
                return (Ok(0), buf);
            }
            if self.stash.is_empty() {
                // The usual case: read ciphertext straight into the caller's buffer and
                // open it there.
                let (result, back) = self.io.read(buf).await;
                buf = back;
                let n = match result {
                    Ok(0) => return (Ok(0), buf),
                    Ok(n) => n,
                    Err(e) => return (Err(e), buf),
                };
                self.drained = n < total;
                // SAFETY: the kernel initialised the first `n` bytes.
                let data = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), n) };
                match self.open_in_caller(data) {
                    Ok(0) if self.eof => return (Ok(0), buf),
                    Ok(0) => continue,
                    Ok(written) => {
                        unsafe { buf.set_init(written) };
                        return (Ok(written), buf);
                    }
                    Err(e) => return (Err(e), buf),
                }
            }
            // A record is split across reads: gather it in the stash.
            let need = complete_record_need(&self.stash);
            if need > HEADER + MAX_CIPHERTEXT {
                return (Err(invalid("record overflow")), buf);
            }
            if self.stash.capacity() < need {
                self.stash.reserve_exact(need - self.stash.len());
            }
            let start = self.stash.len();
            let end = self.stash.capacity();
            let stash = std::mem::take(&mut self.stash);
            let (result, slice) = self.io.read(stash.slice_mut(start..end)).await;
            self.stash = slice.into_inner();
            match result {
                Ok(0) => return (Err(io::ErrorKind::UnexpectedEof.into()), buf),
                Ok(n) => self.drained = n < end - start,
                Err(e) => return (Err(e), buf),
            }
        }
    }

    /// Opens the complete records at the start of `data` in place, moving their
    /// plaintext to the front; keeps an incomplete tail in the stash. Returns the
    /// plaintext length.
    fn open_in_caller(&mut self, data: &mut [u8]) -> io::Result<usize> {
        let mut written = 0;
        let mut pos = 0;
        while let Some(len) = complete_record(&data[pos..]) {
            let (content_type, range) = self.keys.open(&mut data[pos..pos + len])?;
            if content_type == CONTENT_APPLICATION_DATA {
                data.copy_within(pos + range.start..pos + range.end, written);
                written += range.len();
            } else if Self::control(content_type, &data[pos + range.start..pos + range.end])? {
                self.eof = true;
                return Ok(written);
            }
            pos += len;
        }
        if pos < data.len() {
            if data.len() - pos >= HEADER
                && HEADER + u16::from_be_bytes([data[pos + 3], data[pos + 4]]) as usize
                    > HEADER + MAX_CIPHERTEXT
            {
                return Err(invalid("record overflow"));
            }
            self.stash.extend_from_slice(&data[pos..]);
        }
        Ok(written)
    }
}

/// Bytes the stash must hold for its first record to be complete.
fn complete_record_need(stash: &[u8]) -> usize {
    if stash.len() < HEADER {
        // Room for a header and a typical record.
        return 4096;
    }
    HEADER + u16::from_be_bytes([stash[3], stash[4]]) as usize
}

impl<R: AsyncReadRent> AsyncReadRent for Tls13Reader<R> {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.read_inner(buf).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Only single-buffer reads are used here; read into the first buffer.
        let slice = match monoio::buf::IoVecWrapperMut::new(buf) {
            Ok(slice) => slice,
            Err(buf) => return (Ok(0), buf),
        };
        let (result, slice) = self.read_inner(slice).await;
        buf = slice.into_inner();
        if let Ok(n) = result {
            unsafe { buf.set_init(n) };
        }
        (result, buf)
    }
}

impl<R: Readiness> Readiness for Tls13Reader<R> {
    async fn wait_readable(&self) -> io::Result<()> {
        if !self.stash.is_empty() || self.plain_pos < self.plain.len() || self.eof {
            return Ok(());
        }
        self.io.wait_readable().await
    }

    fn drained(&self) -> Option<bool> {
        // Bytes already here (a partial record, undelivered plaintext) mean not drained.
        Some(self.drained && self.stash.is_empty() && self.plain_pos >= self.plain.len())
    }
}

/// The writing half: seals each write into records.
pub struct Tls13Writer<W> {
    io: W,
    keys: Box<RecordKeys>,
}

impl<W: AsyncWriteRent> Tls13Writer<W> {
    async fn send(&mut self, content_type: u8, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let records = data.len().div_ceil(MAX_PLAINTEXT);
        let mut out = Vec::with_capacity(data.len() + records * (HEADER + 1 + TAG));
        for chunk in data.chunks(MAX_PLAINTEXT) {
            self.keys.seal(content_type, chunk, &mut out)?;
        }
        self.io.write_all(out).await.0.map(|_| ())
    }
}

impl<W: AsyncWriteRent> AsyncWriteRent for Tls13Writer<W> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's initialised bytes, borrowed while we own it.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let result = self.send(CONTENT_APPLICATION_DATA, data).await;
        let n = buf.bytes_init();
        (result.map(|_| n), buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let mut data = Vec::new();
        // SAFETY: the iovecs describe initialised memory owned by `buf`.
        unsafe {
            let ptr = buf.read_iovec_ptr();
            for i in 0..buf.read_iovec_len() {
                let iov = &*ptr.add(i);
                data.extend_from_slice(std::slice::from_raw_parts(
                    iov.iov_base as *const u8,
                    iov.iov_len,
                ));
            }
        }
        let result = self.send(CONTENT_APPLICATION_DATA, &data).await;
        (result.map(|_| data.len()), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.io.flush().await
    }

    /// Sends close_notify, then closes the write side.
    async fn shutdown(&mut self) -> io::Result<()> {
        self.send(CONTENT_ALERT, &[1, 0]).await?;
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seq: u64) -> RecordKeys {
        let key = aead::UnboundKey::new(&aead::AES_128_GCM, &[7u8; 16]).unwrap();
        RecordKeys {
            key: LessSafeKey::new(key),
            iv: [9u8; 12],
            seq,
            limit: 1 << 24,
        }
    }

    #[test]
    fn only_plausible_handshake_headers_are_waited_for() {
        assert!(plausible_header(b""));
        assert!(plausible_header(&[22]));
        assert!(plausible_header(&[22, 3, 1, 0x02, 0x00]));
        assert!(!plausible_header(b"GET / HTTP/1.1"));
        assert!(!plausible_header(&[22, 3, 1, 0xff, 0xff]));
        assert!(!plausible_header(&[22, 2]));
        assert!(!plausible_header(&[0x80, 3]));
    }

    #[test]
    fn sealed_records_open_in_place_in_sequence() {
        let (mut tx, mut rx) = (keys(5), keys(5));
        let mut wire = Vec::new();
        tx.seal(CONTENT_APPLICATION_DATA, b"hello", &mut wire)
            .unwrap();
        tx.seal(CONTENT_ALERT, &[1, 0], &mut wire).unwrap();
        let first = complete_record(&wire).unwrap();
        assert_eq!(first, HEADER + 5 + 1 + TAG);
        let (kind, range) = rx.open(&mut wire[..first]).unwrap();
        assert_eq!(
            (kind, &wire[range]),
            (CONTENT_APPLICATION_DATA, &b"hello"[..])
        );
        let (kind, range) = rx.open(&mut wire[first..]).unwrap();
        assert_eq!(kind, CONTENT_ALERT);
        assert_eq!(range.len(), 2);
    }

    #[test]
    fn tampering_reordering_and_overflow_are_refused() {
        let mut tx = keys(0);
        let mut wire = Vec::new();
        tx.seal(CONTENT_APPLICATION_DATA, b"payload", &mut wire)
            .unwrap();
        let mut flipped = wire.clone();
        flipped[HEADER + 2] ^= 1;
        assert!(keys(0).open(&mut flipped).is_err());
        // Same bytes, wrong sequence number: the nonce differs.
        assert!(keys(1).open(&mut wire.clone()).is_err());
        // A header that claims a plaintext record.
        let mut plain = wire.clone();
        plain[0] = CONTENT_HANDSHAKE;
        assert!(keys(0).open(&mut plain).is_err());
        // Too long to be a record.
        let mut long = vec![CONTENT_APPLICATION_DATA, 3, 3, 0xff, 0xff];
        long.resize(HEADER + 0xffff, 0);
        assert!(keys(0).open(&mut long).is_err());
        // The key retires at its limit.
        let mut spent = keys(1 << 24);
        assert!(spent
            .seal(CONTENT_APPLICATION_DATA, b"x", &mut Vec::new())
            .is_err());
    }

    #[test]
    fn padding_is_stripped_and_empty_records_are_refused() {
        let mut tx = keys(0);
        let mut wire = Vec::new();
        // Content, type, then three bytes of zero padding, sealed by hand.
        let inner = [b'a', b'b', CONTENT_APPLICATION_DATA, 0, 0, 0];
        let len = inner.len() + TAG;
        let header = [CONTENT_APPLICATION_DATA, 3, 3, 0, len as u8];
        wire.extend_from_slice(&header);
        wire.extend_from_slice(&inner);
        let nonce = tx.next_nonce().unwrap();
        let tag = tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut wire[HEADER..])
            .unwrap();
        wire.extend_from_slice(tag.as_ref());
        let (kind, range) = keys(0).open(&mut wire).unwrap();
        assert_eq!((kind, range.len()), (CONTENT_APPLICATION_DATA, 2));

        let mut zeros = Vec::new();
        let mut tx = keys(0);
        let header = [CONTENT_APPLICATION_DATA, 3, 3, 0, (4 + TAG) as u8];
        zeros.extend_from_slice(&header);
        zeros.extend_from_slice(&[0, 0, 0, 0]);
        let nonce = tx.next_nonce().unwrap();
        let tag = tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut zeros[HEADER..])
            .unwrap();
        zeros.extend_from_slice(tag.as_ref());
        assert!(keys(0).open(&mut zeros).is_err());
    }
}

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
//! The TLS 1.3 record layer keeps RFC 8446 to the letter, because what it lets through
//! reaches `dst`: every record that fails (a bad tag, an oversized record or inner
//! plaintext, a missing or unknown content type, a change_cipher_spec or a handshake
//! message other than KeyUpdate) is answered with the alert of section 6, and no
//! close_notify; a fatal alert from the client ends the connection at once; a transport
//! end without close_notify is an error ([`io::ErrorKind::UnexpectedEof`]), not a clean
//! end, so the tunnel can tell `dst` the stream was cut; data after close_notify is
//! ignored. KeyUpdate is followed both ways (section 4.6.3), and we update our own
//! sending key every [`KEY_UPDATE_AFTER`] records, so no tunnel is cut by the AEAD's
//! limits. The traffic secrets a key update starts from come from rustls through its
//! key-log hook ([`SecretCapture`]); the next ones are derived here with ring's HKDF
//! (section 7.2), checked against rustls' own keys at the handoff. Records that carry
//! no application data are bounded ([`MAX_RECORDS_WITHOUT_DATA`] in a row). Secrets,
//! IVs and buffered plaintext are wiped when dropped (ring's key schedules are opaque
//! to us and are not). It does not parse HTTP or frames.

use std::cell::{Cell, RefCell};
use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::BufResult;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use rustls::{ConnectionTrafficSecrets, KeyLog, ProtocolVersion, ServerConfig, ServerConnection};
use zeroize::Zeroize;

use crate::net::transport::{
    self, send_now, DataStream, ReadHalf, Readiness, Transport, WriteHalf,
};

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
/// Longest traffic secret (SHA-384's output).
const MAX_SECRET: usize = 48;

/// Records we seal under one sending key before we update it (RFC 8446 5.5: AES-GCM may
/// seal about 2^24.5 full records under one key). Well below that: an update costs a few
/// HKDF calls and one 22-byte record. One schedule for every suite (ChaCha20-Poly1305 has
/// no practical limit), so that one code path serves all and is tested by all.
///
/// Debug builds, which is what `cargo test` runs, update every 2^10 records instead:
/// every integration test that moves more than a few MiB then crosses a key update (with
/// rustls, Go, OpenSSL and curl as the peer), and `tests/it/tls_records.rs` pushes a tunnel
/// past it on purpose. Release builds use the real figure.
pub const KEY_UPDATE_AFTER: u64 = if cfg!(debug_assertions) {
    1 << 10
} else {
    1 << 23
};

/// Records in a row that carry no application data (empty or padding-only data,
/// KeyUpdate, user_canceled) before the peer is cut off with unexpected_message: they
/// cost us an AEAD open each and show nothing for it. 32, as rustls (empty fragments)
/// and BoringSSL (key updates) allow.
pub const MAX_RECORDS_WITHOUT_DATA: u8 = 32;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;

/// The one post-handshake message a client may send us (no post-handshake auth).
const HANDSHAKE_KEY_UPDATE: u8 = 24;

/// Alert descriptions (RFC 8446 6).
pub mod alert {
    pub const CLOSE_NOTIFY: u8 = 0;
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const BAD_RECORD_MAC: u8 = 20;
    pub const RECORD_OVERFLOW: u8 = 22;
    pub const ILLEGAL_PARAMETER: u8 = 47;
    pub const DECODE_ERROR: u8 = 50;
    pub const INTERNAL_ERROR: u8 = 80;
    pub const USER_CANCELED: u8 = 90;
}

/// A TLS connection ready for HTTP. The TLS 1.2 stream (rustls's whole connection, about
/// 1.4 KiB) is boxed: the caller's task keeps room for this value while a TLS 1.3 tunnel
/// runs, and it should be the size of the common case.
pub(crate) enum Accepted {
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

/// A TLS 1.3 traffic secret, wiped when dropped.
#[derive(Clone)]
struct TrafficSecret {
    bytes: [u8; MAX_SECRET],
    len: usize,
}

impl TrafficSecret {
    fn new(secret: &[u8]) -> Option<Self> {
        let mut bytes = [0u8; MAX_SECRET];
        bytes.get_mut(..secret.len())?.copy_from_slice(secret);
        Some(Self {
            bytes,
            len: secret.len(),
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// HKDF-Expand-Label(secret, label, "", out.len()) of RFC 8446 7.1, into `out`.
    fn expand_label(&self, hash: hkdf::Algorithm, label: &[u8], out: &mut [u8]) -> Option<()> {
        /// The output length as ring's HKDF wants it.
        struct Len(usize);
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let length = u16::try_from(out.len()).ok()?.to_be_bytes();
        let label_len = [u8::try_from(b"tls13 ".len() + label.len()).ok()?];
        // HkdfLabel: length, the label with its length, an empty context.
        let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
        hkdf::Prk::new_less_safe(hash, self.as_bytes())
            .expand(&info, Len(out.len()))
            .ok()?
            .fill(out)
            .ok()
    }

    /// The next traffic secret, after a KeyUpdate (RFC 8446 7.2).
    fn next(&self, hash: hkdf::Algorithm) -> Option<Self> {
        let mut next = Self {
            bytes: [0; MAX_SECRET],
            len: self.len,
        };
        self.expand_label(hash, b"traffic upd", &mut next.bytes[..self.len])?;
        Some(next)
    }
}

impl Drop for TrafficSecret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// The application traffic secrets of the handshake under way on this thread, as rustls
/// logs them.
#[derive(Default)]
struct CapturedSecrets {
    client: Option<TrafficSecret>,
    server: Option<TrafficSecret>,
}

thread_local! {
    /// Filled by [`SecretCapture`] during one `process_new_packets` call and emptied right
    /// after it by the handshake that made the call: a worker runs one call at a time, so
    /// what is here belongs to that handshake.
    static CAPTURED: RefCell<CapturedSecrets> = RefCell::default();
}

/// The server configuration's key log: it hands the TLS 1.3 application traffic secrets
/// to [`accept`] on the same thread, and nothing anywhere else. rustls' secret extraction
/// gives keys and IVs but not the secrets they come from, which following a KeyUpdate
/// needs (its kernel-handoff API, which would, exists only for unbuffered connections,
/// and our TLS 1.2 path needs the buffered one).
#[derive(Debug)]
pub(crate) struct SecretCapture;

const CLIENT_TRAFFIC_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

impl KeyLog for SecretCapture {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_TRAFFIC_SECRET || label == SERVER_TRAFFIC_SECRET
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        CAPTURED.with(|captured| {
            let mut captured = captured.borrow_mut();
            match label {
                CLIENT_TRAFFIC_SECRET => captured.client = TrafficSecret::new(secret),
                SERVER_TRAFFIC_SECRET => captured.server = TrafficSecret::new(secret),
                _ => {}
            }
        });
    }
}

/// Moves what [`SecretCapture`] caught during the last rustls call into `into`.
fn take_captured(into: &mut CapturedSecrets) {
    let caught = CAPTURED.with(|captured| std::mem::take(&mut *captured.borrow_mut()));
    if caught.client.is_some() {
        into.client = caught.client;
    }
    if caught.server.is_some() {
        into.server = caught.server;
    }
}

/// Runs the handshake on `transport` (after `early`, bytes already read) with
/// `config`. The caller bounds it in time.
pub(crate) async fn accept(
    config: &Arc<ServerConfig>,
    mut transport: Transport,
    early: Vec<u8>,
) -> io::Result<Accepted> {
    let mut conn = ServerConnection::new(Arc::clone(config)).map_err(tls_error)?;
    let mut captured = CapturedSecrets::default();
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
            take_captured(&mut captured);
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
    let (Some(client_secret), Some(server_secret)) =
        (captured.client.take(), captured.server.take())
    else {
        return Err(invalid(
            "rustls logged no traffic secrets (key_log is not SecretCapture)",
        ));
    };
    // An idle connection should not keep the handshake's buffer.
    if buf.is_empty() {
        buf = Vec::new();
    }
    let (rx_seq, rx) = secrets.rx;
    let (tx_seq, tx) = secrets.tx;
    let sending = Rc::new(Sending {
        keys: RefCell::new(RecordKeys::handed_over(tx, server_secret, tx_seq)?),
        update_requested: Cell::new(false),
        ending: Cell::new(Ending::Open),
        torn: Cell::new(false),
    });
    let receiver = Box::new(Receiver {
        keys: RecordKeys::handed_over(rx, client_secret, rx_seq)?,
        key_update: [0; 5],
        key_update_len: 0,
        without_data: 0,
        sending: Rc::clone(&sending),
    });
    let fd = transport.as_raw_fd();
    let (read, write) = transport::split(transport);
    Ok(Accepted::V13(Tls13Stream {
        reader: Tls13Reader {
            io: read,
            receiver,
            stash: buf,
            plain: Vec::new(),
            plain_pos: 0,
            eof: false,
            drained: false,
        },
        writer: Tls13Writer {
            io: write,
            fd,
            sending,
        },
    }))
}

/// One direction's AEAD key, IV, record sequence number, and the secret they come from.
struct RecordKeys {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    /// The traffic secret of the key and IV, from which a KeyUpdate derives the next.
    secret: TrafficSecret,
}

/// The hash of the TLS 1.3 suite with this AEAD, for HKDF: fixed by the AEAD in every
/// suite (RFC 8446 B.4).
fn suite_hash(algorithm: &aead::Algorithm) -> hkdf::Algorithm {
    if *algorithm == aead::AES_256_GCM {
        hkdf::HKDF_SHA384
    } else {
        hkdf::HKDF_SHA256
    }
}

impl RecordKeys {
    /// The keys rustls hands over after the handshake, with the traffic secret its key
    /// log gave us. Our derivation from that secret must give rustls' key and IV: this is
    /// checked, so a capture that went wrong fails the handshake instead of a key update
    /// much later.
    fn handed_over(
        rustls_keys: ConnectionTrafficSecrets,
        secret: TrafficSecret,
        seq: u64,
    ) -> io::Result<Self> {
        let (algorithm, key, iv) = match &rustls_keys {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(invalid("cipher suite without a record layer here")),
        };
        let keys = Self::from_secret(algorithm, secret, seq, Some((key.as_ref(), iv.as_ref())))?;
        Ok(keys)
    }

    /// Derives the key and IV of `secret` (RFC 8446 7.3). With `expect`, they must equal
    /// it.
    fn from_secret(
        algorithm: &'static aead::Algorithm,
        secret: TrafficSecret,
        seq: u64,
        expect: Option<(&[u8], &[u8])>,
    ) -> io::Result<Self> {
        let hash = suite_hash(algorithm);
        if secret.len != hash.hmac_algorithm().digest_algorithm().output_len() {
            return Err(invalid("traffic secret of the wrong length"));
        }
        let mut key = [0u8; 32];
        let key = &mut key[..algorithm.key_len()];
        let mut iv = [0u8; aead::NONCE_LEN];
        let derived = secret.expand_label(hash, b"key", key).is_some()
            && secret.expand_label(hash, b"iv", &mut iv).is_some();
        let matches = expect.is_none_or(|(want_key, want_iv)| want_key == &*key && want_iv == iv);
        let unbound = UnboundKey::new(algorithm, key);
        key.zeroize();
        if !derived || !matches {
            iv.zeroize();
            return Err(invalid("traffic secret does not give rustls' keys"));
        }
        let key = unbound.map_err(|_| invalid("bad key"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
            secret,
        })
    }

    /// Moves to the next traffic secret and its keys (a KeyUpdate, RFC 8446 4.6.3).
    fn update(&mut self) -> io::Result<()> {
        let next = self
            .secret
            .next(suite_hash(self.key.algorithm()))
            .ok_or_else(|| invalid("key update failed"))?;
        *self = Self::from_secret(self.key.algorithm(), next, 0, None)?;
        Ok(())
    }

    /// The per-record nonce (RFC 8446 5.3) for the next record, and advances. A sequence
    /// number may not wrap (5.3); ours are updated long before.
    fn next_nonce(&mut self) -> Option<Nonce> {
        let seq = self.seq;
        self.seq = seq.checked_add(1)?;
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        Some(Nonce::assume_unique_for_key(nonce))
    }

    /// Opens the record `record` (header included) in place; returns the inner content
    /// type and where its content is within `record`.
    fn open(&mut self, record: &mut [u8]) -> Result<(u8, Range<usize>), Fault> {
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&record[..HEADER]);
        if header[0] != CONTENT_APPLICATION_DATA {
            // A change_cipher_spec after the handshake included (RFC 8446 5).
            return Err(Fault::unexpected("unencrypted record after the handshake"));
        }
        if record.len() - HEADER > MAX_CIPHERTEXT {
            return Err(Fault::overflow());
        }
        let Some(nonce) = self.next_nonce() else {
            return Err(Fault::Alert(
                alert::INTERNAL_ERROR,
                "sequence number exhausted",
            ));
        };
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(header), &mut record[HEADER..])
            .map_err(|_| Fault::Alert(alert::BAD_RECORD_MAC, "bad record MAC"))?;
        // TLSInnerPlaintext (content, type, zero padding) may not pass 2^14 + 1 (5.4).
        if plain.len() > MAX_PLAINTEXT + 1 {
            return Err(Fault::overflow());
        }
        let Some(type_at) = plain.iter().rposition(|&b| b != 0) else {
            return Err(Fault::unexpected("record without a content type"));
        };
        Ok((plain[type_at], HEADER..HEADER + type_at))
    }

    /// Appends one sealed record carrying `content` of type `content_type` to `out`.
    fn seal(&mut self, content_type: u8, content: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let len = content.len() + 1 + TAG;
        let header = [CONTENT_APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let nonce = self
            .next_nonce()
            .ok_or_else(|| invalid("sequence number exhausted"))?;
        out.extend_from_slice(&header);
        let start = out.len();
        out.extend_from_slice(content);
        out.push(content_type);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start..])
            .map_err(|_| invalid("seal failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

impl Drop for RecordKeys {
    fn drop(&mut self) {
        self.iv.zeroize();
    }
}

/// Why a record ends the connection.
#[derive(Debug, PartialEq, Eq)]
enum Fault {
    /// The peer broke the protocol: we send this fatal alert, and nothing more.
    Alert(u8, &'static str),
    /// The peer sent a fatal alert (this description): we close at once.
    PeerAlert(u8),
}

impl Fault {
    fn unexpected(what: &'static str) -> Self {
        Fault::Alert(alert::UNEXPECTED_MESSAGE, what)
    }

    fn overflow() -> Self {
        Fault::Alert(alert::RECORD_OVERFLOW, "record overflow")
    }
}

/// What an opened record gives the reader.
#[derive(Debug, PartialEq, Eq)]
enum Opened {
    /// Application data, at this range of the record.
    Data(Range<usize>),
    /// Nothing for the caller (an empty record, a KeyUpdate, a user_canceled alert).
    Nothing,
    /// close_notify: the peer will send nothing more.
    Closed,
}

/// How far the connection has ended, as the reader found it; the writer acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Reading goes on (or ended with close_notify, which the reader keeps itself).
    Open,
    /// The transport ended (or failed) without close_notify: what came may be cut short.
    Truncated,
    /// The peer sent a fatal alert: we send nothing more.
    PeerAlert(u8),
    /// We owe the peer this fatal alert; then we send nothing more.
    OweAlert(u8),
    /// Our fatal alert has gone out (or could not).
    AlertSent,
}

/// The receiving side's state beyond its keys.
struct Receiver {
    keys: RecordKeys,
    /// A KeyUpdate message gathered so far (handshake messages may span records).
    key_update: [u8; 5],
    key_update_len: u8,
    /// Records in a row without application data (see [`MAX_RECORDS_WITHOUT_DATA`]).
    without_data: u8,
    /// Where KeyUpdate requests and faults go, for the writer.
    sending: Rc<Sending>,
}

impl Receiver {
    /// Opens one record in place and acts on what it carries.
    fn receive(&mut self, record: &mut [u8]) -> Result<(Opened, bool), Fault> {
        let (content_type, range) = self.keys.open(record)?;
        let content = &record[range.clone()];
        if self.key_update_len > 0 && content_type != CONTENT_HANDSHAKE {
            // Handshake messages may not be interleaved with other records (5.1).
            return Err(Fault::unexpected("record inside a handshake message"));
        }
        if content_type == CONTENT_APPLICATION_DATA && !content.is_empty() {
            self.without_data = 0;
            return Ok((Opened::Data(range), false));
        }
        self.without_data += 1;
        if self.without_data > MAX_RECORDS_WITHOUT_DATA {
            return Err(Fault::unexpected("too many records without data"));
        }
        match content_type {
            CONTENT_APPLICATION_DATA => Ok((Opened::Nothing, false)),
            // Alerts are never fragmented nor coalesced (5.1).
            CONTENT_ALERT if content.len() != 2 => {
                Err(Fault::Alert(alert::DECODE_ERROR, "alert of a wrong length"))
            }
            CONTENT_ALERT => match content[1] {
                alert::CLOSE_NOTIFY => Ok((Opened::Closed, false)),
                // A closure alert, not an error (6.1); close_notify should follow.
                alert::USER_CANCELED => Ok((Opened::Nothing, false)),
                // Every other alert is an error alert, whatever its level says (6).
                description => Err(Fault::PeerAlert(description)),
            },
            CONTENT_HANDSHAKE => {
                let requested = self.gather_key_update(content)?;
                if let Some(requested) = requested {
                    self.keys
                        .update()
                        .map_err(|_| Fault::Alert(alert::INTERNAL_ERROR, "key update failed"))?;
                    return Ok((Opened::Nothing, requested));
                }
                Ok((Opened::Nothing, false))
            }
            _ => Err(Fault::unexpected("unexpected record type")),
        }
    }

    /// Adds a handshake record's content to the KeyUpdate being gathered; once it is
    /// whole, whether it asks for ours (`Some(requested)`).
    fn gather_key_update(&mut self, content: &[u8]) -> Result<Option<bool>, Fault> {
        if content.is_empty() {
            return Err(Fault::unexpected("empty handshake record"));
        }
        for (i, &byte) in content.iter().enumerate() {
            let at = usize::from(self.key_update_len);
            self.key_update[at] = byte;
            self.key_update_len += 1;
            match at {
                0 if byte != HANDSHAKE_KEY_UPDATE => {
                    return Err(Fault::unexpected(
                        "post-handshake message other than KeyUpdate",
                    ))
                }
                // The length: always 1.
                1..=3 if byte != [0, 0, 1][at - 1] => {
                    return Err(Fault::Alert(
                        alert::DECODE_ERROR,
                        "KeyUpdate of a wrong length",
                    ))
                }
                4 => {
                    self.key_update_len = 0;
                    // A key change must end its record (5.1).
                    if i + 1 != content.len() {
                        return Err(Fault::unexpected("more after a KeyUpdate in its record"));
                    }
                    return match byte {
                        0 => Ok(Some(false)),
                        1 => Ok(Some(true)),
                        _ => Err(Fault::Alert(
                            alert::ILLEGAL_PARAMETER,
                            "KeyUpdate request value",
                        )),
                    };
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

/// The sending side of one TLS 1.3 connection: our keys, and what the reader found that
/// the writer must act on. Shared by both halves (the reader only sets the cells); the
/// receiving keys live in the reader's own box. Two allocations of about 650 bytes, as
/// before KeyUpdate: one of 1.3 KiB with both directions in it measured 1.6 KiB more per
/// idle tunnel (it did not fit where a handshake's freed memory was).
struct Sending {
    keys: RefCell<RecordKeys>,
    /// The peer asked for a KeyUpdate: ours goes out before our next record.
    update_requested: Cell<bool>,
    /// What the reader found wrong with the connection, if anything.
    ending: Cell<Ending>,
    /// A write was cut short (its future dropped): a record may be half on the wire, so
    /// nothing can follow it, not even an alert. (Here, not in the writer: the writer is
    /// held by value in several futures, this allocation only once.)
    torn: Cell<bool>,
}

impl Receiver {
    /// Opens one record in place, as [`Receiver::receive`]; a KeyUpdate the peer asked
    /// for is noted for the writer, a fault for the writer and the reads that follow.
    fn take(&mut self, record: &mut [u8]) -> io::Result<Opened> {
        match self.receive(record) {
            Ok((opened, requested)) => {
                if requested {
                    self.sending.update_requested.set(true);
                }
                Ok(opened)
            }
            Err(fault) => Err(self.sending.fail(fault)),
        }
    }
}

impl Sending {
    /// Records `fault` for the writer and turns it into the reader's error.
    fn fail(&self, fault: Fault) -> io::Error {
        match fault {
            Fault::Alert(description, what) => {
                if self.ending.get() == Ending::Open {
                    self.ending.set(Ending::OweAlert(description));
                }
                invalid(format!("TLS: {what} (alert {description})"))
            }
            Fault::PeerAlert(description) => {
                self.ending.set(Ending::PeerAlert(description));
                self.error().unwrap_or_else(|| invalid("TLS alert"))
            }
        }
    }

    /// The transport ended without close_notify.
    fn truncated(&self) -> io::Error {
        if self.ending.get() == Ending::Open {
            self.ending.set(Ending::Truncated);
        }
        self.error()
            .unwrap_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }

    /// The error every read repeats once the connection has failed.
    fn error(&self) -> Option<io::Error> {
        match self.ending.get() {
            Ending::Open => None,
            Ending::Truncated => Some(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "TLS: connection ended without close_notify",
            )),
            Ending::PeerAlert(description) => Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("TLS: the client sent alert {description}"),
            )),
            Ending::OweAlert(description) => Some(invalid(format!(
                "TLS: connection failed (alert {description})"
            ))),
            Ending::AlertSent => Some(invalid("TLS: connection failed")),
        }
    }
}

/// A TLS 1.3 connection with our record layer.
pub(crate) struct Tls13Stream {
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

/// The reading half: opens records into the caller's buffers. A read returns 0 only after
/// the peer's close_notify; a transport end without it is an error.
pub(crate) struct Tls13Reader<R> {
    io: R,
    /// Boxed: a key schedule is several hundred bytes, and the futures that hold a
    /// stream would each reserve room for it.
    receiver: Box<Receiver>,
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

impl<R> Drop for Tls13Reader<R> {
    fn drop(&mut self) {
        self.stash.zeroize();
        self.plain.zeroize();
    }
}

impl<R: AsyncReadRent> Tls13Reader<R> {
    /// Copies out pending plaintext; `None` if there is none.
    fn deliver_pending(&mut self, out: &mut [MaybeUninit<u8>]) -> Option<usize> {
        if self.plain_pos >= self.plain.len() {
            return None;
        }
        let n = write_bytes(out, &self.plain[self.plain_pos..]);
        self.plain_pos += n;
        if self.plain_pos == self.plain.len() {
            self.plain.zeroize();
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
        Some(n)
    }

    /// Opens every complete record in `stash` into `out` (and `plain`, past its end).
    fn open_stash(&mut self, out: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        let mut written = 0;
        let mut pos = 0;
        while let Some(len) = complete_record(&self.stash[pos..]) {
            let opened = match self.receiver.take(&mut self.stash[pos..pos + len]) {
                Ok(opened) => opened,
                Err(e) => {
                    self.stash.zeroize();
                    self.stash = Vec::new();
                    // The records before the faulty one were whole and authentic: they
                    // are delivered, and the error comes with the next read.
                    return if written > 0 { Ok(written) } else { Err(e) };
                }
            };
            match opened {
                Opened::Data(range) => {
                    let content = &self.stash[pos + range.start..pos + range.end];
                    let n = write_bytes(&mut out[written..], content);
                    written += n;
                    self.plain.extend_from_slice(&content[n..]);
                }
                Opened::Nothing => {}
                Opened::Closed => {
                    // Whatever follows close_notify is ignored (RFC 8446 6.1).
                    self.eof = true;
                    self.stash.zeroize();
                    self.stash = Vec::new();
                    return Ok(written);
                }
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
            // SAFETY: `write_ptr` is valid for `total` bytes of writes while we hold `buf`;
            // as `MaybeUninit`, the bytes are only written (by `write_bytes`), never read.
            let out = unsafe {
                std::slice::from_raw_parts_mut(buf.write_ptr().cast::<MaybeUninit<u8>>(), total)
            };
            if let Some(n) = self.deliver_pending(out) {
                // SAFETY: `deliver_pending` wrote the first `n` bytes.
                unsafe { buf.set_init(n) };
                return (Ok(n), buf);
            }
            // After a failure, the plaintext opened before it (above), then its error.
            if let Some(e) = self.receiver.sending.error() {
                return (Err(e), buf);
            }
            if !self.stash.is_empty() {
                match self.open_stash(out) {
                    Ok(0) if self.eof => return (Ok(0), buf),
                    Ok(0) => {}
                    Ok(n) => {
                        // SAFETY: `open_stash` wrote the first `n` bytes.
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
                    Ok(0) => return (Err(self.receiver.sending.truncated()), buf),
                    Ok(n) => n,
                    Err(e) => {
                        self.receiver.sending.truncated();
                        return (Err(e), buf);
                    }
                };
                self.drained = n < total;
                // SAFETY: the kernel initialised the first `n` bytes.
                let data = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), n) };
                match self.open_in_caller(data) {
                    Ok(0) if self.eof => return (Ok(0), buf),
                    Ok(0) => continue,
                    Ok(written) => {
                        // SAFETY: these bytes were read by the kernel, then opened in place.
                        unsafe { buf.set_init(written) };
                        return (Ok(written), buf);
                    }
                    Err(e) => return (Err(e), buf),
                }
            }
            // A record is split across reads: gather it in the stash.
            let need = complete_record_need(&self.stash);
            if need > HEADER + MAX_CIPHERTEXT {
                return (Err(self.receiver.sending.fail(Fault::overflow())), buf);
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
                Ok(0) => return (Err(self.receiver.sending.truncated()), buf),
                Ok(n) => self.drained = n < end - start,
                Err(e) => {
                    self.receiver.sending.truncated();
                    return (Err(e), buf);
                }
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
            let opened = match self.receiver.take(&mut data[pos..pos + len]) {
                Ok(opened) => opened,
                // As in `open_stash`: what came before is delivered, the error follows.
                Err(e) => return if written > 0 { Ok(written) } else { Err(e) },
            };
            match opened {
                Opened::Data(range) => {
                    data.copy_within(pos + range.start..pos + range.end, written);
                    written += range.len();
                }
                Opened::Nothing => {}
                Opened::Closed => {
                    // Whatever follows close_notify is ignored (RFC 8446 6.1).
                    self.eof = true;
                    return Ok(written);
                }
            }
            pos += len;
        }
        if pos < data.len() {
            if data.len() - pos >= HEADER
                && u16::from_be_bytes([data[pos + 3], data[pos + 4]]) as usize > MAX_CIPHERTEXT
            {
                let e = self.receiver.sending.fail(Fault::overflow());
                return if written > 0 { Ok(written) } else { Err(e) };
            }
            self.stash.extend_from_slice(&data[pos..]);
        }
        Ok(written)
    }
}

/// Copies as much of `src` as fits into `out` (which may be uninitialised) and returns
/// how many bytes that is; those bytes of `out` are initialised afterwards.
fn write_bytes(out: &mut [MaybeUninit<u8>], src: &[u8]) -> usize {
    let n = out.len().min(src.len());
    for (slot, byte) in out[..n].iter_mut().zip(src) {
        slot.write(*byte);
    }
    n
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
            // SAFETY: `read_inner` initialised `n` bytes of the first buffer.
            unsafe { buf.set_init(n) };
        }
        (result, buf)
    }
}

impl<R: Readiness> Readiness for Tls13Reader<R> {
    async fn wait_readable(&self) -> io::Result<()> {
        if !self.stash.is_empty()
            || self.plain_pos < self.plain.len()
            || self.eof
            || self.receiver.sending.ending.get() != Ending::Open
        {
            return Ok(());
        }
        self.io.wait_readable().await
    }

    fn drained(&self) -> Option<bool> {
        // Bytes already here (a partial record, undelivered plaintext) mean not drained.
        Some(self.drained && self.stash.is_empty() && self.plain_pos >= self.plain.len())
    }
}

/// The writing half: seals each write into records, with a KeyUpdate in front when one
/// is due; at shutdown, close_notify, or the alert the reader found cause for.
pub(crate) struct Tls13Writer<W> {
    io: W,
    /// The socket under `io` (open as long as `io` is), for writes that need not wait.
    fd: RawFd,
    sending: Rc<Sending>,
}

impl<W: AsyncWriteRent> Tls13Writer<W> {
    async fn send(&mut self, content_type: u8, data: &[u8]) -> io::Result<()> {
        if self.sending.torn.get() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if let Ending::PeerAlert(_) | Ending::OweAlert(_) | Ending::AlertSent =
            self.sending.ending.get()
        {
            // After a fatal alert either way, nothing more is sent but ours (RFC 8446 6.2).
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if data.is_empty() {
            return Ok(());
        }
        let records = data.len().div_ceil(MAX_PLAINTEXT);
        // Room for the records and a KeyUpdate.
        let mut out = Vec::with_capacity(data.len() + (records + 1) * (HEADER + 1 + TAG) + 4);
        {
            let mut tx = self.sending.keys.borrow_mut();
            for chunk in data.chunks(MAX_PLAINTEXT) {
                self.sending.update_if_due(&mut tx, &mut out)?;
                tx.seal(content_type, chunk, &mut out)?;
            }
        }
        // (Inline rather than a helper shared with `shutdown`: every layer of async fn
        // adds to the futures a tunnel holds for its whole life.)
        self.sending.torn.set(true);
        // Straight to the kernel when it has room; what it leaves goes the ordinary way.
        let sent = send_now(self.fd, &out);
        let result = if sent < out.len() {
            out.drain(..sent);
            self.io.write_all(out).await.0.map(drop)
        } else {
            Ok(())
        };
        self.sending.torn.set(result.is_err());
        result
    }
}

impl Sending {
    /// Seals our KeyUpdate into `out` and moves to the next sending key, if the peer asked
    /// for one or our key has sealed [`KEY_UPDATE_AFTER`] records. Ours never asks for the
    /// peer's: its sending key is its own business (RFC 8446 4.6.3).
    fn update_if_due(&self, tx: &mut RecordKeys, out: &mut Vec<u8>) -> io::Result<()> {
        if self.update_requested.get() || tx.seq >= KEY_UPDATE_AFTER {
            const UPDATE_NOT_REQUESTED: u8 = 0;
            let key_update = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED];
            tx.seal(CONTENT_HANDSHAKE, &key_update, out)?;
            tx.update()?;
            self.update_requested.set(false);
        }
        Ok(())
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

    /// Ends our side: close_notify, or the fatal alert the reader found cause for, or
    /// nothing after the peer's fatal alert or a truncation (an error is not an orderly
    /// close); then the transport's write side.
    async fn shutdown(&mut self) -> io::Result<()> {
        if self.sending.torn.get() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let description = match self.sending.ending.get() {
            Ending::Open => Some(alert::CLOSE_NOTIFY),
            Ending::OweAlert(description) => {
                self.sending.ending.set(Ending::AlertSent);
                Some(description)
            }
            Ending::Truncated | Ending::PeerAlert(_) | Ending::AlertSent => None,
        };
        if let Some(description) = description {
            const FATAL: u8 = 2;
            // close_notify is sent as a warning by everyone (RFC 8446 6.1 leaves it).
            let level = if description == alert::CLOSE_NOTIFY {
                1
            } else {
                FATAL
            };
            let mut out = Vec::with_capacity(HEADER + 2 + 1 + TAG);
            self.sending
                .keys
                .borrow_mut()
                .seal(CONTENT_ALERT, &[level, description], &mut out)?;
            self.sending.torn.set(true);
            self.io.write_all(out).await.0?;
            self.sending.torn.set(false);
        }
        self.io.shutdown().await
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;

    fn keys(seq: u64) -> RecordKeys {
        let secret = TrafficSecret::new(&[7u8; 32]).unwrap();
        RecordKeys::from_secret(&aead::AES_128_GCM, secret, seq, None).unwrap()
    }

    fn receiver() -> Receiver {
        Receiver {
            keys: keys(0),
            key_update: [0; 5],
            key_update_len: 0,
            without_data: 0,
            sending: Rc::new(Sending {
                keys: RefCell::new(keys(0)),
                update_requested: Cell::new(false),
                ending: Cell::new(Ending::Open),
                torn: Cell::new(false),
            }),
        }
    }

    /// A record sealed by hand: `inner` is the whole TLSInnerPlaintext (content, type,
    /// padding).
    fn sealed(tx: &mut RecordKeys, inner: &[u8]) -> Vec<u8> {
        let len = inner.len() + TAG;
        let header = [CONTENT_APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let mut wire = header.to_vec();
        wire.extend_from_slice(inner);
        let nonce = tx.next_nonce().unwrap();
        let tag = tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut wire[HEADER..])
            .unwrap();
        wire.extend_from_slice(tag.as_ref());
        wire
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
    fn tampering_reordering_and_overflow_get_their_alerts() {
        let mut tx = keys(0);
        let mut wire = Vec::new();
        tx.seal(CONTENT_APPLICATION_DATA, b"payload", &mut wire)
            .unwrap();
        let mut flipped = wire.clone();
        flipped[HEADER + 2] ^= 1;
        let bad_mac = Err(Fault::Alert(alert::BAD_RECORD_MAC, "bad record MAC"));
        assert_eq!(keys(0).open(&mut flipped), bad_mac);
        // Same bytes, wrong sequence number: the nonce differs.
        assert_eq!(keys(1).open(&mut wire.clone()), bad_mac);
        // A header that claims a plaintext record, or a change_cipher_spec.
        for content_type in [CONTENT_HANDSHAKE, CONTENT_CHANGE_CIPHER_SPEC] {
            let mut plain = wire.clone();
            plain[0] = content_type;
            assert!(matches!(
                keys(0).open(&mut plain),
                Err(Fault::Alert(alert::UNEXPECTED_MESSAGE, _))
            ));
        }
        // Too long to be a record.
        let mut long = vec![CONTENT_APPLICATION_DATA, 3, 3, 0xff, 0xff];
        long.resize(HEADER + 0xffff, 0);
        assert_eq!(keys(0).open(&mut long), Err(Fault::overflow()));
        // A sequence number never wraps.
        let mut spent = keys(u64::MAX);
        assert!(spent
            .seal(CONTENT_APPLICATION_DATA, b"x", &mut Vec::new())
            .is_err());
    }

    #[test]
    fn padding_counts_towards_the_plaintext_limit() {
        let mut inner = vec![b'a'; 2];
        inner.push(CONTENT_APPLICATION_DATA);
        inner.resize(MAX_PLAINTEXT + 1, 0);
        let mut full = sealed(&mut keys(0), &inner);
        let (kind, range) = keys(0).open(&mut full).unwrap();
        assert_eq!((kind, range.len()), (CONTENT_APPLICATION_DATA, 2));
        inner.push(0);
        let mut over = sealed(&mut keys(0), &inner);
        assert_eq!(keys(0).open(&mut over), Err(Fault::overflow()));
    }

    #[test]
    fn padding_is_stripped_and_all_zero_records_are_refused() {
        let inner = [b'a', b'b', CONTENT_APPLICATION_DATA, 0, 0, 0];
        let mut wire = sealed(&mut keys(0), &inner);
        let (kind, range) = keys(0).open(&mut wire).unwrap();
        assert_eq!((kind, range.len()), (CONTENT_APPLICATION_DATA, 2));
        let mut zeros = sealed(&mut keys(0), &[0, 0, 0, 0]);
        assert!(matches!(
            keys(0).open(&mut zeros),
            Err(Fault::Alert(alert::UNEXPECTED_MESSAGE, _))
        ));
    }

    #[test]
    fn key_updates_are_followed_split_or_whole_and_checked() {
        let mut tx = keys(0);
        let mut rx = receiver();
        // A KeyUpdate asking for ours, split over two records.
        let mut first = sealed(&mut tx, &[HANDSHAKE_KEY_UPDATE, 0, CONTENT_HANDSHAKE]);
        let mut second = sealed(&mut tx, &[0, 1, 1, CONTENT_HANDSHAKE]);
        assert_eq!(rx.receive(&mut first), Ok((Opened::Nothing, false)));
        assert_eq!(rx.receive(&mut second), Ok((Opened::Nothing, true)));
        tx.update().unwrap();
        let mut data = Vec::new();
        tx.seal(CONTENT_APPLICATION_DATA, b"new key", &mut data)
            .unwrap();
        assert_eq!(
            rx.receive(&mut data),
            Ok((Opened::Data(HEADER..HEADER + 7), false))
        );

        // Wrong length, wrong value, something after it, a foreign message.
        let cases: [(&[u8], u8); 4] = [
            (&[HANDSHAKE_KEY_UPDATE, 0, 0, 2, 0, 0], alert::DECODE_ERROR),
            (
                &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 2],
                alert::ILLEGAL_PARAMETER,
            ),
            (
                &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0, 24],
                alert::UNEXPECTED_MESSAGE,
            ),
            (&[4, 0, 0, 1, 0], alert::UNEXPECTED_MESSAGE),
        ];
        for (message, want) in cases {
            let mut tx = keys(0);
            let mut inner = message.to_vec();
            inner.push(CONTENT_HANDSHAKE);
            let mut record = sealed(&mut tx, &inner);
            assert!(
                matches!(receiver().receive(&mut record), Err(Fault::Alert(got, _)) if got == want),
                "{message:?}"
            );
        }

        // Data in the middle of a split handshake message.
        let (mut tx, mut rx) = (keys(0), receiver());
        let mut start = sealed(&mut tx, &[HANDSHAKE_KEY_UPDATE, CONTENT_HANDSHAKE]);
        let mut data = sealed(&mut tx, &[b'x', CONTENT_APPLICATION_DATA]);
        rx.receive(&mut start).unwrap();
        assert!(matches!(
            rx.receive(&mut data),
            Err(Fault::Alert(alert::UNEXPECTED_MESSAGE, _))
        ));
    }

    #[test]
    fn records_without_data_are_bounded_and_data_resets_the_count() {
        let (mut tx, mut rx) = (keys(0), receiver());
        for round in 0..3 {
            for _ in 0..MAX_RECORDS_WITHOUT_DATA {
                let mut empty = sealed(&mut tx, &[CONTENT_APPLICATION_DATA, 0, 0]);
                assert_eq!(rx.receive(&mut empty), Ok((Opened::Nothing, false)));
            }
            if round < 2 {
                let mut data = sealed(&mut tx, &[b'x', CONTENT_APPLICATION_DATA]);
                assert!(matches!(rx.receive(&mut data), Ok((Opened::Data(_), _))));
            }
        }
        let mut one_more = sealed(&mut tx, &[CONTENT_APPLICATION_DATA]);
        assert!(matches!(
            rx.receive(&mut one_more),
            Err(Fault::Alert(alert::UNEXPECTED_MESSAGE, _))
        ));
    }

    #[test]
    fn alerts_close_or_fail() {
        let cases: [(&[u8], Result<Opened, Fault>); 4] = [
            (&[1, alert::CLOSE_NOTIFY], Ok(Opened::Closed)),
            (&[1, alert::USER_CANCELED], Ok(Opened::Nothing)),
            // A "warning" of any other kind is an error alert all the same.
            (
                &[1, alert::BAD_RECORD_MAC],
                Err(Fault::PeerAlert(alert::BAD_RECORD_MAC)),
            ),
            (
                &[2, 0, 0],
                Err(Fault::Alert(alert::DECODE_ERROR, "alert of a wrong length")),
            ),
        ];
        for (content, want) in cases {
            let mut inner = content.to_vec();
            inner.push(CONTENT_ALERT);
            let mut record = sealed(&mut keys(0), &inner);
            let got = receiver().receive(&mut record).map(|(opened, _)| opened);
            assert_eq!(got, want, "{content:?}");
        }
    }

    #[test]
    fn the_next_secret_follows_rfc_8446_7_2() {
        // HKDF-Expand-Label(secret, "traffic upd", "", 32) by hand with ring's HMAC:
        // HKDF-Expand of one block is HMAC(secret, info || 0x01).
        let secret = TrafficSecret::new(&[0x42; 32]).unwrap();
        let next = secret.next(hkdf::HKDF_SHA256).unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0x42; 32]);
        let mut info = vec![0, 32, 17];
        info.extend_from_slice(b"tls13 traffic upd");
        info.extend_from_slice(&[0, 1]);
        let want = ring::hmac::sign(&key, &info);
        assert_eq!(next.as_bytes(), want.as_ref());
    }
}

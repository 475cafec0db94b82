//! A TLS 1.3 client that writes and reads records the test chooses, for trying a record
//! layer as an outside test suite would: a bad tag, an oversized record or inner
//! plaintext, a zero or unknown content type, a change_cipher_spec after Finished,
//! KeyUpdates, alerts, a FIN without close_notify.
//!
//! The handshake is rustls's own (its unbuffered API); then rustls hands over the traffic
//! keys (its kernel-handoff API, which also derives every key update) and [`RecordClient`]
//! seals and opens the records itself with ring. Between the tests' own records it reads
//! and writes application data like any TLS stream ([`Read`], [`Write`]), so the kit's
//! HTTP and WebSocket readers work over it.
//!
//! Not here: the server's alert codes and limits, which the tests take from the server's
//! crate; this module knows only RFC 8446.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::ConnectionState;
use rustls::{ClientConfig, ConnectionTrafficSecrets, SupportedCipherSuite};

use crate::sock::raw;
use crate::tls::{client_config, Signatures, TEST_SERVER_NAME};

/// Record content type: change_cipher_spec.
pub const CHANGE_CIPHER_SPEC: u8 = 20;
/// Record content type: alert.
pub const ALERT: u8 = 21;
/// Record content type: handshake.
pub const HANDSHAKE: u8 = 22;
/// Record content type: application_data (also the outer type of every protected record).
pub const APPLICATION_DATA: u8 = 23;
/// Handshake message type: key_update.
pub const KEY_UPDATE: u8 = 24;
/// Handshake message type: new_session_ticket.
pub const NEW_SESSION_TICKET: u8 = 4;
/// Alert level: warning (close_notify is sent at this level).
pub const WARNING: u8 = 1;
/// Alert level: fatal.
pub const FATAL: u8 = 2;
/// The most plaintext one record may carry: 2^14 bytes.
pub const MAX_PLAINTEXT: usize = 16384;

/// TLS_AES_128_GCM_SHA256, from ring.
pub const AES_128: SupportedCipherSuite =
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
/// TLS_AES_256_GCM_SHA384, from ring.
pub const AES_256: SupportedCipherSuite =
    rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384;
/// TLS_CHACHA20_POLY1305_SHA256, from ring.
pub const CHACHA: SupportedCipherSuite =
    rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256;
/// The three TLS 1.3 suites, for tests that try each.
pub const SUITES: [SupportedCipherSuite; 3] = [AES_128, AES_256, CHACHA];

/// A TLS 1.3 client configuration offering only `suite`, accepting the server's
/// certificate (signature checked), with secret extraction on (what [`RecordClient`]
/// needs; a rustls stream made from it works as usual).
pub fn tls13_config(suite: SupportedCipherSuite) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let mut config = client_config(provider, &[&rustls::version::TLS13], Signatures::Check);
    config.enable_secret_extraction = true;
    Arc::new(config)
}

/// One direction's AEAD state: the key, the static IV, the next sequence number.
pub struct Keys {
    /// The AEAD key.
    key: LessSafeKey,
    /// The per-connection IV the sequence number is XORed into.
    iv: [u8; 12],
    /// The sequence number of the next record.
    seq: u64,
}

impl Keys {
    /// Keys from rustls's secrets, starting at sequence number `seq`.
    pub fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Keys {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => panic!("not a TLS 1.3 suite of ring's"),
        };
        Keys {
            key: LessSafeKey::new(UnboundKey::new(algorithm, key.as_ref()).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    /// The next record's nonce (RFC 8446 5.3); the sequence number moves on.
    fn nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }

    /// A protected record whose TLSInnerPlaintext is `inner` (content, content type,
    /// padding), under the next nonce.
    pub fn seal(&mut self, inner: &[u8]) -> Vec<u8> {
        let len = inner.len() + self.key.algorithm().tag_len();
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let mut record = header.to_vec();
        record.extend_from_slice(inner);
        let nonce = self.nonce();
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut record[5..])
            .unwrap();
        record.extend_from_slice(tag.as_ref());
        record
    }

    /// Opens a whole protected `record` (header included) under the next nonce: its
    /// content type and content, padding removed. Panics if it does not open.
    pub fn open(&mut self, record: &mut [u8]) -> (u8, Vec<u8>) {
        assert_eq!(record[0], APPLICATION_DATA, "an unprotected record");
        let header: [u8; 5] = record[..5].try_into().unwrap();
        let nonce = self.nonce();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(header), &mut record[5..])
            .expect("the record opens");
        let type_at = plain.iter().rposition(|&b| b != 0).expect("a content type");
        (plain[type_at], plain[..type_at].to_vec())
    }
}

/// What the server sent, one record at a time.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Application data.
    Data(Vec<u8>),
    /// An alert: level, description.
    Alert(u8, u8),
    /// A KeyUpdate (whether it asked for ours); the client already follows it.
    KeyUpdate(bool),
    /// The connection ended (FIN, or reset) with no record.
    End,
}

/// A TLS 1.3 client that sends whatever records a test asks for, and reads the server's
/// one at a time. As a [`Read`] it yields application data (following KeyUpdates, failing
/// at anything else); as a [`Write`] it sends application data in records of at most
/// [`MAX_PLAINTEXT`] bytes.
pub struct RecordClient {
    /// The connection.
    tcp: TcpStream,
    /// rustls after the handshake: derives the next traffic keys at each KeyUpdate.
    kernel: KernelConnection<ClientConnectionData>,
    /// Our sending keys.
    tx: Keys,
    /// The server's sending keys.
    rx: Keys,
    /// Bytes read and not yet taken as records.
    inbox: Vec<u8>,
    /// Application data received and not yet read.
    plain: Vec<u8>,
    /// Our Finished flight, when the test sends it itself.
    held: Vec<u8>,
    /// The server's KeyUpdates so far.
    key_updates_seen: usize,
}

impl RecordClient {
    /// Connects to `addr` and completes a TLS 1.3 handshake offering only `suite`.
    pub fn connect(addr: SocketAddr, suite: SupportedCipherSuite) -> RecordClient {
        Self::handshake(addr, suite, false)
    }

    /// Connects and runs the handshake; with `hold_finished`, the client's last flight
    /// (its Finished) is not sent but kept for [`RecordClient::take_held`], for the test
    /// to send with records of its own in one segment.
    pub fn handshake(
        addr: SocketAddr,
        suite: SupportedCipherSuite,
        hold_finished: bool,
    ) -> RecordClient {
        let mut tcp = raw(addr);
        let name = ServerName::try_from(TEST_SERVER_NAME).unwrap();
        let mut conn = UnbufferedClientConnection::new(tls13_config(suite), name).unwrap();
        let mut inbox = Vec::new();
        let mut held = Vec::new();
        let mut flights = 0;
        loop {
            let status = conn.process_tls_records(&mut inbox);
            let discard = status.discard;
            match status.state.expect("handshake") {
                ConnectionState::EncodeTlsData(mut encode) => {
                    let mut out = vec![0u8; 16384];
                    let n = encode.encode(&mut out).unwrap();
                    if hold_finished && flights > 0 {
                        held.extend_from_slice(&out[..n]);
                    } else {
                        tcp.write_all(&out[..n]).unwrap();
                    }
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    flights += 1;
                    transmit.done();
                }
                ConnectionState::BlockedHandshake => {
                    let mut buf = [0u8; 16384];
                    let n = tcp.read(&mut buf).unwrap();
                    assert!(n > 0, "server closed during the handshake");
                    inbox.drain(..discard);
                    inbox.extend_from_slice(&buf[..n]);
                    continue;
                }
                ConnectionState::WriteTraffic(_) => {
                    inbox.drain(..discard);
                    break;
                }
                other => panic!("unexpected handshake state {other:?}"),
            }
            inbox.drain(..discard);
        }
        let (secrets, kernel) = conn.dangerous_into_kernel_connection().unwrap();
        RecordClient {
            tcp,
            kernel,
            tx: Keys::new(secrets.tx.0, secrets.tx.1),
            rx: Keys::new(secrets.rx.0, secrets.rx.1),
            inbox,
            plain: Vec::new(),
            held,
            key_updates_seen: 0,
        }
    }

    /// The TCP connection underneath (to shut down its sending side, say).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The Finished flight [`RecordClient::handshake`] held back, taken.
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// The server's KeyUpdates received so far.
    pub fn key_updates_seen(&self) -> usize {
        self.key_updates_seen
    }

    /// Application data received and not yet read.
    pub fn unread(&self) -> &[u8] {
        &self.plain
    }

    /// A record sealed with our key: `inner` is the whole TLSInnerPlaintext (content,
    /// content type, padding), however long or wrong.
    pub fn seal_inner(&mut self, inner: &[u8]) -> Vec<u8> {
        self.tx.seal(inner)
    }

    /// A record of `content_type` carrying `content`, no padding.
    pub fn record(&mut self, content_type: u8, content: &[u8]) -> Vec<u8> {
        let mut inner = content.to_vec();
        inner.push(content_type);
        self.seal_inner(&inner)
    }

    /// Application data in records of at most [`MAX_PLAINTEXT`] bytes.
    pub fn data_records(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in data.chunks(MAX_PLAINTEXT) {
            out.extend(self.record(APPLICATION_DATA, chunk));
        }
        out
    }

    /// A KeyUpdate record; our sending key moves on after it, as rustls derives it.
    pub fn key_update(&mut self, requested: bool) -> Vec<u8> {
        let record = self.record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, u8::from(requested)]);
        let (seq, secrets) = self.kernel.update_tx_secret().unwrap();
        self.tx = Keys::new(seq, secrets);
        record
    }

    /// Sends these bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).unwrap();
    }

    /// Sends `data` as application data ([`RecordClient::data_records`]).
    pub fn send_data(&mut self, data: &[u8]) {
        let records = self.data_records(data);
        self.send(&records);
    }

    /// The next record from the server (NewSessionTickets are skipped; a KeyUpdate is
    /// followed before it is returned).
    pub fn receive(&mut self) -> Received {
        loop {
            let len = loop {
                if self.inbox.len() >= 5 {
                    let len = 5 + u16::from_be_bytes([self.inbox[3], self.inbox[4]]) as usize;
                    if self.inbox.len() >= len {
                        break len;
                    }
                }
                let mut buf = [0u8; 65536];
                match self.tcp.read(&mut buf) {
                    Ok(0) => return Received::End,
                    Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => return Received::End,
                    Err(e) => panic!("client read failed: {e}"),
                }
            };
            let mut record: Vec<u8> = self.inbox.drain(..len).collect();
            let (content_type, content) = self.rx.open(&mut record);
            match content_type {
                APPLICATION_DATA => return Received::Data(content),
                ALERT => return Received::Alert(content[0], content[1]),
                HANDSHAKE if content[0] == NEW_SESSION_TICKET => continue,
                HANDSHAKE if content[0] == KEY_UPDATE => {
                    assert_eq!(&content[1..4], &[0, 0, 1]);
                    let (seq, secrets) = self.kernel.update_rx_secret().unwrap();
                    self.rx = Keys::new(seq, secrets);
                    self.key_updates_seen += 1;
                    return Received::KeyUpdate(content[4] == 1);
                }
                other => panic!("unexpected record type {other} from the server"),
            }
        }
    }

    /// The next record that is not a KeyUpdate; panics at one that asks for ours.
    pub fn receive_skipping_updates(&mut self) -> Received {
        loop {
            match self.receive() {
                Received::KeyUpdate(requested) => {
                    assert!(!requested, "the server asked for our KeyUpdate");
                }
                other => return other,
            }
        }
    }

    /// The next server WebSocket frame, from application data: (opcode, payload).
    pub fn frame(&mut self) -> (u8, Vec<u8>) {
        let (_, opcode, payload) = crate::ws::read_frame(self).expect("a server frame");
        (opcode, payload)
    }

    /// The next record must be this fatal alert, and then the connection ends.
    pub fn expect_alert_then_end(&mut self, description: u8) {
        assert_eq!(
            self.receive_skipping_updates(),
            Received::Alert(FATAL, description)
        );
        assert_eq!(self.receive(), Received::End, "nothing after a fatal alert");
    }
}

impl Read for RecordClient {
    /// Application data; where a record other than data (or the end) comes instead, an
    /// error that names it.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.plain.is_empty() {
            match self.receive_skipping_updates() {
                Received::Data(data) => self.plain.extend_from_slice(&data),
                other => return Err(io::Error::other(format!("expected data, got {other:?}"))),
            }
        }
        let n = buf.len().min(self.plain.len());
        buf[..n].copy_from_slice(&self.plain[..n]);
        self.plain.drain(..n);
        Ok(n)
    }
}

impl Write for RecordClient {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_data(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

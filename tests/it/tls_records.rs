//! The TLS 1.3 record layer tried as a TLS test suite would try it: a client that does a
//! real handshake with rustls, then takes the traffic keys (rustls' kernel-handoff API,
//! which also derives every key update for it) and writes the records it chooses: a bad
//! tag, an oversized record or inner plaintext, a zero or unknown content type, a
//! change_cipher_spec after Finished, KeyUpdates, alerts, a FIN without close_notify.
//! Each test asserts the alert the server sends back and what `dst` sees: a FIN only after
//! a real close (the WebSocket close or close_notify), an RST otherwise. A second kind of
//! client is rustls' own stream, refreshing its keys, which checks our key-update
//! derivation against another implementation; and a tunnel is pushed past the sending
//! key's record limit (small in debug builds, see `KEY_UPDATE_AFTER`).
//!
//! Self-contained on purpose: its helpers (server start-up, frames) are copies of the
//! few it needs, not the shared test kit.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mtt_mu_server::tls_record::{alert, KEY_UPDATE_AFTER, MAX_RECORDS_WITHOUT_DATA};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::ConnectionState;
use rustls::{ConnectionTrafficSecrets, SupportedCipherSuite};

/// Generous bound on anything a test waits for.
const WAIT: Duration = Duration::from_secs(20);

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const KEY_UPDATE: u8 = 24;
const NEW_SESSION_TICKET: u8 = 4;
const FATAL: u8 = 2;

// ---------------------------------------------------------------------------------------
// The server and its `dst`.

/// The real server binary with a generated certificate, killed when dropped.
struct Server {
    child: Child,
    data: SocketAddr,
    controller: SocketAddr,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mtt-mu-server"))
            .args(["-b", "127.0.0.1:0", "-c", "127.0.0.1:0", "-workers", "1"])
            .arg("-force-tls")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("ready:") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let ready = rx.recv_timeout(WAIT).expect("server ready");
        let field = |name: &str| -> SocketAddr {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {ready}"))
        };
        Server {
            data: field("data="),
            controller: field("controller="),
            child,
        }
    }

    /// Adds a user `path` whose `dst` is `dst`.
    fn add(&self, path: &str, dst: SocketAddr) {
        let body = format!(r#"{{"opt":1,"args_bunch":[{{"path":"{path}","dst":"{dst}"}}]}}"#);
        let mut conn = TcpStream::connect(self.controller).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            conn,
            "POST / HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        assert!(reply.contains("\"res\":1"), "{reply}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `dst` that hands each connection the server makes to the test.
struct Dst {
    listener: TcpListener,
}

impl Dst {
    fn new() -> Dst {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Dst { listener }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// The next connection from the server.
    fn accept(&self) -> TcpStream {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(WAIT)).unwrap();
                    return stream;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("the server did not dial dst: {e}"),
            }
        }
    }
}

/// How a `dst` connection ended.
#[derive(Debug, PartialEq, Eq)]
enum DstEnd {
    /// A FIN: the server closed it cleanly.
    Fin,
    /// An RST: the server aborted it.
    Reset,
}

/// Reads `dst` to its end: the bytes, and how it ended.
fn dst_end(dst: &mut TcpStream) -> (Vec<u8>, DstEnd) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match dst.read(&mut buf) {
            Ok(0) => return (got, DstEnd::Fin),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, DstEnd::Reset),
            Err(e) => panic!("dst read failed: {e} after {} bytes", got.len()),
        }
    }
}

/// A `dst` that echoes each connection until EOF.
fn echo_dst() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn unique_path(name: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("/{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------
// WebSocket and smux framing (client side).

/// A masked client frame.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// An smux v1 frame.
fn smux_frame(cmd: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![1, cmd];
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(&sid.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The upgrade request for `path`.
fn upgrade_request(path: &str, protocol: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    )
    .into_bytes()
}

/// Takes one server frame off the front of `buf`, if whole: (opcode, payload).
fn take_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let payload = buf[at..at + len].to_vec();
    buf.drain(..at + len);
    Some((opcode, payload))
}

// ---------------------------------------------------------------------------------------
// The record-level client.

/// One direction's AEAD state.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Keys {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => panic!("unexpected suite"),
        };
        Keys {
            key: LessSafeKey::new(UnboundKey::new(algorithm, key.as_ref()).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    fn nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// What the server sent, one record at a time.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    Data(Vec<u8>),
    Alert(u8, u8),
    /// A KeyUpdate (whether it asked for ours); the client already follows it.
    KeyUpdate(bool),
    /// The connection ended (FIN, or reset) with no record.
    End,
}

/// A TLS 1.3 client that sends whatever records a test asks for.
struct RecordClient {
    tcp: TcpStream,
    /// rustls after the handshake: derives the next traffic keys at each KeyUpdate.
    kernel: KernelConnection<ClientConnectionData>,
    tx: Keys,
    rx: Keys,
    /// Bytes read and not yet taken as records.
    inbox: Vec<u8>,
    /// Application data received and not yet taken.
    plain: Vec<u8>,
    /// Our client Finished flight, when the test sends it itself.
    held: Vec<u8>,
    /// The server's KeyUpdates so far.
    key_updates_seen: usize,
}

fn client_config(suite: SupportedCipherSuite) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.enable_secret_extraction = true;
    Arc::new(config)
}

const AES_128: SupportedCipherSuite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
const AES_256: SupportedCipherSuite = rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384;
const CHACHA: SupportedCipherSuite =
    rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256;

impl RecordClient {
    fn connect(server: &Server, suite: SupportedCipherSuite) -> RecordClient {
        Self::handshake(server, suite, false)
    }

    /// Runs the handshake; with `hold_finished`, the client's last flight (its Finished)
    /// is kept in `held` for the test to send, with records of its own.
    fn handshake(server: &Server, suite: SupportedCipherSuite, hold_finished: bool) -> Self {
        let mut tcp = TcpStream::connect(server.data).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = UnbufferedClientConnection::new(client_config(suite), name).unwrap();
        let mut inbox = vec![0u8; 0];
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

    /// A record sealed with our key: `inner` is the whole TLSInnerPlaintext (content,
    /// content type, padding).
    fn seal_inner(&mut self, inner: &[u8]) -> Vec<u8> {
        let len = inner.len() + 16;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let mut record = header.to_vec();
        record.extend_from_slice(inner);
        let nonce = self.tx.nonce();
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut record[5..])
            .unwrap();
        record.extend_from_slice(tag.as_ref());
        record
    }

    /// A record of `content_type` carrying `content`, no padding.
    fn record(&mut self, content_type: u8, content: &[u8]) -> Vec<u8> {
        let mut inner = content.to_vec();
        inner.push(content_type);
        self.seal_inner(&inner)
    }

    /// Application data in records of at most 16 KiB.
    fn data_records(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in data.chunks(16384) {
            out.extend(self.record(APPLICATION_DATA, chunk));
        }
        out
    }

    /// A KeyUpdate record; our sending key moves on after it, as rustls derives it.
    fn key_update(&mut self, requested: bool) -> Vec<u8> {
        let record = self.record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, u8::from(requested)]);
        let (seq, secrets) = self.kernel.update_tx_secret().unwrap();
        self.tx = Keys::new(seq, secrets);
        record
    }

    fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).unwrap();
    }

    fn send_data(&mut self, data: &[u8]) {
        let records = self.data_records(data);
        self.send(&records);
    }

    /// The next record from the server (NewSessionTickets are skipped).
    fn receive(&mut self) -> Received {
        loop {
            while self.inbox.len() < 5
                || self.inbox.len()
                    < 5 + u16::from_be_bytes([self.inbox[3], self.inbox[4]]) as usize
            {
                let mut buf = [0u8; 65536];
                match self.tcp.read(&mut buf) {
                    Ok(0) => return Received::End,
                    Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => return Received::End,
                    Err(e) => panic!("client read failed: {e}"),
                }
            }
            let len = 5 + u16::from_be_bytes([self.inbox[3], self.inbox[4]]) as usize;
            let mut record: Vec<u8> = self.inbox.drain(..len).collect();
            assert_eq!(record[0], APPLICATION_DATA, "an unprotected record");
            let header: [u8; 5] = record[..5].try_into().unwrap();
            let nonce = self.rx.nonce();
            let plain = self
                .rx
                .key
                .open_in_place(nonce, Aad::from(header), &mut record[5..])
                .expect("the server's record opens");
            let type_at = plain.iter().rposition(|&b| b != 0).expect("content type");
            let content = plain[..type_at].to_vec();
            match plain[type_at] {
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

    /// The next record that is not a KeyUpdate.
    fn receive_skipping_updates(&mut self) -> Received {
        loop {
            match self.receive() {
                Received::KeyUpdate(requested) => {
                    assert!(!requested, "the server asked for our KeyUpdate");
                }
                other => return other,
            }
        }
    }

    /// Application data until `plain` holds `n` bytes or more.
    fn fill_plain(&mut self, n: usize) {
        while self.plain.len() < n {
            match self.receive_skipping_updates() {
                Received::Data(data) => self.plain.extend_from_slice(&data),
                other => panic!("expected data, got {other:?}"),
            }
        }
    }

    /// Reads an HTTP response head; returns it.
    fn response_head(&mut self) -> String {
        loop {
            if let Some(end) = self.plain.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.plain.drain(..end + 4).collect();
                return String::from_utf8(head).unwrap();
            }
            let n = self.plain.len() + 1;
            self.fill_plain(n);
        }
    }

    /// Upgrades to a WebSocket at `path` (plain tunnel unless `protocol` says).
    fn upgrade(&mut self, path: &str, protocol: &str) {
        let request = upgrade_request(path, protocol);
        self.send_data(&request);
        let head = self.response_head();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    }

    /// The next server WebSocket frame.
    fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Some(frame) = take_frame(&mut self.plain) {
                return frame;
            }
            let n = self.plain.len() + 1;
            self.fill_plain(n);
        }
    }

    /// The next record must be this fatal alert, and then the connection ends.
    fn expect_alert_then_end(&mut self, description: u8) {
        assert_eq!(
            self.receive_skipping_updates(),
            Received::Alert(FATAL, description)
        );
        assert_eq!(self.receive(), Received::End, "nothing after a fatal alert");
    }
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------
// Helpers for the tests: a plain tunnel with some data through it.

/// A server, a record client with a plain tunnel open, and the tunnel's `dst`, which has
/// already received `hello`.
fn tunnel(suite: SupportedCipherSuite) -> (Server, RecordClient, TcpStream) {
    let server = Server::start(&[]);
    let dst = Dst::new();
    let path = unique_path("records");
    server.add(&path, dst.addr());
    let mut client = RecordClient::connect(&server, suite);
    client.upgrade(&path, "smux_off");
    let mut backend = dst.accept();
    client.send_data(&masked_frame(0x2, b"hello"));
    let mut got = [0u8; 5];
    backend.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    (server, client, backend)
}

/// Sends `records` into an open tunnel; the server must answer with this alert and
/// reset `dst`.
fn assert_refused(records: &[u8], description: u8) {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    client.send(records);
    client.expect_alert_then_end(description);
    assert_eq!(dst_end(&mut backend), (Vec::new(), DstEnd::Reset));
}

// ---------------------------------------------------------------------------------------
// Faulty records: the alert, then an aborted dst.

#[test]
fn a_bad_tag_gets_bad_record_mac_and_dst_is_reset() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let mut record = client.record(APPLICATION_DATA, &masked_frame(0x2, b"forged"));
    let last = record.len() - 1;
    record[last] ^= 1;
    client.send(&record);
    client.expect_alert_then_end(alert::BAD_RECORD_MAC);
    assert_eq!(dst_end(&mut backend), (Vec::new(), DstEnd::Reset));
}

#[test]
fn a_record_longer_than_the_ciphertext_limit_gets_record_overflow() {
    // The header alone says it: 2^14 + 257 bytes of ciphertext.
    let len: u16 = 16384 + 257;
    let mut records = vec![APPLICATION_DATA, 3, 3];
    records.extend_from_slice(&len.to_be_bytes());
    records.extend_from_slice(&[0u8; 100]);
    assert_refused(&records, alert::RECORD_OVERFLOW);
}

#[test]
fn content_of_two_to_the_14_plus_1_bytes_gets_record_overflow() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let record = client.record(APPLICATION_DATA, &vec![0x55; 16385]);
    client.send(&record);
    client.expect_alert_then_end(alert::RECORD_OVERFLOW);
    assert_eq!(dst_end(&mut backend), (Vec::new(), DstEnd::Reset));
}

#[test]
fn padding_past_the_inner_plaintext_limit_gets_record_overflow() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    // Ten bytes of content, then padding: 2^14 + 2 bytes of TLSInnerPlaintext in all.
    let mut inner = masked_frame(0x2, b"tiny");
    inner.push(APPLICATION_DATA);
    inner.resize(16384 + 2, 0);
    let record = client.seal_inner(&inner);
    client.send(&record);
    client.expect_alert_then_end(alert::RECORD_OVERFLOW);
    assert_eq!(dst_end(&mut backend), (Vec::new(), DstEnd::Reset));
}

#[test]
fn padding_up_to_the_limit_is_accepted() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let frame = masked_frame(0x2, b"padded");
    let mut inner = frame.clone();
    inner.push(APPLICATION_DATA);
    inner.resize(16384 + 1, 0);
    let record = client.seal_inner(&inner);
    client.send(&record);
    let mut got = [0u8; 6];
    backend.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"padded");
}

#[test]
fn all_zero_and_unknown_content_types_get_unexpected_message() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let record = client.seal_inner(&[0, 0, 0, 0]);
    client.send(&record);
    client.expect_alert_then_end(alert::UNEXPECTED_MESSAGE);
    assert_eq!(dst_end(&mut backend), (Vec::new(), DstEnd::Reset));

    let (_server, mut client, mut backend) = tunnel(AES_128);
    let record = client.record(99, b"what is this");
    client.send(&record);
    client.expect_alert_then_end(alert::UNEXPECTED_MESSAGE);
    assert_eq!(dst_end(&mut backend), (Vec::new(), DstEnd::Reset));
}

#[test]
fn change_cipher_spec_after_finished_gets_unexpected_message() {
    assert_refused(
        &[CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1],
        alert::UNEXPECTED_MESSAGE,
    );
    // And inside a protected record too.
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let record = client.record(CHANGE_CIPHER_SPEC, &[1]);
    client.send(&record);
    client.expect_alert_then_end(alert::UNEXPECTED_MESSAGE);
    assert_eq!(dst_end(&mut backend), (Vec::new(), DstEnd::Reset));
}

#[test]
fn a_handshake_message_other_than_key_update_gets_unexpected_message() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    // A ClientHello-typed message after the handshake.
    let record = client.record(HANDSHAKE, &[1, 0, 0, 2, 3, 3]);
    client.send(&record);
    client.expect_alert_then_end(alert::UNEXPECTED_MESSAGE);
    assert_eq!(dst_end(&mut backend), (Vec::new(), DstEnd::Reset));
}

#[test]
fn a_key_update_of_the_wrong_length_gets_decode_error() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let record = client.record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 2, 0, 0]);
    client.send(&record);
    client.expect_alert_then_end(alert::DECODE_ERROR);
    assert_eq!(dst_end(&mut backend), (Vec::new(), DstEnd::Reset));
}

#[test]
fn endless_empty_records_are_cut_off() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let mut records = Vec::new();
    for _ in 0..MAX_RECORDS_WITHOUT_DATA {
        records.extend(client.record(APPLICATION_DATA, b""));
    }
    // Data resets the count; then padding-only records, one too many.
    records.extend(client.data_records(&masked_frame(0x2, b"still here")));
    for _ in 0..=MAX_RECORDS_WITHOUT_DATA {
        records.extend(client.seal_inner(&[APPLICATION_DATA, 0, 0, 0]));
    }
    client.send(&records);
    client.expect_alert_then_end(alert::UNEXPECTED_MESSAGE);
    // What came before the flood was delivered, then dst was reset.
    assert_eq!(
        dst_end(&mut backend),
        (b"still here".to_vec(), DstEnd::Reset)
    );
}

// ---------------------------------------------------------------------------------------
// Alerts and ends from the client.

#[test]
fn a_fatal_alert_from_the_client_closes_at_once_without_close_notify() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let record = client.record(ALERT, &[FATAL, 40]);
    client.send(&record);
    assert_eq!(client.receive(), Received::End);
    assert_eq!(dst_end(&mut backend), (Vec::new(), DstEnd::Reset));
}

#[test]
fn a_fin_without_close_notify_resets_dst() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    client.send_data(&masked_frame(0x2, b" world"));
    client.tcp.shutdown(Shutdown::Write).unwrap();
    // No close_notify from us either: it was not an orderly close.
    assert_eq!(client.receive(), Received::End);
    assert_eq!(dst_end(&mut backend), (b" world".to_vec(), DstEnd::Reset));
}

#[test]
fn close_notify_ends_dst_cleanly_and_is_answered() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let mut records = client.data_records(&masked_frame(0x2, b" world"));
    records.extend(client.record(ALERT, &[1, alert::CLOSE_NOTIFY]));
    client.send(&records);
    assert_eq!(dst_end(&mut backend), (b" world".to_vec(), DstEnd::Fin));
    assert_eq!(client.receive(), Received::Alert(1, alert::CLOSE_NOTIFY));
    assert_eq!(client.receive(), Received::End);
}

#[test]
fn a_websocket_close_then_a_fin_ends_dst_cleanly() {
    let (_server, mut client, mut backend) = tunnel(AES_128);
    client.send_data(&masked_frame(0x8, &1000u16.to_be_bytes()));
    let (opcode, _) = client.frame();
    assert_eq!(opcode, 0x8);
    client.tcp.shutdown(Shutdown::Write).unwrap();
    assert_eq!(dst_end(&mut backend), (Vec::new(), DstEnd::Fin));
}

#[test]
fn a_broken_mux_session_resets_every_stream() {
    let server = Server::start(&[]);
    let dst = Dst::new();
    let path = unique_path("mux");
    server.add(&path, dst.addr());
    let mut client = RecordClient::connect(&server, AES_128);
    client.upgrade(&path, "smux_on");
    let mut backends = Vec::new();
    for sid in [1u32, 3] {
        let mut frames = smux_frame(0, sid, b"");
        frames.extend(smux_frame(2, sid, b"data"));
        client.send_data(&masked_frame(0x2, &frames));
        let mut backend = dst.accept();
        let mut got = [0u8; 4];
        backend.read_exact(&mut got).unwrap();
        backends.push(backend);
    }
    let mut record = client.record(APPLICATION_DATA, &masked_frame(0x2, b"x"));
    record[7] ^= 0x80;
    client.send(&record);
    client.expect_alert_then_end(alert::BAD_RECORD_MAC);
    for backend in &mut backends {
        assert_eq!(dst_end(backend), (Vec::new(), DstEnd::Reset));
    }
}

#[test]
fn data_after_close_notify_in_the_finished_segment_is_ignored() {
    let server = Server::start(&[]);
    let mut client = RecordClient::handshake(&server, AES_128, true);
    let mut segment = std::mem::take(&mut client.held);
    assert!(!segment.is_empty(), "the Finished flight was held");
    segment.extend(client.data_records(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"));
    segment.extend(client.record(ALERT, &[1, alert::CLOSE_NOTIFY]));
    segment.extend(client.data_records(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"));
    client.send(&segment);
    let head = client.response_head();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Content-Length");
    client.fill_plain(length);
    client.plain.drain(..length);
    // No answer to the second request: close_notify, then the end.
    assert_eq!(client.receive(), Received::Alert(1, alert::CLOSE_NOTIFY));
    assert_eq!(client.receive(), Received::End);
    assert!(client.plain.is_empty());
}

#[test]
fn answers_in_the_http_phase_end_with_close_notify() {
    let server = Server::start(&[]);
    let requests = [
        (
            "GET /nobody HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_string(),
            "404",
        ),
        ("GET / HTTP/1.1\r\nHost a\r\n\r\n".to_string(), "400"),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
                "x".repeat(17000)
            ),
            "431",
        ),
    ];
    for (request, status) in requests {
        let mut client = RecordClient::connect(&server, AES_128);
        client.send_data(request.as_bytes());
        let head = client.response_head();
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head}");
        loop {
            match client.receive_skipping_updates() {
                Received::Data(_) => {}
                Received::Alert(1, alert::CLOSE_NOTIFY) => break,
                other => panic!("{status}: expected close_notify, got {other:?}"),
            }
        }
        assert_eq!(client.receive(), Received::End);
    }
}

// ---------------------------------------------------------------------------------------
// KeyUpdate.

/// Sends `message` through the tunnel, in its own frame, and reads its echo.
fn echo_round(client: &mut RecordClient, message: &[u8]) {
    client.send_data(&masked_frame(0x2, message));
    let mut got = Vec::new();
    while got.len() < message.len() {
        let (opcode, payload) = client.frame();
        assert_eq!(opcode, 0x2);
        got.extend_from_slice(&payload);
    }
    assert_eq!(got, message);
}

fn echo_tunnel(suite: SupportedCipherSuite) -> (Server, RecordClient) {
    let server = Server::start(&[]);
    let path = unique_path("echo");
    server.add(&path, echo_dst());
    let mut client = RecordClient::connect(&server, suite);
    client.upgrade(&path, "smux_off");
    (server, client)
}

#[test]
fn key_updates_with_and_without_request_are_followed_in_every_suite() {
    for suite in [AES_128, AES_256, CHACHA] {
        let (_server, mut client) = echo_tunnel(suite);
        echo_round(&mut client, b"before");
        // Not requested: the server follows ours, and does not answer.
        let update = client.key_update(false);
        client.send(&update);
        echo_round(&mut client, b"after an update");
        assert_eq!(client.key_updates_seen, 0, "{suite:?}");
        // Requested: the server's own KeyUpdate comes before its next data.
        let update = client.key_update(true);
        client.send(&update);
        client.send_data(&masked_frame(0x2, b"after a request"));
        assert_eq!(client.receive(), Received::KeyUpdate(false), "{suite:?}");
        let (_, payload) = client.frame();
        assert_eq!(payload, b"after a request");
        echo_round(&mut client, b"and on");
    }
}

#[test]
fn many_key_updates_in_a_row_are_followed_and_answered_once() {
    let (_server, mut client) = echo_tunnel(AES_128);
    let mut updates = Vec::new();
    for i in 0..MAX_RECORDS_WITHOUT_DATA {
        updates.extend(client.key_update(i % 2 == 0));
    }
    client.send(&updates);
    client.send_data(&masked_frame(0x2, b"after many"));
    assert_eq!(client.receive(), Received::KeyUpdate(false));
    let (_, payload) = client.frame();
    assert_eq!(payload, b"after many");

    // One more than that without data between is a flood.
    let (_server, mut client, mut backend) = tunnel(AES_128);
    let mut updates = Vec::new();
    for _ in 0..=MAX_RECORDS_WITHOUT_DATA {
        updates.extend(client.key_update(false));
    }
    client.send(&updates);
    client.expect_alert_then_end(alert::UNEXPECTED_MESSAGE);
    assert_eq!(dst_end(&mut backend), (Vec::new(), DstEnd::Reset));
}

#[test]
fn a_tunnel_outlives_the_sending_keys_record_limit() {
    if !cfg!(debug_assertions) {
        // Release builds keep the real limit (2^23 records): too many for a test.
        return;
    }
    let (_server, mut client) = echo_tunnel(AES_128);
    // Each round is one record each way; the client updates its key now and then too.
    let rounds = 2 * KEY_UPDATE_AFTER as usize + 100;
    for i in 0..rounds {
        if i % 700 == 699 {
            let update = client.key_update(false);
            client.send(&update);
        }
        echo_round(&mut client, format!("round {i}").as_bytes());
    }
    assert!(
        client.key_updates_seen >= 2,
        "{} key updates from the server in {rounds} records",
        client.key_updates_seen
    );
}

/// rustls' own client, refreshing its keys every so often, through an echo tunnel: both
/// directions cross several key updates, ours derived by our code, its by rustls.
#[test]
fn rustls_as_the_peer_agrees_on_every_key_update() {
    for suite in [AES_128, AES_256, CHACHA] {
        let server = Server::start(&[]);
        let path = unique_path("rustls");
        server.add(&path, echo_dst());
        let tcp = TcpStream::connect(server.data).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(client_config(suite), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&upgrade_request(&path, "smux_off")).unwrap();
        let mut inbox = Vec::new();
        let mut buf = vec![0u8; 65536];
        while !inbox.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut buf).unwrap();
            assert!(n > 0);
            inbox.extend_from_slice(&buf[..n]);
        }
        let end = inbox.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(inbox.starts_with(b"HTTP/1.1 101"));
        inbox.drain(..end);
        // 4 MiB each way in 1 KiB frames, so thousands of records either way. The echo
        // is checked byte by byte: frames come back joined or split as dst reads.
        let message: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        let mut echoed = 0usize;
        let take_echo = |inbox: &mut Vec<u8>, echoed: &mut usize| {
            while let Some((opcode, payload)) = take_frame(inbox) {
                assert_eq!(opcode, 0x2);
                for byte in payload {
                    assert_eq!(byte, message[*echoed % 1024], "{suite:?} at {echoed}");
                    *echoed += 1;
                }
            }
        };
        for i in 0..4096 {
            if i % 500 == 0 {
                tls.conn.refresh_traffic_keys().unwrap();
            }
            tls.write_all(&masked_frame(0x2, &message)).unwrap();
            // Let the echo catch up now and then (the windows are finite).
            while echoed + 64 * 1024 < (i + 1) * 1024 {
                let n = tls.read(&mut buf).unwrap();
                assert!(n > 0, "{suite:?}: the tunnel ended");
                inbox.extend_from_slice(&buf[..n]);
                take_echo(&mut inbox, &mut echoed);
            }
        }
        while echoed < 4096 * 1024 {
            let n = tls.read(&mut buf).unwrap();
            assert!(n > 0, "{suite:?}: the tunnel ended at {echoed}");
            inbox.extend_from_slice(&buf[..n]);
            take_echo(&mut inbox, &mut echoed);
        }
        assert_eq!(echoed, 4096 * 1024, "{suite:?}");
    }
}

/// OpenSSL (Python's `ssl`) as the peer: it must follow the KeyUpdates we send while
/// thousands of records go each way, and take our close_notify at its orderly shutdown.
#[test]
fn openssl_as_the_peer_follows_our_key_updates() {
    let server = Server::start(&[]);
    let path = unique_path("openssl");
    server.add(&path, echo_dst());
    let script = r#"
import socket, ssl, sys
port, path, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
s.settimeout(20)
s.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Protocol: smux_off\r\n\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(65536)
head, buf = buf.split(b"\r\n\r\n", 1)
assert head.startswith(b"HTTP/1.1 101"), head
def frames(buf):
    out = []
    while len(buf) >= 2:
        n, at = buf[1] & 0x7f, 2
        if n == 126:
            if len(buf) < 4: break
            n, at = int.from_bytes(buf[2:4], "big"), 4
        if len(buf) < at + n: break
        out.append(buf[at:at + n]); buf = buf[at + n:]
    return out, buf
for i in range(rounds):
    message = b"%08d" % i * 64
    # Masked with a zero key: the payload goes as it is.
    s.sendall(bytes([0x82, 0x80 | 126]) + len(message).to_bytes(2, "big") + b"\0\0\0\0" + message)
    got = b""
    while len(got) < len(message):
        payloads, buf = frames(buf)
        got += b"".join(payloads)
        if len(got) < len(message):
            chunk = s.recv(65536)
            assert chunk, "the tunnel ended"
            buf += chunk
    assert got == message, (i, got[:20])
s.unwrap()
print("ok")
"#;
    let rounds = 2 * KEY_UPDATE_AFTER.min(4096) + 100;
    let output = Command::new("python3")
        .args(["-c", script, &server.data.port().to_string(), &path])
        .arg(rounds.to_string())
        .output()
        .expect("python3");
    assert!(
        output.status.success() && output.stdout.starts_with(b"ok"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// TLS 1.2 goes through rustls' own stream, and keeps the same rule: a FIN without
/// close_notify resets `dst`, close_notify ends it cleanly.
#[test]
fn tls_12_truncation_resets_dst_and_close_notify_ends_it_cleanly() {
    let server = Server::start(&[]);
    let dst = Dst::new();
    let path = unique_path("tls12");
    server.add(&path, dst.addr());
    for orderly in [false, true] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth();
        let tcp = TcpStream::connect(server.data).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&upgrade_request(&path, "smux_off")).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tls.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        assert_eq!(
            tls.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        let mut backend = dst.accept();
        tls.write_all(&masked_frame(0x2, b"twelve")).unwrap();
        if orderly {
            tls.conn.send_close_notify();
            tls.flush().unwrap();
        }
        tls.sock.shutdown(Shutdown::Write).unwrap();
        let want = if orderly { DstEnd::Fin } else { DstEnd::Reset };
        assert_eq!(dst_end(&mut backend), (b"twelve".to_vec(), want));
    }
}

//! What the integration tests share: starting the real server binary on ephemeral loopback
//! ports, a blocking HTTP client for the controller, echo and scripted backends, and
//! WebSocket clients (tungstenite) over plain TCP and TLS.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;

/// Generous bound on anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running server process, killed when dropped.
pub struct Server {
    child: Child,
    pub data: SocketAddr,
    pub controller: SocketAddr,
    pub tls: bool,
    /// Everything the server wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server in plain mode with two workers.
    pub fn plain() -> Server {
        Server::start(&[])
    }

    /// Starts the server with a generated certificate and two workers.
    pub fn tls() -> Server {
        Server::start(&["-force-tls"])
    }

    /// Starts the server with these extra flags (and `-b`, `-c`, `-workers 2` unless given).
    pub fn start(extra: &[&str]) -> Server {
        let mut args: Vec<&str> = Vec::new();
        if !extra.contains(&"-b") {
            args.extend(["-b", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        Server::start_raw(&args)
    }

    /// Starts the server with these flags (and `-c`, `-workers 2` unless given), without
    /// adding a `-b`; `data` is 0.0.0.0:0 when the server has no TCP data listener.
    pub fn start_raw(extra: &[&str]) -> Server {
        let mut args: Vec<String> = Vec::new();
        if !extra.contains(&"-c") {
            args.extend(["-c".into(), "127.0.0.1:0".into()]);
        }
        if !extra.contains(&"-workers") {
            args.extend(["-workers".into(), "2".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_mtt-mu-server"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            let mut tx = Some(tx);
            while let Some(Ok(line)) = lines.next() {
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                if line.contains("ready:") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let ready = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {}", log.lock().unwrap());
            }
        };
        let field = |name: &str| -> SocketAddr {
            let value = ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {ready}"));
            if value == "none" {
                return SocketAddr::from(([0, 0, 0, 0], 0));
            }
            value.parse().unwrap()
        };
        Server {
            data: field("data="),
            controller: field("controller="),
            tls: ready.contains("mode=tls"),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`libc::SIGTERM`, ...) to the server process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits up to `timeout` for the process to exit; its exit code, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code());
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// POSTs a JSON body to the controller; returns the status and the parsed reply.
    pub fn post(&self, body: &str) -> (u16, serde_json::Value) {
        let (status, _, body) = http_request(
            self.controller,
            &format!(
                "POST / HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        (status, serde_json::from_slice(&body).expect("JSON reply"))
    }

    /// Adds users, asserting success.
    pub fn add(&self, users: &[(&str, SocketAddr)]) {
        let args: Vec<_> = users
            .iter()
            .map(|(p, d)| serde_json::json!({"path": p, "dst": d.to_string()}))
            .collect();
        let body = serde_json::json!({"opt": 1, "args_bunch": args}).to_string();
        let (status, reply) = self.post(&body);
        assert_eq!((status, reply["res"].as_u64()), (200, Some(1)), "{reply}");
    }

    pub fn del(&self, paths: &[&str]) {
        let args: Vec<_> = paths
            .iter()
            .map(|p| serde_json::json!({"path": p}))
            .collect();
        let body = serde_json::json!({"opt": 2, "args_bunch": args}).to_string();
        let (status, reply) = self.post(&body);
        assert_eq!((status, reply["res"].as_u64()), (200, Some(1)), "{reply}");
    }

    /// A client connection to the data port: TLS when the server listens TLS.
    pub fn connect(&self) -> Conn {
        let tcp = TcpStream::connect(self.data).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.set_nodelay(true).unwrap();
        if self.tls {
            Conn::Tls(Box::new(rustls::StreamOwned::new(tls_client(), tcp)))
        } else {
            Conn::Plain(tcp)
        }
    }

    /// A WebSocket to `path` offering these subprotocols.
    pub fn ws(&self, path: &str, protocols: &[&str]) -> Ws {
        try_ws(self.connect(), self.data, path, protocols).expect("websocket handshake")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type Ws = tungstenite::WebSocket<Conn>;

/// A WebSocket handshake over `conn`.
pub fn try_ws(
    conn: Conn,
    addr: SocketAddr,
    path: &str,
    protocols: &[&str],
) -> Result<Ws, tungstenite::Error> {
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols.join(", ").parse().unwrap(),
        );
    }
    match tungstenite::client(request, conn) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            panic!("blocking handshake interrupted")
        }
    }
}

/// A client stream, plain or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// The server's resident memory, in KiB.
pub fn rss_kib(server: &Server) -> u64 {
    soak::procfs::rss_kib(server.pid()).expect("VmRSS of the server")
}

/// A TLS client that accepts any certificate (the server's is self-signed) and offers no
/// ALPN, as mtt-client does.
pub fn tls_client() -> rustls::ClientConnection {
    tls_client_with(Vec::new())
}

pub fn tls_client_with(alpn: Vec<Vec<u8>>) -> rustls::ClientConnection {
    rustls::ClientConnection::new(tls_config(alpn), ServerName::try_from("localhost").unwrap())
        .unwrap()
}

/// A client configuration that accepts any certificate; its session cache lives as long as
/// it does, so connections made from one configuration resume.
pub fn tls_config(alpn: Vec<Vec<u8>>) -> Arc<rustls::ClientConfig> {
    tls_config_versions(alpn, rustls::DEFAULT_VERSIONS)
}

/// As [`tls_config`], limited to these TLS versions.
pub fn tls_config_versions(
    alpn: Vec<Vec<u8>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Arc::new(config)
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

/// Sends a raw request and reads one response: status, head, body (by Content-Length,
/// or to EOF).
pub fn http_request(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    read_response(&mut stream)
}

/// Reads one HTTP response from `stream`.
pub fn read_response<S: Read>(stream: &mut S) -> (u16, String, Vec<u8>) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            _ => panic!(
                "connection ended inside a response head: {:?}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    let head = String::from_utf8(raw).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let length = header(&head, "content-length").map(|v| v.parse::<usize>().unwrap());
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            stream.read_exact(&mut body).unwrap();
        }
        None if status != 101 => {
            let _ = stream.read_to_end(&mut body);
        }
        None => {}
    }
    (status, head, body)
}

/// The value of a header in a response head, by case-insensitive name.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// A backend that echoes every connection until EOF, then closes.
pub fn echo_backend() -> SocketAddr {
    backend(|mut stream| {
        let mut buf = [0u8; 65536];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = stream.shutdown(Shutdown::Write);
    })
}

/// A backend that runs `serve` on each accepted connection in its own thread.
pub fn backend<F>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let serve = Arc::clone(&serve);
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// A backend that hands each accepted connection to the test through a channel.
pub fn capture_backend() -> (SocketAddr, std::sync::mpsc::Receiver<TcpStream>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let addr = backend(move |stream| {
        let _ = tx.lock().unwrap().send(stream);
    });
    (addr, rx)
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A loopback address nothing listens on.
pub fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A unique path for a test.
pub fn unique_path(name: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("/{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sends an upgrade request for `path` over `conn` and reads the response head.
pub fn raw_upgrade<S: Read + Write>(conn: &mut S, path: &str, extra: &str) -> (u16, String) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Go-http-client/1.1\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n{extra}\r\n"
    );
    conn.write_all(request.as_bytes()).unwrap();
    let (status, head, _) = read_response(conn);
    (status, head)
}

/// A client frame: masked with a fixed key, any opcode, fin bit as given.
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(fin, opcode, payload, Some([0x37, 0xfa, 0x21, 0x3d]), 0)
}

/// A frame with full control: mask (None = unmasked) and RSV bits.
pub fn frame_with(
    fin: bool,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    rsv: u8,
) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads one server frame: (fin, opcode, payload). Panics if the server masked it.
pub fn read_frame<S: Read>(conn: &mut S) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    conn.read_exact(&mut head)?;
    assert_eq!(head[1] & 0x80, 0, "server frames must not be masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            conn.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            conn.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload)?;
    Ok((head[0] & 0x80 != 0, head[0] & 0x0f, payload))
}

/// Reads frames until a close frame; returns the data bytes before it and the close code.
pub fn read_until_close<S: Read>(conn: &mut S) -> (Vec<u8>, Option<u16>) {
    let mut data = Vec::new();
    loop {
        match read_frame(conn) {
            Ok((_, 0x8, payload)) => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return (data, code);
            }
            Ok((_, 0x9 | 0xA, _)) => {}
            Ok((_, _, payload)) => data.extend_from_slice(&payload),
            Err(e) => panic!(
                "connection ended before a close frame ({} bytes read): {e}",
                data.len()
            ),
        }
    }
}

/// Reads data frames until `n` payload bytes have arrived.
pub fn read_data<S: Read>(conn: &mut S, n: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(n);
    while data.len() < n {
        let (_, opcode, payload) = read_frame(conn).expect("frame");
        assert!(
            opcode == 0x2 || opcode == 0x0,
            "expected data, got opcode {opcode}"
        );
        data.extend_from_slice(&payload);
    }
    data
}

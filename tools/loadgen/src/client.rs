//! The client side of every protocol the load generator speaks: TCP (from a chosen source
//! address), TLS (rustls, resumption on or off), the WebSocket upgrade and client framing
//! (masked frames out, server frames in), and smux v1 framing inside the WebSocket byte
//! stream. Blocking std IO: one thread per connection when they are busy, none when idle.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

/// The name the client sends as SNI.
pub const SERVER_NAME: &str = "bench.local";
/// The masking key of every client frame. RFC 6455 wants it unpredictable; a load tool
/// only needs it to be applied, and a fixed key lets bulk frames be masked once up front.
pub const MASK: [u8; 4] = [0x3a, 0x91, 0x5c, 0xe7];

/// How a client reaches the relay under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Raw TCP to the backend or a TCP relay (the loopback baseline).
    Tcp,
    /// TLS, then the raw byte stream (HAProxy as a TLS-terminating relay).
    Tls,
    /// WebSocket over plain TCP (our server without TLS).
    Ws,
    /// WebSocket over TLS (our server, as mtt-client uses it).
    Wss,
}

impl Proto {
    pub fn parse(s: &str) -> Result<Proto, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "tls" => Ok(Proto::Tls),
            "ws" => Ok(Proto::Ws),
            "wss" => Ok(Proto::Wss),
            _ => Err(format!("unknown protocol {s:?} (tcp, tls, ws, wss)")),
        }
    }
    pub fn tls(self) -> bool {
        matches!(self, Proto::Tls | Proto::Wss)
    }
    pub fn websocket(self) -> bool {
        matches!(self, Proto::Ws | Proto::Wss)
    }
}

/// Accepts any certificate: the relays under test use a throwaway self-signed one, and
/// skipping the client's signature check keeps the client's CPU for the load.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}

/// What mtt-client negotiates (TLS 1.3, AES-128-GCM, X25519), so every relay does the same
/// cryptography. With `resume`, sessions are cached and resumed as mtt-client does.
pub fn tls_config(resume: bool) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with AES-128-GCM is a valid choice")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    config.resumption = if resume {
        Resumption::in_memory_sessions(4096)
    } else {
        Resumption::disabled()
    };
    Arc::new(config)
}

/// A connected byte stream, plain or TLS.
pub enum Transport {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Tcp(s) => s,
            Transport::Tls(s) => &s.sock,
        }
    }

    /// Whether the TLS handshake was a resumption (`None` without TLS).
    pub fn resumed(&self) -> Option<bool> {
        match self {
            Transport::Tcp(_) => None,
            Transport::Tls(s) => {
                Some(s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
            }
        }
    }

    /// Ends politely: TLS close_notify, then the TCP close when dropped.
    pub fn close(mut self) {
        if let Transport::Tls(s) = &mut self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.write_all(buf),
            Transport::Tls(s) => s.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

/// TCP connect from `source` (any port) when given. IP_BIND_ADDRESS_NO_PORT lets the
/// kernel pick the port at connect time, so each source address has the whole ephemeral
/// range towards each destination.
pub fn connect_tcp(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(10))?,
        Some(ip) => {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            let on: libc::c_int = 1;
            // SAFETY: setsockopt with a c_int option on a descriptor we own.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &on as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            socket.bind(&SocketAddr::new(ip, 0).into())?;
            socket.connect_timeout(&addr.into(), Duration::from_secs(10))?;
            socket.into()
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects and, for TLS protocols, completes the handshake.
pub fn connect(
    addr: SocketAddr,
    proto: Proto,
    tls: &Arc<ClientConfig>,
    source: Option<IpAddr>,
) -> io::Result<Transport> {
    let mut tcp = connect_tcp(addr, source)?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    if !proto.tls() {
        return Ok(Transport::Tcp(tcp));
    }
    let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
    let mut conn = ClientConnection::new(Arc::clone(tls), name).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(Transport::Tls(Box::new(StreamOwned::new(conn, tcp))))
}

/// The WebSocket upgrade to `path` asking for `protocol`, as mtt-client sends it. Returns
/// the bytes that came after the `101` head (the start of the server's frames).
pub fn upgrade(t: &mut Transport, path: &str, protocol: &str) -> io::Result<Vec<u8>> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nUser-Agent: Go-http-client/1.1\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {protocol}\r\nSec-WebSocket-Version: 13\r\n\
         Upgrade: websocket\r\n\r\n"
    );
    t.write_all(request.as_bytes())?;
    t.flush()?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = t.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during upgrade",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&head[..head.len().min(60)]).into_owned();
                return Err(io::Error::other(format!("upgrade refused: {line}")));
            }
            return Ok(head.split_off(end + 4));
        }
        if head.len() > 16384 {
            return Err(io::Error::other("oversized upgrade response"));
        }
    }
}

/// Appends a masked binary client frame carrying `payload`.
pub fn ws_frame(payload: &[u8], out: &mut Vec<u8>) {
    ws_frame_with(0x2, payload, out)
}

/// Appends a masked client frame with this opcode.
pub fn ws_frame_with(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    soak::ws::push_frame(out, true, opcode, payload, MASK);
}

/// What the server sent next.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Payload bytes of a data frame, at this range of [`Reader::buf`].
    Data(Range<usize>),
    /// A close frame.
    Close,
    /// The connection ended.
    Eof,
}

/// Reads a byte stream, raw or as WebSocket server frames, yielding payload in place.
pub struct Reader {
    pub buf: Vec<u8>,
    start: usize,
    end: usize,
    websocket: bool,
    /// Payload bytes of the current frame not yet handed out.
    remaining: u64,
    /// The current frame is a ping or pong: its payload is skipped, not handed out.
    discard: bool,
}

impl Reader {
    pub fn new(websocket: bool, early: Vec<u8>) -> Reader {
        let mut buf = vec![0u8; 256 * 1024];
        buf[..early.len()].copy_from_slice(&early);
        Reader {
            buf,
            start: 0,
            end: early.len(),
            websocket,
            remaining: 0,
            discard: false,
        }
    }

    fn fill(&mut self, t: &mut Transport) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = t.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n > 0)
    }

    /// The next piece of payload (or the end).
    pub fn next(&mut self, t: &mut Transport) -> io::Result<Chunk> {
        loop {
            if !self.websocket {
                if self.start < self.end {
                    let r = self.start..self.end;
                    self.start = self.end;
                    return Ok(Chunk::Data(r));
                }
                if !self.fill(t)? {
                    return Ok(Chunk::Eof);
                }
                continue;
            }
            if self.remaining > 0 && self.start < self.end {
                let k = (self.remaining as usize).min(self.end - self.start);
                let r = self.start..self.start + k;
                self.start += k;
                self.remaining -= k as u64;
                if self.discard {
                    continue;
                }
                return Ok(Chunk::Data(r));
            }
            if self.remaining == 0 {
                let avail = &self.buf[self.start..self.end];
                if avail.len() >= 2 {
                    let b1 = avail[1];
                    let masked = b1 & 0x80 != 0;
                    let (len_bytes, mut len) = match b1 & 0x7f {
                        126 => (2, 0),
                        127 => (8, 0),
                        n => (0, u64::from(n)),
                    };
                    let hdr = 2 + len_bytes + if masked { 4 } else { 0 };
                    if avail.len() >= hdr {
                        for &b in &avail[2..2 + len_bytes] {
                            len = len << 8 | u64::from(b);
                        }
                        let opcode = avail[0] & 0x0f;
                        self.start += hdr;
                        if opcode == 0x8 {
                            return Ok(Chunk::Close);
                        }
                        // A ping or pong's payload is skipped (the server never pings).
                        self.discard = opcode >= 0x8;
                        self.remaining = len;
                        continue;
                    }
                }
            }
            if !self.fill(t)? {
                return Ok(Chunk::Eof);
            }
        }
    }
}

/// smux v1 command bytes.
pub const SYN: u8 = 0;
pub const FIN: u8 = 1;
pub const PSH: u8 = 2;

/// Appends one smux frame header.
pub fn smux_header(cmd: u8, sid: u32, len: u16, out: &mut Vec<u8>) {
    out.push(1);
    out.push(cmd);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&sid.to_le_bytes());
}

/// Appends one smux frame as one masked WebSocket frame.
pub fn smux_in_ws(cmd: u8, sid: u32, payload: &[u8], out: &mut Vec<u8>) {
    let mut frame = Vec::with_capacity(8 + payload.len());
    smux_header(cmd, sid, payload.len() as u16, &mut frame);
    frame.extend_from_slice(payload);
    ws_frame(&frame, out);
}

/// What came in for a smux stream.
#[derive(Debug, PartialEq, Eq)]
pub enum SmuxEvent {
    Data { sid: u32, len: usize },
    Fin(u32),
    Other,
}

/// Decodes the smux frames inside a WebSocket payload stream (payload only counted, not
/// kept: the load generator needs sizes, plus the first byte for acknowledgements).
#[derive(Default)]
pub struct SmuxDecoder {
    hdr: [u8; 8],
    hdr_len: usize,
    remaining: usize,
    sid: u32,
    psh: bool,
}

impl SmuxDecoder {
    /// Feeds `data`, calling `on` for each event.
    pub fn feed(&mut self, mut data: &[u8], mut on: impl FnMut(SmuxEvent, &[u8])) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let k = self.remaining.min(data.len());
                if self.psh {
                    on(
                        SmuxEvent::Data {
                            sid: self.sid,
                            len: k,
                        },
                        &data[..k],
                    );
                }
                self.remaining -= k;
                data = &data[k..];
                continue;
            }
            let k = (8 - self.hdr_len).min(data.len());
            self.hdr[self.hdr_len..self.hdr_len + k].copy_from_slice(&data[..k]);
            self.hdr_len += k;
            data = &data[k..];
            if self.hdr_len < 8 {
                return;
            }
            self.hdr_len = 0;
            let cmd = self.hdr[1];
            self.remaining = usize::from(u16::from_le_bytes([self.hdr[2], self.hdr[3]]));
            self.sid = u32::from_le_bytes([self.hdr[4], self.hdr[5], self.hdr[6], self.hdr[7]]);
            self.psh = cmd == PSH;
            match cmd {
                FIN => on(SmuxEvent::Fin(self.sid), &[]),
                PSH => {}
                _ => on(SmuxEvent::Other, &[]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_frame_masks_payload_and_picks_length_encoding() {
        for (len, header) in [(5usize, 6usize), (200, 8), (70_000, 14)] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            ws_frame(&payload, &mut out);
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x82);
            assert_eq!(out[1] & 0x80, 0x80, "client frames are masked");
            assert_eq!(&out[header - 4..header], &MASK);
            let body: Vec<u8> = out[header..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i & 3])
                .collect();
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn smux_decoder_survives_any_split() {
        let mut stream = Vec::new();
        smux_header(SYN, 1, 0, &mut stream);
        smux_header(PSH, 1, 5, &mut stream);
        stream.extend_from_slice(b"hello");
        smux_header(3, 0, 0, &mut stream);
        smux_header(PSH, 3, 2, &mut stream);
        stream.extend_from_slice(b"hi");
        smux_header(FIN, 1, 0, &mut stream);
        for split in 1..stream.len() {
            let mut decoder = SmuxDecoder::default();
            let mut data: Vec<(u32, Vec<u8>)> = Vec::new();
            let mut fins = Vec::new();
            let mut others = 0;
            for chunk in stream.chunks(split) {
                decoder.feed(chunk, |event, bytes| match event {
                    SmuxEvent::Data { sid, len } => {
                        assert_eq!(len, bytes.len());
                        match data.last_mut() {
                            Some((s, d)) if *s == sid => d.extend_from_slice(bytes),
                            _ => data.push((sid, bytes.to_vec())),
                        }
                    }
                    SmuxEvent::Fin(sid) => fins.push(sid),
                    SmuxEvent::Other => others += 1,
                });
            }
            assert_eq!(data, vec![(1, b"hello".to_vec()), (3, b"hi".to_vec())]);
            assert_eq!(fins, vec![1]);
            assert_eq!(others, 2, "SYN and NOP");
        }
    }
}

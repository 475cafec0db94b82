//! The client side of every protocol the load generator speaks: TCP (from a chosen source
//! address), TLS as mtt-client negotiates it (resumption on or off), the WebSocket upgrade,
//! bulk-friendly framing (one fixed mask, smux frames packed into WebSocket frames), and a
//! reader that hands out payload in place. The TLS client, the frame and smux encoders and
//! the smux decoder are the kit's (`testkit`). Blocking std IO: one thread per connection
//! when they are busy, none when idle.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::ClientConfig;
use testkit::smux::push_smux;
pub use testkit::smux::{SmuxDecoder, SmuxEvent, FIN, PSH, SYN};
use testkit::tls::Signatures;
pub use testkit::tls::Transport;

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

/// What mtt-client negotiates (TLS 1.3, AES-128-GCM, X25519), so every relay does the same
/// cryptography. With `resume`, sessions are cached and resumed as mtt-client does.
pub fn tls_config(resume: bool) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    // The relays under test use a throwaway self-signed certificate, and skipping the
    // client's signature check keeps the client's CPU for the load.
    let mut config =
        testkit::tls::client_config(provider, &[&rustls::version::TLS13], Signatures::Skip);
    config.resumption = if resume {
        Resumption::in_memory_sessions(4096)
    } else {
        Resumption::disabled()
    };
    Arc::new(config)
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
    let tcp = connect_tcp(addr, source)?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    if !proto.tls() {
        return Ok(Transport::Tcp(tcp));
    }
    let mut t = Transport::tls(tcp, testkit::tls::client(Arc::clone(tls), SERVER_NAME));
    t.handshake()?;
    Ok(t)
}

/// The WebSocket upgrade to `path` asking for `protocol`, as mtt-client sends it, with the
/// `101` checked. Returns the bytes that came after the `101` head (the start of the
/// server's frames).
pub fn upgrade(t: &mut Transport, path: &str, protocol: &str) -> io::Result<Vec<u8>> {
    // The key's value does not matter to a load test; one seed keeps every run alike.
    testkit::ws::upgrade(t, path, protocol, &mut testkit::rng::Rng::new(1))
}

/// Appends a masked binary client frame carrying `payload`.
pub fn ws_frame(payload: &[u8], out: &mut Vec<u8>) {
    ws_frame_with(0x2, payload, out)
}

/// Appends a masked client frame with this opcode.
pub fn ws_frame_with(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    testkit::ws::push_frame(out, true, opcode, payload, MASK);
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

/// Appends one smux frame as one masked WebSocket frame.
pub fn smux_in_ws(cmd: u8, sid: u32, payload: &[u8], out: &mut Vec<u8>) {
    let mut frame = Vec::with_capacity(8 + payload.len());
    push_smux(&mut frame, cmd, sid, payload);
    ws_frame(&frame, out);
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
}

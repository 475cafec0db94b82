//! Client side of RFC 6455: frames out (masked, or with any header field wrong on purpose),
//! server frames in (strictly checked, a frame at a time or in place), and the upgrade
//! (raw, checked, or through tungstenite for tests that want a whole client).
//!
//! Not here: the smux frames carried inside the byte stream ([`crate::smux`]).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::ops::Range;

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::rng::Rng;
use crate::tls::Transport;

/// Opcode of a continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong.
pub const OP_PONG: u8 = 0xA;

/// The masking key of [`masked_frame`]: fixed, so a test's bytes are the same every run.
pub const TEST_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Appends one frame with every header field as given: `rsv` is the three RSV bits (0 to
/// 7), `mask` `None` for an unmasked frame (which a server must refuse). The length takes
/// its shortest encoding.
pub fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    out.push((u8::from(fin) << 7) | (rsv << 4) | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n <= 125 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = out.len() + mask.map_or(0, |key| key.len());
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        for (i, b) in out[start..].iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
    }
}

/// Appends one masked client frame.
pub fn push_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    encode_frame(out, fin, 0, opcode, Some(mask), payload);
}

/// A client frame: masked with [`TEST_MASK`], any opcode, fin bit as given.
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(fin, opcode, payload, Some(TEST_MASK), 0)
}

/// A frame with full control: mask (`None` = unmasked) and RSV bits.
pub fn frame_with(
    fin: bool,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    rsv: u8,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + payload.len());
    encode_frame(&mut out, fin, rsv, opcode, mask, payload);
    out
}

/// A frame header with a 64-bit length field (whatever the length), masked with `key`:
/// for lengths no real payload follows.
pub fn long_header(opcode: u8, len: u64, key: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&key);
    out
}

/// A close frame's payload: the code, then the reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(reason);
    out
}

/// Appends `data` as one binary message cut into 1 to 3 frames at random points, with a
/// ping between two of them now and then (`ping_one_in`: 0 = never). Returns the ping
/// payloads sent, in order: their pongs must come back.
pub fn push_message(
    out: &mut Vec<u8>,
    data: &[u8],
    rng: &mut Rng,
    ping_one_in: u64,
) -> Vec<Vec<u8>> {
    let mut pings = Vec::new();
    let pieces = if data.len() >= 3 {
        rng.range(1, 3) as usize
    } else {
        1
    };
    let mut cuts: Vec<usize> = (1..pieces)
        .map(|_| rng.range(0, data.len() as u64) as usize)
        .collect();
    cuts.sort_unstable();
    cuts.push(data.len());
    let mut at = 0;
    for (i, &end) in cuts.iter().enumerate() {
        let opcode = if i == 0 { OP_BINARY } else { OP_CONT };
        push_frame(out, i + 1 == cuts.len(), opcode, &data[at..end], rng.mask());
        at = end;
        if ping_one_in > 0 && rng.chance(1, ping_one_in) {
            let mut payload = vec![0u8; rng.range(0, 16) as usize];
            for b in payload.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            push_frame(out, true, OP_PING, &payload, rng.mask());
            pings.push(payload);
        }
    }
    pings
}

/// Appends a close frame with this code.
pub fn push_close(out: &mut Vec<u8>, code: u16, rng: &mut Rng) {
    push_frame(out, true, OP_CLOSE, &code.to_be_bytes(), rng.mask());
}

/// What the server sent next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Payload bytes of a data frame, at this range of [`WsReader::buf`].
    Data(Range<usize>),
    /// A ping, with its payload.
    Ping(Vec<u8>),
    /// A pong, with its payload.
    Pong(Vec<u8>),
    /// A close frame, with its code if it had one.
    Close(Option<u16>),
    /// The connection ended at a frame boundary.
    Eof,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads server frames, handing out data payload in place as it arrives.
pub struct WsReader {
    /// The bytes read; [`Event::Data`] ranges point into it.
    pub buf: Vec<u8>,
    /// Where the bytes not handed out yet begin in `buf`.
    start: usize,
    /// Where the bytes read end in `buf`.
    end: usize,
    /// Payload bytes of the current data frame not handed out yet.
    remaining: u64,
    /// Inside a fragmented message (a continuation frame is expected next).
    in_message: bool,
}

impl WsReader {
    /// A reader that starts with `early`, the bytes that came after the `101` head.
    pub fn new(early: &[u8]) -> WsReader {
        let mut buf = vec![0u8; 64 * 1024];
        buf[..early.len()].copy_from_slice(early);
        WsReader {
            buf,
            start: 0,
            end: early.len(),
            remaining: 0,
            in_message: false,
        }
    }

    /// Reads more; false at the end of the stream.
    fn fill(&mut self, r: &mut impl Read) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        match r.read(&mut self.buf[self.end..]) {
            Ok(n) => {
                self.end += n;
                Ok(n > 0)
            }
            // rustls reports a TCP close without close_notify this way.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The next event from the server, reading from `r` as needed.
    pub fn next(&mut self, r: &mut impl Read) -> io::Result<Event> {
        loop {
            if self.remaining > 0 {
                if self.start < self.end {
                    let k = (self.remaining as usize).min(self.end - self.start);
                    let range = self.start..self.start + k;
                    self.start += k;
                    self.remaining -= k as u64;
                    return Ok(Event::Data(range));
                }
                if !self.fill(r)? {
                    return Err(bad("connection ended inside a data frame"));
                }
                continue;
            }
            if let Some(event) = self.parse()? {
                match event {
                    Some(e) => return Ok(e),
                    None => continue,
                }
            }
            if !self.fill(r)? {
                return if self.start == self.end {
                    Ok(Event::Eof)
                } else {
                    Err(bad("connection ended inside a frame header"))
                };
            }
        }
    }

    /// Parses a frame header at `start`: `None` if more bytes are needed; `Some(None)` when
    /// a data frame began (its payload follows); `Some(Some(event))` for a whole control
    /// frame.
    fn parse(&mut self) -> io::Result<Option<Option<Event>>> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (avail[0], avail[1]);
        if b0 & 0x70 != 0 {
            return Err(bad(format!("server frame with reserved bits {b0:#04x}")));
        }
        if b1 & 0x80 != 0 {
            return Err(bad("masked server frame"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let (ext, mut len) = match b1 & 0x7f {
            126 => (2, 0u64),
            127 => (8, 0u64),
            n => (0, u64::from(n)),
        };
        if avail.len() < 2 + ext {
            return Ok(None);
        }
        for &b in &avail[2..2 + ext] {
            len = len << 8 | u64::from(b);
        }
        let hdr = 2 + ext;
        match opcode {
            0x0..=0x2 => {
                if (opcode == 0) != self.in_message {
                    return Err(bad(format!("server frame opcode {opcode} out of sequence")));
                }
                self.in_message = !fin;
                self.start += hdr;
                self.remaining = len;
                Ok(Some(None))
            }
            0x8..=0xA => {
                if !fin || len > 125 {
                    return Err(bad("bad server control frame"));
                }
                let len = len as usize;
                if avail.len() < hdr + len {
                    return Ok(None);
                }
                let payload = avail[hdr..hdr + len].to_vec();
                self.start += hdr + len;
                Ok(Some(Some(match opcode {
                    0x8 => {
                        if payload.len() == 1 {
                            return Err(bad("close frame with a 1-byte payload"));
                        }
                        Event::Close(
                            (payload.len() >= 2)
                                .then(|| u16::from_be_bytes([payload[0], payload[1]])),
                        )
                    }
                    0x9 => Event::Ping(payload),
                    _ => Event::Pong(payload),
                })))
            }
            _ => Err(bad(format!("server frame with unknown opcode {opcode}"))),
        }
    }
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Upgrades to a WebSocket on `path` offering `protocol`; checks the `101`, the accept key
/// and the selected subprotocol. Returns the bytes received after the head.
pub fn upgrade(
    t: &mut (impl Read + Write),
    path: &str,
    protocol: &str,
    rng: &mut Rng,
) -> io::Result<Vec<u8>> {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    nonce[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Go-http-client/1.1\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    );
    t.write_all(request.as_bytes())?;
    t.flush()?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    let end = loop {
        let n = t.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the upgrade",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if head.len() > 16384 {
            return Err(io::Error::other("oversized upgrade response"));
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        return Err(io::Error::other(format!("upgrade refused: {status}")));
    }
    let header = |name: &str| -> Option<String> {
        text.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("Sec-WebSocket-Accept").as_deref() != Some(accept_key(&key).as_str()) {
        return Err(io::Error::other("101 with a wrong Sec-WebSocket-Accept"));
    }
    if header("Sec-WebSocket-Protocol").as_deref() != Some(protocol) {
        return Err(io::Error::other(format!(
            "101 selected subprotocol {:?}, asked {protocol}",
            header("Sec-WebSocket-Protocol")
        )));
    }
    Ok(head.split_off(end + 4))
}

/// An upgrade request for `path`: what a WebSocket client sends, minus the headers named in
/// `omit`, plus the `extra` header lines.
pub fn upgrade_request(
    method: &str,
    path: &str,
    version: &str,
    omit: &[&str],
    extra: &str,
) -> String {
    let standard = [
        ("Host", "example.com"),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let mut out = format!("{method} {path} {version}\r\n");
    for (name, value) in standard {
        if !omit.contains(&name) {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str(extra);
    out.push_str("\r\n");
    out
}

/// Sends an upgrade request for `path` over `conn` and reads the response head.
pub fn raw_upgrade<S: Read + Write>(conn: &mut S, path: &str, extra: &str) -> (u16, String) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Go-http-client/1.1\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n{extra}\r\n"
    );
    conn.write_all(request.as_bytes()).unwrap();
    let (status, head, _) = crate::http::read_response(conn);
    (status, head)
}

/// A tungstenite client over a [`Transport`].
pub type Ws = tungstenite::WebSocket<Transport>;

/// A WebSocket handshake over `conn`.
pub fn try_ws(
    conn: Transport,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Unmasks client frames (what the server does), returning data payload and pings.
    fn unframe(mut b: &[u8]) -> (Vec<u8>, usize) {
        let (mut data, mut pings) = (Vec::new(), 0);
        while !b.is_empty() {
            let op = b[0] & 0x0f;
            let (ext, mut len) = match b[1] & 0x7f {
                126 => (2, 0usize),
                127 => (8, 0usize),
                n => (0, n as usize),
            };
            for &x in &b[2..2 + ext] {
                len = len << 8 | x as usize;
            }
            let mask = &b[2 + ext..6 + ext];
            let p: Vec<u8> = b[6 + ext..6 + ext + len]
                .iter()
                .enumerate()
                .map(|(i, x)| x ^ mask[i & 3])
                .collect();
            if op == OP_PING {
                pings += 1;
            } else {
                data.extend_from_slice(&p);
            }
            b = &b[6 + ext + len..];
        }
        (data, pings)
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frame_masks_payload_and_picks_length_encoding() {
        for (len, header) in [(5usize, 6usize), (200, 8), (70_000, 14)] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let out = masked_frame(true, OP_BINARY, &payload);
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x82);
            assert_eq!(out[1] & 0x80, 0x80, "client frames are masked");
            assert_eq!(&out[header - 4..header], &TEST_MASK);
            let (data, _) = unframe(&out);
            assert_eq!(data, payload);
        }
        let unmasked = frame_with(false, OP_TEXT, b"hi", None, 0b100);
        assert_eq!(unmasked, vec![0x41, 2, b'h', b'i']);
    }

    #[test]
    fn messages_round_trip() {
        let mut rng = Rng::new(9);
        for len in [0usize, 1, 2, 3, 125, 126, 65535, 65536, 100_000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            let pings = push_message(&mut out, &data, &mut rng, 2);
            let (got, n) = unframe(&out);
            assert_eq!(got, data);
            assert_eq!(n, pings.len());
        }
    }

    #[test]
    fn reader_splits_frames_and_controls() {
        let mut s = vec![
            0x01, 3, b'a', b'b', b'c', 0x89, 1, 7, 0x80, 2, b'd', b'e', 0x88, 2, 3, 232,
        ];
        s.extend_from_slice(&[0x82, 126, 0, 200]);
        s.extend(std::iter::repeat_n(5u8, 200));
        let mut r = WsReader::new(&[]);
        let mut src: &[u8] = &s;
        let mut data = Vec::new();
        let mut events = Vec::new();
        loop {
            match r.next(&mut src).unwrap() {
                Event::Data(range) => data.extend_from_slice(&r.buf[range]),
                Event::Eof => break,
                e => events.push(e),
            }
        }
        assert_eq!(&data[..5], b"abcde");
        assert_eq!(data.len(), 205);
        assert_eq!(events, vec![Event::Ping(vec![7]), Event::Close(Some(1000))]);
        let mut masked: &[u8] = &[0x82, 0x81, 0, 0, 0, 0, 1];
        assert!(WsReader::new(&[]).next(&mut masked).is_err());
    }
}

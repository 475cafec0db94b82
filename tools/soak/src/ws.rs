//! Client side of RFC 6455 framing (masked frames out, strictly checked server frames in)
//! and of xtaci/smux v1 framing inside the WebSocket byte stream.

use std::io::{self, Read};
use std::ops::Range;

use crate::prng::Rng;

pub const OP_CONT: u8 = 0x0;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Appends one masked client frame.
pub fn push_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let len = payload.len();
    if len <= 125 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
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
    Ping(Vec<u8>),
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
    pub buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Payload bytes of the current data frame not handed out yet.
    remaining: u64,
    /// Inside a fragmented message (a continuation frame is expected next).
    in_message: bool,
}

impl WsReader {
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

pub const SMUX_SYN: u8 = 0;
pub const SMUX_FIN: u8 = 1;
pub const SMUX_PSH: u8 = 2;
pub const SMUX_NOP: u8 = 3;

/// Appends one smux v1 frame.
pub fn push_smux(out: &mut Vec<u8>, cmd: u8, sid: u32, payload: &[u8]) {
    debug_assert!(payload.len() <= 0xFFFF);
    out.push(1);
    out.push(cmd);
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(&sid.to_le_bytes());
    out.extend_from_slice(payload);
}

/// What the smux decoder found.
#[derive(Debug, PartialEq, Eq)]
pub enum SmuxEvent<'a> {
    Syn(u32),
    Fin(u32),
    /// Part (or all) of a PSH payload.
    Data(u32, &'a [u8]),
    Nop,
}

/// Decodes smux frames from the WebSocket payload stream, cut anywhere.
#[derive(Default)]
pub struct SmuxDecoder {
    hdr: [u8; 8],
    hdr_len: usize,
    remaining: usize,
    sid: u32,
}

impl SmuxDecoder {
    /// Feeds `data`, calling `on` for each event; an error for a wrong version or command.
    pub fn feed(&mut self, mut data: &[u8], mut on: impl FnMut(SmuxEvent<'_>)) -> io::Result<()> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let k = self.remaining.min(data.len());
                on(SmuxEvent::Data(self.sid, &data[..k]));
                self.remaining -= k;
                data = &data[k..];
                continue;
            }
            let k = (8 - self.hdr_len).min(data.len());
            self.hdr[self.hdr_len..self.hdr_len + k].copy_from_slice(&data[..k]);
            self.hdr_len += k;
            data = &data[k..];
            if self.hdr_len < 8 {
                return Ok(());
            }
            self.hdr_len = 0;
            let h = self.hdr;
            if h[0] != 1 {
                return Err(bad(format!("server smux frame with version {}", h[0])));
            }
            let len = usize::from(u16::from_le_bytes([h[2], h[3]]));
            let sid = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            match h[1] {
                SMUX_PSH => {
                    self.sid = sid;
                    self.remaining = len;
                }
                SMUX_SYN | SMUX_FIN | SMUX_NOP if len != 0 => {
                    return Err(bad(format!("server smux cmd {} with a payload", h[1])));
                }
                SMUX_SYN => on(SmuxEvent::Syn(sid)),
                SMUX_FIN => on(SmuxEvent::Fin(sid)),
                SMUX_NOP => on(SmuxEvent::Nop),
                c => return Err(bad(format!("server smux frame with cmd {c}"))),
            }
        }
        Ok(())
    }
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

    #[test]
    fn smux_decoder_handles_any_cut() {
        let mut s = Vec::new();
        push_smux(&mut s, SMUX_PSH, 3, b"hello");
        push_smux(&mut s, SMUX_NOP, 0, b"");
        push_smux(&mut s, SMUX_FIN, 3, b"");
        for cut in 0..s.len() {
            let mut d = SmuxDecoder::default();
            let mut got = Vec::new();
            let mut ev = Vec::new();
            for part in [&s[..cut], &s[cut..]] {
                d.feed(part, |e| match e {
                    SmuxEvent::Data(sid, b) => {
                        assert_eq!(sid, 3);
                        got.extend_from_slice(b)
                    }
                    SmuxEvent::Fin(sid) => ev.push(sid),
                    _ => {}
                })
                .unwrap();
            }
            assert_eq!(got, b"hello");
            assert_eq!(ev, vec![3]);
        }
        let mut d = SmuxDecoder::default();
        assert!(d.feed(&[2, 2, 0, 0, 1, 0, 0, 0], |_| {}).is_err());
    }
}

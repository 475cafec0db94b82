//! xtaci/smux v1 framing inside the WebSocket byte stream, client side: frames out (well
//! formed, or with any header field wrong on purpose), and the server's frames in, either
//! streamed as events ([`SmuxDecoder`], cut anywhere, for the tools) or whole, one
//! WebSocket frame read at a time ([`MuxReader`], for the tests).

use std::io::{self, Read, Write};

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// smux command: open a stream.
pub const SYN: u8 = 0;
/// smux command: end a stream.
pub const FIN: u8 = 1;
/// smux command: stream data.
pub const PSH: u8 = 2;
/// smux command: nothing (keep-alive).
pub const NOP: u8 = 3;

/// Appends one smux frame with every header field as given (`len` need not be
/// `payload`'s, nor `ver` 1: hostile tests lie in them).
pub fn encode_smux(out: &mut Vec<u8>, ver: u8, cmd: u8, len: u16, sid: u32, payload: &[u8]) {
    out.push(ver);
    out.push(cmd);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&sid.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends one well-formed smux v1 frame.
pub fn push_smux(out: &mut Vec<u8>, cmd: u8, sid: u32, payload: &[u8]) {
    debug_assert!(payload.len() <= 0xFFFF);
    encode_smux(out, 1, cmd, payload.len() as u16, sid, payload);
}

/// What the smux decoder found.
#[derive(Debug, PartialEq, Eq)]
pub enum SmuxEvent<'a> {
    /// The server opened this stream (a client-side server never should).
    Syn(u32),
    /// The server ended this stream.
    Fin(u32),
    /// Part (or all) of a PSH payload.
    Data(u32, &'a [u8]),
    /// A keep-alive.
    Nop,
}

/// Decodes smux frames from the WebSocket payload stream, cut anywhere.
#[derive(Default)]
pub struct SmuxDecoder {
    /// The frame header being read (it may arrive cut anywhere).
    hdr: [u8; 8],
    /// How much of `hdr` has arrived.
    hdr_len: usize,
    /// Payload bytes of the current PSH not handed out yet.
    remaining: usize,
    /// The stream of the current PSH.
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
                PSH => {
                    self.sid = sid;
                    self.remaining = len;
                }
                SYN | FIN | NOP if len != 0 => {
                    return Err(bad(format!("server smux cmd {} with a payload", h[1])));
                }
                SYN => on(SmuxEvent::Syn(sid)),
                FIN => on(SmuxEvent::Fin(sid)),
                NOP => on(SmuxEvent::Nop),
                c => return Err(bad(format!("server smux frame with cmd {c}"))),
            }
        }
        Ok(())
    }
}

/// An smux v1 frame with any header fields.
pub fn smux_with(ver: u8, cmd: u8, len: u16, sid: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    encode_smux(&mut out, ver, cmd, len, sid, payload);
    out
}

/// An smux v1 frame, version 1, its length that of `payload`.
pub fn smux(cmd: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
    smux_with(1, cmd, payload.len() as u16, sid, payload)
}

/// What the server sent in a mux session.
#[derive(Debug, PartialEq, Eq)]
pub enum FromServer {
    /// One whole smux frame (NOPs are skipped).
    Smux {
        /// The smux command.
        cmd: u8,
        /// The stream.
        sid: u32,
        /// The payload, whole.
        payload: Vec<u8>,
    },
    /// A WebSocket pong, with its payload.
    Pong(Vec<u8>),
    /// A WebSocket close frame, with its code if it had one.
    Close(Option<u16>),
}

/// The FIN of stream `sid`, as [`MuxReader`] gives it.
pub fn fin(sid: u32) -> FromServer {
    FromServer::Smux {
        cmd: FIN,
        sid,
        payload: Vec::new(),
    }
}

/// Reads smux frames out of the server's WebSocket byte stream (frame boundaries mean
/// nothing), skipping NOPs.
#[derive(Default)]
pub struct MuxReader {
    /// The WebSocket payload bytes not yet parsed into a whole smux frame.
    buf: Vec<u8>,
}

impl MuxReader {
    /// The next thing the server sent; panics on anything that is not a WebSocket
    /// data, pong or close frame.
    pub fn next<S: Read>(&mut self, conn: &mut S) -> FromServer {
        loop {
            if self.buf.len() >= 8 {
                let len = u16::from_le_bytes([self.buf[2], self.buf[3]]) as usize;
                if self.buf.len() >= 8 + len {
                    assert_eq!(self.buf[0], 1, "smux version of a server frame");
                    let cmd = self.buf[1];
                    let sid =
                        u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
                    let payload = self.buf[8..8 + len].to_vec();
                    self.buf.drain(..8 + len);
                    if cmd == NOP {
                        continue;
                    }
                    return FromServer::Smux { cmd, sid, payload };
                }
            }
            let (_, opcode, payload) =
                crate::ws::read_frame(conn).expect("a frame from the server");
            match opcode {
                0x0 | 0x2 => self.buf.extend_from_slice(&payload),
                0xA => return FromServer::Pong(payload),
                0x8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return FromServer::Close(code);
                }
                other => panic!("unexpected opcode {other:#x} in a mux session"),
            }
        }
    }

    /// Pings the session and returns the frames that came before the pong: proof that the
    /// session still reads and answers.
    pub fn ping<S: Read + Write>(&mut self, conn: &mut S) -> Vec<FromServer> {
        conn.write_all(&crate::ws::masked_frame(true, 0x9, b"alive?"))
            .unwrap();
        let mut before = Vec::new();
        loop {
            match self.next(conn) {
                FromServer::Pong(p) if p == b"alive?" => return before,
                FromServer::Close(code) => panic!("session closed ({code:?}) instead of a pong"),
                other => before.push(other),
            }
        }
    }

    /// Reads `n` bytes of stream `sid`; any other frame fails the test.
    pub fn read_stream<S: Read>(&mut self, conn: &mut S, sid: u32, n: usize) -> Vec<u8> {
        let mut data = Vec::new();
        while data.len() < n {
            match self.next(conn) {
                FromServer::Smux {
                    cmd: PSH,
                    sid: s,
                    payload,
                } if s == sid => data.extend_from_slice(&payload),
                other => panic!("expected data of stream {sid}, got {other:?}"),
            }
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smux_decoder_handles_any_cut() {
        let mut s = Vec::new();
        push_smux(&mut s, PSH, 3, b"hello");
        push_smux(&mut s, NOP, 0, b"");
        push_smux(&mut s, FIN, 3, b"");
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

    #[test]
    fn smux_decoder_survives_any_split() {
        let mut stream = Vec::new();
        push_smux(&mut stream, SYN, 1, b"");
        push_smux(&mut stream, PSH, 1, b"hello");
        push_smux(&mut stream, NOP, 0, b"");
        push_smux(&mut stream, PSH, 3, b"hi");
        push_smux(&mut stream, FIN, 1, b"");
        for split in 1..stream.len() {
            let mut decoder = SmuxDecoder::default();
            let mut data: Vec<(u32, Vec<u8>)> = Vec::new();
            let mut fins = Vec::new();
            let mut others = 0;
            for chunk in stream.chunks(split) {
                decoder
                    .feed(chunk, |event| match event {
                        SmuxEvent::Data(sid, bytes) => match data.last_mut() {
                            Some((s, d)) if *s == sid => d.extend_from_slice(bytes),
                            _ => data.push((sid, bytes.to_vec())),
                        },
                        SmuxEvent::Fin(sid) => fins.push(sid),
                        SmuxEvent::Syn(_) | SmuxEvent::Nop => others += 1,
                    })
                    .unwrap();
            }
            assert_eq!(data, vec![(1, b"hello".to_vec()), (3, b"hi".to_vec())]);
            assert_eq!(fins, vec![1]);
            assert_eq!(others, 2, "SYN and NOP");
        }
    }
}

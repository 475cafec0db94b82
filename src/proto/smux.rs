//! The smux protocol version 1 wire codec (xtaci/smux, as spoken by mtt-client
//! with `-mux`): an 8-byte frame header `ver u8 | cmd u8 | length u16 LE | sid
//! u32 LE` followed by `length` payload bytes. This module owns only the
//! framing: a streaming [`Decoder`] that turns the WebSocket payload byte
//! stream (in which smux frames straddle WebSocket frames at arbitrary places)
//! into [`Event`]s without copying payload bytes, and [`encode_header`] for
//! frames going out. It does no IO and keeps no session state: stream tables,
//! the 16-stream limit, keepalive timers, back-pressure and dialing `dst` belong
//! to the session code that drives it. Version 2 (`UPD` window updates) is not
//! supported: in a version 1 session it is a protocol error.

use std::ops::Range;

/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 8;

/// The protocol version this codec speaks (and the only one it accepts).
pub const VERSION: u8 = 1;

/// Largest payload a single frame can carry (the length field is a `u16`).
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// A frame command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// 0: open a stream.
    Syn,
    /// 1: close a stream (the sender's EOF).
    Fin,
    /// 2: data for a stream.
    Psh,
    /// 3: keepalive, no operation.
    Nop,
}

impl Cmd {
    /// The command's byte on the wire.
    pub const fn to_u8(self) -> u8 {
        match self {
            Cmd::Syn => 0,
            Cmd::Fin => 1,
            Cmd::Psh => 2,
            Cmd::Nop => 3,
        }
    }

    /// The command for a wire byte; `None` for 4 (`UPD`, version 2 only) and
    /// anything above.
    pub const fn from_u8(b: u8) -> Option<Cmd> {
        match b {
            0 => Some(Cmd::Syn),
            1 => Some(Cmd::Fin),
            2 => Some(Cmd::Psh),
            3 => Some(Cmd::Nop),
            _ => None,
        }
    }
}

/// A protocol violation. Either one ends the session; the decoder stays
/// failed and returns the same error on every later call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmuxError {
    /// A header whose version byte is not 1.
    BadVersion(u8),
    /// A header whose command byte is not SYN, FIN, PSH or NOP.
    BadCmd(u8),
}

impl std::fmt::Display for SmuxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SmuxError::BadVersion(v) => write!(f, "smux: bad version {v}"),
            SmuxError::BadCmd(c) => write!(f, "smux: bad command {c}"),
        }
    }
}

impl std::error::Error for SmuxError {}

/// What the decoder found in the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer opens stream `sid`.
    Syn(u32),
    /// The peer closes stream `sid`.
    Fin(u32),
    /// A keepalive.
    Nop,
    /// Payload bytes of a PSH for stream `sid`, at `range` of the slice passed
    /// to [`Decoder::decode`]. A frame's payload may come out in several
    /// pieces (as its bytes arrive); a piece is never empty.
    Data {
        /// The stream the bytes belong to.
        sid: u32,
        /// Where the bytes are in the slice passed in.
        range: Range<usize>,
    },
}

/// A streaming smux v1 decoder. It holds at most one partial header (8 bytes)
/// and the position inside the current frame's payload; payload bytes are
/// never copied, only pointed at.
///
/// SYN, FIN and NOP frames with a non-zero length have their payload consumed
/// and ignored (no event for it). A PSH with length 0 yields no event.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    /// Bytes of a header that arrived split across calls.
    hdr: [u8; HEADER_LEN],
    /// How many of `hdr` are filled.
    hdr_len: u8,
    /// Payload bytes of the current frame still to come (0: at a header).
    remaining: u16,
    /// Stream of the current PSH payload.
    sid: u32,
    /// The current payload is a PSH's (emit it) rather than one to skip.
    psh: bool,
    /// Set by a protocol error; sticky.
    failed: Option<SmuxError>,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes from `buf`, the next bytes of the stream. Returns the next
    /// event (if any) and how many bytes of `buf` were consumed; the caller
    /// drops `buf[..consumed]` and calls again with the rest (plus whatever
    /// arrives next).
    ///
    /// `Ok((None, n))` means more input is needed, and then always
    /// `n == buf.len()`: everything was consumed (header bytes are kept
    /// inside the decoder). `Ok((Some(_), n))` has `n >= 1`; for
    /// [`Event::Data`] the range lies within `buf[..n]`.
    pub fn decode(&mut self, buf: &[u8]) -> Result<(Option<Event>, usize), SmuxError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut pos = 0;
        loop {
            // Inside a payload: hand PSH bytes out, skip any other.
            if self.remaining > 0 {
                let k = (self.remaining as usize).min(buf.len() - pos);
                if k == 0 {
                    return Ok((None, pos));
                }
                self.remaining -= k as u16;
                let start = pos;
                pos += k;
                if self.psh {
                    let ev = Event::Data {
                        sid: self.sid,
                        range: start..pos,
                    };
                    return Ok((Some(ev), pos));
                }
                continue;
            }

            // At a header: take it straight from `buf` when it is all there.
            let hdr: [u8; HEADER_LEN] = if self.hdr_len == 0 && buf.len() - pos >= HEADER_LEN {
                let mut h = [0; HEADER_LEN];
                h.copy_from_slice(&buf[pos..pos + HEADER_LEN]);
                pos += HEADER_LEN;
                h
            } else {
                let have = self.hdr_len as usize;
                let k = (HEADER_LEN - have).min(buf.len() - pos);
                self.hdr[have..have + k].copy_from_slice(&buf[pos..pos + k]);
                self.hdr_len += k as u8;
                pos += k;
                if (self.hdr_len as usize) < HEADER_LEN {
                    return Ok((None, pos));
                }
                self.hdr_len = 0;
                self.hdr
            };

            if hdr[0] != VERSION {
                return Err(*self.failed.insert(SmuxError::BadVersion(hdr[0])));
            }
            let Some(cmd) = Cmd::from_u8(hdr[1]) else {
                return Err(*self.failed.insert(SmuxError::BadCmd(hdr[1])));
            };
            let len = u16::from_le_bytes([hdr[2], hdr[3]]);
            let sid = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            self.remaining = len;
            self.sid = sid;
            self.psh = cmd == Cmd::Psh;
            let ev = match cmd {
                Cmd::Syn => Event::Syn(sid),
                Cmd::Fin => Event::Fin(sid),
                Cmd::Nop => Event::Nop,
                // Its payload (if any) comes out at the top of the loop.
                Cmd::Psh => continue,
            };
            return Ok((Some(ev), pos));
        }
    }

    /// True between frames: no partial header and no payload pending. A
    /// stream that ends when this is false ended inside a frame.
    pub fn at_frame_boundary(&self) -> bool {
        self.hdr_len == 0 && self.remaining == 0
    }
}

/// Writes the header of a frame: version 1, `cmd`, payload length `len`,
/// stream `sid`. The `len` payload bytes follow it on the wire.
pub fn encode_header(cmd: Cmd, sid: u32, len: u16, out: &mut [u8; HEADER_LEN]) {
    out[0] = VERSION;
    out[1] = cmd.to_u8();
    out[2..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&sid.to_le_bytes());
}

#[cfg(test)]
mod tests;

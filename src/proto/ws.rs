//! Server-side RFC 6455 WebSocket frame codec.
//!
//! This module owns the byte-level WebSocket framing of the tunnel: decoding the
//! frames a client sends (validating every rule of RFC 6455 section 5 and
//! unmasking data payload in place inside the caller's buffer, so the relay can
//! forward it without a copy), encoding the headers of the unmasked frames the
//! server sends, and the close status codes. It deliberately does no IO and no
//! async, performs the opening handshake nowhere (`Sec-WebSocket-Accept` lives in
//! `http.rs`) and never assembles messages: payloads of any size stream through
//! as ranges of the caller's buffer, and only control frame payloads (at most
//! 125 bytes) are held inside the [`Decoder`].

use std::fmt;
use std::ops::Range;

/// Largest payload a control frame may carry (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest header a server frame needs: 2 bytes plus an 8-byte extended length
/// (server frames are never masked).
pub const MAX_SERVER_HEADER: usize = 10;

/// Largest reason a close frame can carry: the control payload limit minus the
/// two bytes of the status code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// A frame opcode (RFC 6455 section 5.2); reserved opcodes have no variant
/// because the decoder rejects them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: a further fragment of the message in progress.
    Continuation,
    /// 0x1: the first frame of a UTF-8 text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: the closing handshake.
    Close,
    /// 0x9: a keep-alive request that must be answered with a pong.
    Ping,
    /// 0xA: a keep-alive answer (or an unsolicited heartbeat).
    Pong,
}

impl OpCode {
    /// The 4-bit wire value of this opcode, used when encoding a header.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// The opcode for a 4-bit wire value, or `None` for reserved values, so the
    /// decoder can reject them.
    pub fn from_u8(value: u8) -> Option<OpCode> {
        match value {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// Whether this is a control opcode (close, ping, pong), which has its own
    /// rules: no fragmentation and at most 125 payload bytes.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// Close status codes we send (RFC 6455 section 7.4.1).
pub mod close_code {
    /// The purpose of the connection has been fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down (or the client navigated away).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer violated the framing protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message or close reason was not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message violated the server's policy (e.g. an unauthorised user).
    pub const POLICY: u16 = 1008;
    /// A message was too big to process.
    pub const TOO_BIG: u16 = 1009;
    /// The server hit an unexpected condition (e.g. the backend failed).
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// Whether `code` may appear in a close frame on the wire: 1000-1003,
/// 1007-1011 and the registered/private range 3000-4999. Codes such as 1005,
/// 1006 and 1015 are reserved for local use and must never be sent.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Why decoding stopped for good; each maps to the close code the RFC names,
/// which the relay sends before tearing the tunnel down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A client frame without the mask bit (RFC 6455 section 5.1).
    Unmasked,
    /// RSV1, RSV2 or RSV3 set although no extension was negotiated.
    ReservedBits,
    /// A reserved opcode (0x3-0x7, 0xB-0xF); carries the opcode for logging.
    BadOpcode(u8),
    /// A control frame announcing more than 125 payload bytes.
    ControlTooLong,
    /// A control frame with FIN clear (control frames cannot be fragmented).
    FragmentedControl,
    /// A continuation frame while no fragmented message was in progress.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message was in progress.
    ExpectedContinuation,
    /// A 64-bit payload length with its most significant bit set.
    LengthOverflow,
    /// A close payload of exactly one byte, or a status code not allowed on
    /// the wire (see [`is_valid_close_code`]).
    BadClosePayload,
    /// Invalid UTF-8 in a text message or in a close reason.
    InvalidUtf8,
}

impl ProtocolError {
    /// The close status code to send for this error: 1007 for invalid UTF-8,
    /// 1002 for every framing violation.
    pub fn close_code(self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8 => close_code::INVALID_DATA,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Unmasked => f.write_str("unmasked client frame"),
            ProtocolError::ReservedBits => f.write_str("reserved bits set"),
            ProtocolError::BadOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::ControlTooLong => f.write_str("control frame longer than 125 bytes"),
            ProtocolError::FragmentedControl => f.write_str("fragmented control frame"),
            ProtocolError::UnexpectedContinuation => {
                f.write_str("continuation frame outside of a message")
            }
            ProtocolError::ExpectedContinuation => {
                f.write_str("new data frame inside a fragmented message")
            }
            ProtocolError::LengthOverflow => f.write_str("64-bit payload length has its MSB set"),
            ProtocolError::BadClosePayload => f.write_str("invalid close frame payload"),
            ProtocolError::InvalidUtf8 => f.write_str("invalid UTF-8"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// What one call of [`Decoder::decode`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Unmasked application payload bytes (from a text, binary or continuation
    /// frame), in place in the caller's buffer at this range (relative to the
    /// slice passed in). Never empty.
    Data(Range<usize>),
    /// A complete ping; its payload is available via
    /// [`Decoder::control_payload`] until the next decode call.
    Ping,
    /// A complete pong (the relay ignores it); its payload is available via
    /// [`Decoder::control_payload`] until the next decode call.
    Pong,
    /// A complete close frame from the client: the status code (`None` when the
    /// payload was empty); the reason bytes (valid UTF-8) are
    /// `control_payload()[2..]`. The decoder would go on decoding after it; the
    /// relay is expected to answer with a close frame and stop reading.
    Close(Option<u16>),
}

/// Which kind of data message is in progress, so continuation frames can be
/// checked and text payload can be UTF-8 validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Message {
    /// Between messages: only text, binary or control frames may start.
    Idle,
    /// A text message whose final frame has not been fully consumed yet.
    Text,
    /// A binary message whose final frame has not been fully consumed yet.
    Binary,
}

/// Incremental decoder for the frames a client sends.
///
/// It keeps only fixed-size state (well under 200 bytes; every tunnel holds
/// one), never allocates, and accepts input split at arbitrary points: header
/// bytes and control payloads are absorbed into the decoder, so the caller can
/// always discard the consumed prefix of its buffer.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// Payload of the control frame being received (or just completed), because
    /// a ping must be echoed and a close inspected even when it arrives split
    /// across reads.
    ctrl: [u8; MAX_CONTROL_PAYLOAD],
    /// How many bytes of `ctrl` are filled (and unmasked).
    ctrl_len: u8,
    /// Payload bytes of the current frame not consumed yet; while the header is
    /// being read it accumulates the extended length.
    remaining: u64,
    /// Masking key of the current frame, needed for every payload byte.
    mask: [u8; 4],
    /// Index into `mask` of the next payload byte, because a data frame's
    /// payload is unmasked in pieces across calls.
    phase: u8,
    /// How many header bytes of the current frame have been absorbed, so a
    /// header may be split across reads.
    hdr_pos: u8,
    /// Total header length of the current frame (2 until the second byte tells
    /// the length encoding, then 6, 8 or 14).
    hdr_need: u8,
    /// Opcode of the current frame, to route its payload and finish it.
    opcode: OpCode,
    /// FIN bit of the current frame, to know when a data message ends.
    fin: bool,
    /// Whether the header is complete and payload bytes are being consumed.
    in_payload: bool,
    /// Data message in progress, which survives interleaved control frames.
    message: Message,
    /// Trailing bytes of an incomplete UTF-8 sequence of the text message in
    /// progress, because a character may be split across frames and reads.
    utf8: [u8; 3],
    /// How many bytes of `utf8` are pending (0 to 3).
    utf8_len: u8,
    /// The error that ended decoding, returned again by any later call so a
    /// careless caller cannot resynchronise on garbage.
    failed: Option<ProtocolError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder expecting the first frame header of a connection.
    pub fn new() -> Self {
        Decoder {
            ctrl: [0; MAX_CONTROL_PAYLOAD],
            ctrl_len: 0,
            remaining: 0,
            mask: [0; 4],
            phase: 0,
            hdr_pos: 0,
            hdr_need: 2,
            opcode: OpCode::Continuation,
            fin: false,
            in_payload: false,
            message: Message::Idle,
            utf8: [0; 3],
            utf8_len: 0,
            failed: None,
        }
    }

    /// Decode from `buf` (the not-yet-consumed client bytes).
    ///
    /// Returns `(event, consumed)`: `consumed` bytes of `buf` are used up and
    /// must not be passed again; the rest must be passed to the next call.
    /// `Ok((None, consumed))` means more input is needed and then `consumed ==
    /// buf.len()` always: partial headers and partial control payloads are
    /// absorbed into the decoder, so the caller may reuse its whole buffer.
    /// A call that returns an event consumes at least one byte, so a loop that
    /// feeds `buf[consumed..]` back in always terminates.
    ///
    /// Data payload is unmasked in place: after `Ok((Some(Event::Data(r)), _))`
    /// the bytes `buf[r]` are the plain application data.
    ///
    /// Errors are final: after `Err`, every call returns the same error and the
    /// caller should send a close frame with [`ProtocolError::close_code`].
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<(Option<Event>, usize), ProtocolError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let result = self.decode_inner(buf);
        if let Err(err) = result {
            self.failed = Some(err);
        }
        result
    }

    /// The payload of the ping, pong or close frame just returned by
    /// [`Decoder::decode`]; only meaningful until the next decode call.
    pub fn control_payload(&self) -> &[u8] {
        &self.ctrl[..usize::from(self.ctrl_len)]
    }

    /// Whether a data message is in progress: its first frame has been seen
    /// and its final frame has not been fully consumed. Between frames this is
    /// true exactly while a fragmented message awaits continuation frames.
    pub fn in_message(&self) -> bool {
        self.message != Message::Idle
    }

    fn decode_inner(&mut self, buf: &mut [u8]) -> Result<(Option<Event>, usize), ProtocolError> {
        let mut pos = 0;
        loop {
            if !self.in_payload {
                while self.hdr_pos < self.hdr_need {
                    let Some(&b) = buf.get(pos) else {
                        return Ok((None, pos));
                    };
                    self.header_byte(b)?;
                    pos += 1;
                }
                if let Some(event) = self.start_payload()? {
                    return Ok((Some(event), pos));
                }
                // Either payload follows or an empty data frame was finished.
                continue;
            }

            let rest = &mut buf[pos..];
            if rest.is_empty() {
                return Ok((None, pos));
            }
            let n = usize::try_from(self.remaining).map_or(rest.len(), |r| r.min(rest.len()));
            // In bounds: `n <= rest.len()` by construction.
            let chunk = &mut rest[..n];
            self.remaining -= n as u64;

            if self.opcode.is_control() {
                let start = usize::from(self.ctrl_len);
                // Always in bounds: `ctrl_len + remaining <= 125` for a control
                // frame (checked in the header); `get_mut` just avoids a panic path.
                if let Some(dst) = self.ctrl.get_mut(start..start + n) {
                    dst.copy_from_slice(chunk);
                    apply_mask(dst, self.mask, start);
                }
                // A control payload is at most 125 bytes, so this cannot truncate.
                self.ctrl_len = (start + n).min(MAX_CONTROL_PAYLOAD) as u8;
                pos += n;
                if self.remaining != 0 {
                    return Ok((None, pos));
                }
                return self.finish_frame().map(|event| (event, pos));
            }

            apply_mask(chunk, self.mask, usize::from(self.phase));
            self.phase = ((usize::from(self.phase) + n) & 3) as u8;
            if self.message == Message::Text {
                self.check_utf8(chunk)?;
            }
            let range = pos..pos + n;
            pos += n;
            if self.remaining == 0 {
                // Finishing a data frame never produces an event of its own.
                self.finish_frame()?;
            }
            return Ok((Some(Event::Data(range)), pos));
        }
    }

    /// Absorb one header byte, rejecting a bad frame as early as possible.
    fn header_byte(&mut self, b: u8) -> Result<(), ProtocolError> {
        match self.hdr_pos {
            0 => {
                if b & 0x70 != 0 {
                    return Err(ProtocolError::ReservedBits);
                }
                let raw = b & 0x0F;
                let opcode = OpCode::from_u8(raw).ok_or(ProtocolError::BadOpcode(raw))?;
                let fin = b & 0x80 != 0;
                match opcode {
                    _ if opcode.is_control() => {
                        if !fin {
                            return Err(ProtocolError::FragmentedControl);
                        }
                    }
                    OpCode::Continuation => {
                        if self.message == Message::Idle {
                            return Err(ProtocolError::UnexpectedContinuation);
                        }
                    }
                    _ => {
                        if self.message != Message::Idle {
                            return Err(ProtocolError::ExpectedContinuation);
                        }
                    }
                }
                self.opcode = opcode;
                self.fin = fin;
            }
            1 => {
                if b & 0x80 == 0 {
                    return Err(ProtocolError::Unmasked);
                }
                let (remaining, ext) = match b & 0x7F {
                    126 => (0, 2),
                    127 => (0, 8),
                    n => (u64::from(n), 0),
                };
                self.remaining = remaining;
                self.hdr_need = 2 + ext + 4;
                if ext == 0 {
                    self.check_control_len()?;
                }
            }
            pos => {
                let ext = self.hdr_need - 6;
                let i = pos - 2;
                if i < ext {
                    if ext == 8 && i == 0 && b & 0x80 != 0 {
                        return Err(ProtocolError::LengthOverflow);
                    }
                    self.remaining = (self.remaining << 8) | u64::from(b);
                    if i + 1 == ext {
                        // Checked on the value, not the encoding: a control frame
                        // with a non-minimal length encoding is tolerated.
                        self.check_control_len()?;
                    }
                } else {
                    self.mask[usize::from(i - ext) & 3] = b;
                }
            }
        }
        self.hdr_pos += 1;
        Ok(())
    }

    /// Reject a control frame whose (now known) payload length exceeds 125.
    fn check_control_len(&self) -> Result<(), ProtocolError> {
        if self.opcode.is_control() && self.remaining > MAX_CONTROL_PAYLOAD as u64 {
            return Err(ProtocolError::ControlTooLong);
        }
        Ok(())
    }

    /// The header is complete: set up payload consumption, finishing the frame
    /// right away when its payload is empty.
    fn start_payload(&mut self) -> Result<Option<Event>, ProtocolError> {
        self.in_payload = true;
        self.phase = 0;
        match self.opcode {
            OpCode::Text => self.message = Message::Text,
            OpCode::Binary => self.message = Message::Binary,
            OpCode::Continuation => {}
            OpCode::Close | OpCode::Ping | OpCode::Pong => self.ctrl_len = 0,
        }
        if self.remaining == 0 {
            self.finish_frame()
        } else {
            Ok(None)
        }
    }

    /// The payload of the current frame is fully consumed: expect a new header
    /// and report a control frame (data frames report nothing).
    fn finish_frame(&mut self) -> Result<Option<Event>, ProtocolError> {
        self.in_payload = false;
        self.hdr_pos = 0;
        self.hdr_need = 2;
        match self.opcode {
            OpCode::Ping => Ok(Some(Event::Ping)),
            OpCode::Pong => Ok(Some(Event::Pong)),
            OpCode::Close => self.close_event().map(Some),
            OpCode::Continuation | OpCode::Text | OpCode::Binary => {
                if self.fin {
                    self.message = Message::Idle;
                    if self.utf8_len != 0 {
                        // The text message ended inside a character.
                        return Err(ProtocolError::InvalidUtf8);
                    }
                }
                Ok(None)
            }
        }
    }

    /// Validate the complete close payload (RFC 6455 sections 5.5.1, 7.4).
    fn close_event(&self) -> Result<Event, ProtocolError> {
        match self.control_payload() {
            [] => Ok(Event::Close(None)),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !is_valid_close_code(code) {
                    return Err(ProtocolError::BadClosePayload);
                }
                std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
                Ok(Event::Close(Some(code)))
            }
            [_] => Err(ProtocolError::BadClosePayload),
        }
    }

    /// Validate the next unmasked piece of a text message, carrying an
    /// incomplete trailing character over to the next piece.
    fn check_utf8(&mut self, mut data: &[u8]) -> Result<(), ProtocolError> {
        if self.utf8_len != 0 {
            // Complete the pending character first, byte budget from its lead byte.
            let have = usize::from(self.utf8_len).min(3);
            let width: usize = match self.utf8[0] {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = width.saturating_sub(have).min(data.len());
            let mut seq = [0u8; 4];
            seq[..have].copy_from_slice(&self.utf8[..have]);
            seq[have..have + take].copy_from_slice(&data[..take]);
            let seq = &seq[..have + take];
            match std::str::from_utf8(seq) {
                Ok(_) => self.utf8_len = 0,
                Err(e) if e.error_len().is_some() => return Err(ProtocolError::InvalidUtf8),
                Err(_) => {
                    // Still incomplete, which means `data` is used up.
                    return self.keep_utf8_tail(seq);
                }
            }
            data = &data[take..];
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(ProtocolError::InvalidUtf8),
            Err(e) => self.keep_utf8_tail(&data[e.valid_up_to()..]),
        }
    }

    /// Remember the (valid so far) incomplete character at the end of a piece.
    fn keep_utf8_tail(&mut self, tail: &[u8]) -> Result<(), ProtocolError> {
        // An incomplete UTF-8 character is at most 3 bytes long.
        let dst = self
            .utf8
            .get_mut(..tail.len())
            .ok_or(ProtocolError::InvalidUtf8)?;
        dst.copy_from_slice(tail);
        self.utf8_len = tail.len() as u8;
        Ok(())
    }
}

/// The header length [`encode_header`] produces for `len` payload bytes:
/// 2, 4 or 10.
pub fn header_len(len: u64) -> usize {
    if len <= 125 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    }
}

/// Write a server frame header (FIN set, never masked, minimal length
/// encoding) for `len` payload bytes into `out`; returns its length (2, 4 or
/// 10). `len` must be below 2^63, which any in-memory length is.
pub fn encode_header(opcode: OpCode, len: u64, out: &mut [u8; MAX_SERVER_HEADER]) -> usize {
    out[0] = 0x80 | opcode.as_u8();
    if len <= 125 {
        out[1] = len as u8;
        2
    } else if len <= 0xFFFF {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    }
}

/// Append a whole server frame (header and payload) to `out`, for control
/// frames and small data frames. Control payloads must not exceed 125 bytes
/// (the caller's responsibility: this only encodes).
pub fn encode_frame(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let n = encode_header(opcode, payload.len() as u64, &mut header);
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

/// Append a whole close frame to `out`: header, `code` big-endian, then
/// `reason` truncated on a char boundary to fit the 123 bytes a control frame
/// leaves for it.
pub fn encode_close(code: u16, reason: &str, out: &mut Vec<u8>) {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    out.reserve(2 + 2 + reason.len());
    out.extend_from_slice(&[0x80 | OpCode::Close.as_u8(), (2 + reason.len()) as u8]);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// XOR `data` with `mask`, where `data[0]` is byte `offset` of the payload (so
/// the mask phase is `offset % 4`). Masking and unmasking are the same
/// operation. This is the hot loop of the relay: it works on 8-byte words,
/// which LLVM turns into unrolled SIMD (measured faster than `u128` words,
/// which it keeps as scalar pairs), then bytewise for the tail.
#[inline]
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let s = offset & 3;
    // `m[i % 4]` is the key byte for `data[i]`.
    let m = [
        mask[s],
        mask[(s + 1) & 3],
        mask[(s + 2) & 3],
        mask[(s + 3) & 3],
    ];
    let m32 = u32::from_ne_bytes(m);
    let word = u64::from(m32) | (u64::from(m32) << 32);
    // A native-endian load and store of the same word make this a plain
    // byte-wise XOR whatever the endianness; 8 is a multiple of 4, so the
    // phase is the same at the start of every chunk.
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        if let Ok(bytes) = <&mut [u8; 8]>::try_from(chunk) {
            *bytes = (u64::from_ne_bytes(*bytes) ^ word).to_ne_bytes();
        }
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i & 3];
    }
}

#[cfg(test)]
mod tests;

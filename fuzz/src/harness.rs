//! Contract checks for the pure parsers and codecs of `mtt-mu-server`: the request-head
//! reader and route key (`http`), the WebSocket frame decoder (`ws`), the smux v1 decoder
//! (`smux`) and the controller's command parser (`controller`).
//!
//! Shared by the cargo-fuzz targets in `fuzz/fuzz_targets/` (as the library of the fuzz
//! crate) and by `tests/it/properties.rs` (which includes this file with `#[path]`), so the
//! fuzzers and the property tests hold the code to the same contracts. Every check panics
//! on a violation, which both libFuzzer and proptest report with the input.
//!
//! Streaming decoders are fed the way the server feeds them: a read's worth of bytes at a
//! time, cut at positions the fuzzer chooses (see [`split_input`]), and the result must not
//! depend on where the cuts fall.

use std::collections::HashSet;
use std::fmt;

use mtt_mu_server::controller::{self, Command, CommandError, Limits, NewUser};
use mtt_mu_server::http::{self, HeadError, RequestHead};
use mtt_mu_server::routes::Route;
use mtt_mu_server::{smux, ws};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Cutting input into reads
// ---------------------------------------------------------------------------------------

/// Splits a fuzz input into (cut positions, data): the first two bytes seed the cuts of the
/// rest. The low 3 bits of the first byte pick the largest chunk (1, 2, 3, 5, 8, 17 or 200
/// bytes, or 7: no cut at all), the rest of the seed the sizes, empty chunks included.
pub fn split_input(input: &[u8]) -> (Vec<usize>, &[u8]) {
    match input {
        [a, b, data @ ..] => (
            cuts_from_seed(u16::from_le_bytes([*a, *b]), data.len()),
            data,
        ),
        _ => (Vec::new(), input),
    }
}

/// Sorted cut positions in `0..=len` (repeats mean empty reads) derived from `seed`.
pub fn cuts_from_seed(seed: u16, len: usize) -> Vec<usize> {
    let max = [1u64, 2, 3, 5, 8, 17, 200, 0][usize::from(seed & 7)];
    if max == 0 {
        return Vec::new();
    }
    let mut state = (u64::from(seed) << 16 | 0x9E37) | 1;
    let mut cuts = Vec::new();
    let mut pos = 0;
    while pos < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        pos = (pos + (state % (max + 1)) as usize).min(len);
        cuts.push(pos);
    }
    cuts
}

/// The chunks `[0, c1), [c1, c2), ..., [cn, len)` of `len` bytes for (possibly unsorted,
/// out of range) cut positions.
fn chunk_ranges(cuts: &[usize], len: usize) -> Vec<std::ops::Range<usize>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(len)).collect();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for end in cuts.into_iter().chain(std::iter::once(len)) {
        out.push(start..end);
        start = end;
    }
    out
}

// ---------------------------------------------------------------------------------------
// The fuzz targets' bodies
// ---------------------------------------------------------------------------------------

/// `http_head`: two bytes that choose the read cuts, then the bytes of a connection. The
/// head's target, and the data itself when it is UTF-8, also go through the route key
/// checks.
pub fn fuzz_http_head(input: &[u8]) {
    let (cuts, data) = split_input(input);
    let _ = http_check(data, &cuts);
    if let Ok(target) = std::str::from_utf8(data) {
        let _ = route_key_check(target);
    }
}

/// `ws_decoder`: two bytes that choose the read cuts, then the client's bytes after the
/// upgrade.
pub fn fuzz_ws_decoder(input: &[u8]) {
    let (cuts, data) = split_input(input);
    let _ = ws_check(data, &cuts);
}

/// `smux_decoder`: two bytes that choose the read cuts, then the smux byte stream.
pub fn fuzz_smux_decoder(input: &[u8]) {
    let (cuts, data) = split_input(input);
    let _ = smux_check(data, &cuts);
}

/// `controller_command`: the request body, whole (the controller reads the complete
/// Content-Length before it parses, so there is no streaming state to cut). The same body
/// wrapped in JSON white space must mean the same.
pub fn fuzz_controller_command(body: &[u8]) {
    let got = controller_check(body);
    let mut padded = b" \r\n\t".to_vec();
    padded.extend_from_slice(body);
    padded.extend_from_slice(b"\n ");
    let padded = controller_check(&padded);
    assert!(
        same_command_outcome(&padded, &got),
        "white space around the body changed its meaning: {padded:?} vs {got:?}"
    );
}

// ---------------------------------------------------------------------------------------
// WebSocket frame decoder
// ---------------------------------------------------------------------------------------

/// A decoded WebSocket event with the bytes it refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// Unmasked application data; adjacent pieces merged, never empty.
    Data(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// Status code and reason bytes.
    Close(Option<u16>, Vec<u8>),
}

/// Everything a decoder produced from one stream: events, then the error that ended it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsOutcome {
    pub events: Vec<WsEvent>,
    pub error: Option<ws::ProtocolError>,
}

/// Appends `ev`, merging adjacent data (reads cut data anywhere) and dropping empty data.
pub fn push_ws(events: &mut Vec<WsEvent>, ev: WsEvent) {
    match (events.last_mut(), ev) {
        (_, WsEvent::Data(d)) if d.is_empty() => {}
        (Some(WsEvent::Data(prev)), WsEvent::Data(d)) => prev.extend_from_slice(&d),
        (_, ev) => events.push(ev),
    }
}

/// Decodes `stream` read by read (cut at `cuts`) as the relay does, checking the contract
/// of `ws::Decoder::decode` on every call:
/// - `consumed <= buf.len()`; `Ok((None, n))` has `n == buf.len()`;
/// - an event consumes at least one byte; a `Data` range is non-empty and within the
///   consumed part of the slice given;
/// - control payloads are at most 125 bytes; a close's code matches its payload, is one
///   allowed on the wire, and its reason is UTF-8;
/// - errors are final: every later call returns the same error.
pub fn ws_decode(stream: &[u8], cuts: &[usize]) -> WsOutcome {
    let mut decoder = ws::Decoder::new();
    let mut buf = stream.to_vec();
    let mut events = Vec::new();
    for range in chunk_ranges(cuts, stream.len()) {
        if let Err(e) = ws_feed(&mut decoder, &mut buf[range], &mut events) {
            assert_eq!(decoder.decode(&mut []), Err(e), "errors are final");
            let mut more = [0x82, 0x81, 1, 2, 3, 4, 5];
            assert_eq!(decoder.decode(&mut more), Err(e), "errors are final");
            return WsOutcome {
                events,
                error: Some(e),
            };
        }
    }
    WsOutcome {
        events,
        error: None,
    }
}

fn ws_feed(
    decoder: &mut ws::Decoder,
    chunk: &mut [u8],
    events: &mut Vec<WsEvent>,
) -> Result<(), ws::ProtocolError> {
    let mut off = 0;
    loop {
        let rest = &mut chunk[off..];
        let len = rest.len();
        let (event, n) = decoder.decode(rest)?;
        assert!(n <= len, "consumed {n} of {len} bytes");
        let Some(event) = event else {
            assert_eq!(n, len, "Ok((None, n)) must consume the whole buffer");
            return Ok(());
        };
        assert!(n >= 1, "an event must consume at least one byte: {event:?}");
        let ev = match event {
            ws::Event::Data(r) => {
                assert!(
                    !r.is_empty() && r.end <= n,
                    "data range {r:?} must be non-empty and within the {n} consumed bytes"
                );
                WsEvent::Data(rest[r].to_vec())
            }
            ws::Event::Ping => WsEvent::Ping(control_payload(decoder).to_vec()),
            ws::Event::Pong => WsEvent::Pong(control_payload(decoder).to_vec()),
            ws::Event::Close(code) => {
                let payload = control_payload(decoder);
                match code {
                    None => assert!(payload.is_empty(), "Close(None) with a payload"),
                    Some(code) => {
                        assert!(payload.len() >= 2, "Close({code}) without a code");
                        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
                        assert!(ws::is_valid_close_code(code), "close code {code} allowed");
                        assert!(
                            std::str::from_utf8(&payload[2..]).is_ok(),
                            "close reason is not UTF-8"
                        );
                    }
                }
                WsEvent::Close(code, payload.get(2..).unwrap_or_default().to_vec())
            }
        };
        push_ws(events, ev);
        off += n;
    }
}

fn control_payload(decoder: &ws::Decoder) -> &[u8] {
    let payload = decoder.control_payload();
    assert!(
        payload.len() <= ws::MAX_CONTROL_PAYLOAD,
        "control payload too long"
    );
    payload
}

/// Two decodings of the same stream, cut differently, must agree: the same events and the
/// same error. The one allowed difference: invalid UTF-8 in a text message is found in the
/// piece that holds it, so the data of that frame handed out before the error may be
/// shorter in one than in the other (one is a prefix of the other).
pub fn ws_assert_equivalent(a: &WsOutcome, b: &WsOutcome) {
    assert_eq!(a.error, b.error, "the error depends on the read cuts");
    if a.error != Some(ws::ProtocolError::InvalidUtf8) {
        assert!(a.events == b.events, "the events depend on the read cuts");
        return;
    }
    let (head_a, tail_a) = split_trailing_data(&a.events);
    let (head_b, tail_b) = split_trailing_data(&b.events);
    assert!(head_a == head_b, "the events depend on the read cuts");
    assert!(
        tail_a.starts_with(tail_b) || tail_b.starts_with(tail_a),
        "the data before a UTF-8 error depends on the read cuts"
    );
}

fn split_trailing_data(events: &[WsEvent]) -> (&[WsEvent], &[u8]) {
    match events.split_last() {
        Some((WsEvent::Data(d), head)) => (head, d),
        _ => (events, &[]),
    }
}

/// Fuzz entry: `data` decoded whole, cut at `cuts`, and (when short) a byte at a time must
/// agree, each call keeping the contract.
pub fn ws_check(data: &[u8], cuts: &[usize]) -> WsOutcome {
    let whole = ws_decode(data, &[]);
    ws_assert_equivalent(&whole, &ws_decode(data, cuts));
    if data.len() <= 512 {
        let bytewise: Vec<usize> = (1..data.len()).collect();
        ws_assert_equivalent(&whole, &ws_decode(data, &bytewise));
    }
    whole
}

// ---------------------------------------------------------------------------------------
// smux v1 decoder
// ---------------------------------------------------------------------------------------

/// A decoded smux event with its payload bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmuxEvent {
    Syn(u32),
    Fin(u32),
    Nop,
    /// PSH payload; adjacent pieces for the same stream merged, never empty.
    Data(u32, Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmuxOutcome {
    pub events: Vec<SmuxEvent>,
    pub error: Option<smux::SmuxError>,
    /// Whether the stream ended between frames (meaningless after an error).
    pub at_boundary: bool,
}

pub fn push_smux(events: &mut Vec<SmuxEvent>, ev: SmuxEvent) {
    match (events.last_mut(), ev) {
        (_, SmuxEvent::Data(_, d)) if d.is_empty() => {}
        (Some(SmuxEvent::Data(s, prev)), SmuxEvent::Data(sid, d)) if *s == sid => {
            prev.extend_from_slice(&d)
        }
        (_, ev) => events.push(ev),
    }
}

/// Decodes `stream` read by read (cut at `cuts`), checking the contract of
/// `smux::Decoder::decode` on every call (as for [`ws_decode`]).
pub fn smux_decode(stream: &[u8], cuts: &[usize]) -> SmuxOutcome {
    let mut decoder = smux::Decoder::new();
    let mut events = Vec::new();
    for range in chunk_ranges(cuts, stream.len()) {
        if let Err(e) = smux_feed(&mut decoder, &stream[range], &mut events) {
            assert_eq!(decoder.decode(&[]), Err(e), "errors are final");
            assert_eq!(
                decoder.decode(&[1, 3, 0, 0, 0, 0, 0, 0]),
                Err(e),
                "errors are final"
            );
            return SmuxOutcome {
                events,
                error: Some(e),
                at_boundary: false,
            };
        }
    }
    SmuxOutcome {
        events,
        error: None,
        at_boundary: decoder.at_frame_boundary(),
    }
}

fn smux_feed(
    decoder: &mut smux::Decoder,
    chunk: &[u8],
    events: &mut Vec<SmuxEvent>,
) -> Result<(), smux::SmuxError> {
    let mut off = 0;
    loop {
        let rest = &chunk[off..];
        let (event, n) = decoder.decode(rest)?;
        assert!(n <= rest.len(), "consumed {n} of {} bytes", rest.len());
        let Some(event) = event else {
            assert_eq!(n, rest.len(), "Ok((None, n)) must consume the whole buffer");
            return Ok(());
        };
        assert!(n >= 1, "an event must consume at least one byte: {event:?}");
        let ev = match event {
            smux::Event::Syn(sid) => SmuxEvent::Syn(sid),
            smux::Event::Fin(sid) => SmuxEvent::Fin(sid),
            smux::Event::Nop => SmuxEvent::Nop,
            smux::Event::Data { sid, range } => {
                assert!(
                    !range.is_empty() && range.end <= n,
                    "data range {range:?} must be non-empty and within the {n} consumed bytes"
                );
                SmuxEvent::Data(sid, rest[range].to_vec())
            }
        };
        push_smux(events, ev);
        off += n;
    }
}

/// What a smux v1 stream means, read straight from the wire format, independent of the
/// decoder: `ver u8 = 1 | cmd u8 (0 SYN, 1 FIN, 2 PSH, 3 NOP) | len u16 LE | sid u32 LE |
/// payload`. A frame's event comes with its complete header; PSH payload as it arrives.
pub fn smux_reference(stream: &[u8]) -> SmuxOutcome {
    let mut events = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &stream[pos..];
        if rest.len() < 8 {
            return SmuxOutcome {
                events,
                error: None,
                at_boundary: rest.is_empty(),
            };
        }
        let error = match (rest[0], rest[1]) {
            (1, 0..=3) => None,
            (1, cmd) => Some(smux::SmuxError::BadCmd(cmd)),
            (ver, _) => Some(smux::SmuxError::BadVersion(ver)),
        };
        if error.is_some() {
            return SmuxOutcome {
                events,
                error,
                at_boundary: false,
            };
        }
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        let sid = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let payload = &rest[8..rest.len().min(8 + len)];
        match rest[1] {
            0 => push_smux(&mut events, SmuxEvent::Syn(sid)),
            1 => push_smux(&mut events, SmuxEvent::Fin(sid)),
            2 => push_smux(&mut events, SmuxEvent::Data(sid, payload.to_vec())),
            _ => push_smux(&mut events, SmuxEvent::Nop),
        }
        if payload.len() < len {
            return SmuxOutcome {
                events,
                error: None,
                at_boundary: false,
            };
        }
        pos += 8 + len;
    }
}

/// Fuzz entry: `data` decoded whole, cut at `cuts`, and (when short) a byte at a time must
/// each equal the reference reading.
pub fn smux_check(data: &[u8], cuts: &[usize]) -> SmuxOutcome {
    let want = smux_reference(data);
    assert_eq!(smux_decode(data, &[]), want, "whole buffer");
    assert_eq!(smux_decode(data, cuts), want, "cut at {cuts:?}");
    if data.len() <= 512 {
        let bytewise: Vec<usize> = (1..data.len()).collect();
        assert_eq!(smux_decode(data, &bytewise), want, "byte at a time");
    }
    want
}

// ---------------------------------------------------------------------------------------
// Request heads and route keys
// ---------------------------------------------------------------------------------------

/// The result of `http::parse_head`.
pub type HeadResult = Result<Option<(RequestHead, usize)>, HeadError>;

/// Parses `data` whole and each prefix ending at a cut, as the server does while a head
/// arrives read by read, and checks:
/// - a complete head is at most `MAX_HEAD` bytes, ends with its blank line, parses the
///   same from exactly its own bytes, and every shorter prefix asks for more bytes;
/// - an error for a prefix is the error for the whole (the answer does not depend on the
///   read cuts), and a prefix of an input that asks for more asks for more too;
/// - the head's fields are consistent (see [`check_head`]), and its route key keeps the
///   contract of [`route_key_check`].
pub fn http_check(data: &[u8], cuts: &[usize]) -> HeadResult {
    let whole = http::parse_head(data);
    if let Ok(Some((head, len))) = &whole {
        let len = *len;
        assert!(
            len <= data.len() && len <= http::MAX_HEAD,
            "head length {len}"
        );
        assert!(
            data[..len].ends_with(b"\n"),
            "a head ends with its blank line"
        );
        assert!(http::parse_head(&data[..len]) == whole, "head alone");
        assert_eq!(
            http::parse_head(&data[..len - 1]),
            Ok(None),
            "head less a byte"
        );
        check_head(head, &data[..len]);
        if let Some(key) = route_key_check(&head.target) {
            assert!(!key.is_empty());
        }
    }
    for range in chunk_ranges(cuts, data.len()) {
        let prefix = &data[..range.end];
        let got = http::parse_head(prefix);
        match (&whole, &got) {
            (Ok(Some((_, len))), _) if prefix.len() >= *len => {
                assert!(got == whole, "prefix of {} bytes", prefix.len())
            }
            (_, Ok(None)) => {}
            (Err(want), Err(e)) => assert_eq!(e, want, "prefix of {} bytes", prefix.len()),
            _ => panic!(
                "prefix of {} bytes: {got:?}, whole input: {whole:?}",
                prefix.len()
            ),
        }
    }
    whole
}

/// The fields of a parsed head against its raw header lines, read independently (by
/// splitting lines, not with httparse):
/// - `Content-Length`: RFC 9110 8.6 allows only digits (Go's `strconv.ParseUint` agrees: no
///   sign, no spaces inside). A value that is not 1*DIGIT, or values that disagree, must set
///   `bad_content_length`; otherwise `content_length` is the value.
/// - `Transfer-Encoding` present sets `transfer_encoding`.
pub fn check_head(head: &RequestHead, raw: &[u8]) {
    assert!(!head.method.is_empty(), "empty method");
    assert!(!head.target.is_empty(), "empty target");
    assert!(head.minor_version <= 1, "HTTP/1.{}", head.minor_version);
    let mut lengths = Vec::new();
    let mut transfer_encoding = false;
    for line in raw.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = trim_ows(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths.push(value.to_vec());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        }
    }
    assert_eq!(
        head.transfer_encoding, transfer_encoding,
        "transfer_encoding"
    );
    if lengths.is_empty() {
        assert!(
            head.content_length.is_none() && !head.bad_content_length,
            "Content-Length without the header"
        );
        return;
    }
    let digits = |v: &[u8]| !v.is_empty() && v.iter().all(u8::is_ascii_digit);
    let all_digits = lengths.iter().all(|v| digits(v));
    let numbers: Option<Vec<u64>> = lengths
        .iter()
        .map(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .collect();
    match numbers {
        Some(n) if all_digits && n.iter().all(|&x| x == n[0]) => {
            assert!(
                !head.bad_content_length,
                "Content-Length {lengths:?} is fine"
            );
            assert_eq!(
                head.content_length,
                Some(n[0]),
                "Content-Length {lengths:?}"
            );
        }
        _ => assert!(
            head.bad_content_length,
            "Content-Length {:?} must be refused",
            lengths
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
        ),
    }
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Go's `URL.Path` for a request target (`url.ParseRequestURI`), for the targets a
/// WebSocket client sends: origin form `/path?query`, or absolute form with an http(s) or
/// ws(s) scheme. Go cuts the query off before it looks for the path, so `http://h?q/x` has
/// an empty path (no route). `None` where Go refuses the target, where the path is empty,
/// or where it is not UTF-8 (no user can have such a path).
pub fn expected_route_key(target: &str) -> Option<String> {
    let without_query = target.split('?').next().unwrap_or_default();
    let path = if without_query.starts_with('/') {
        without_query
    } else {
        let rest = ["http://", "https://", "ws://", "wss://"]
            .iter()
            .find_map(|scheme| without_query.strip_prefix(scheme))?;
        &rest[rest.find('/')?..]
    };
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes every byte of `path` but the unreserved ones and `/`.
pub fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() * 3);
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `http::route_key(target)` never panics, agrees with Go's `URL.Path`
/// ([`expected_route_key`]), starts with `/`, and decoding is the inverse of
/// percent-encoding: the key of the encoded key is the key.
pub fn route_key_check(target: &str) -> Option<String> {
    let key = http::route_key(target);
    assert_eq!(key, expected_route_key(target), "route key of {target:?}");
    if let Some(k) = &key {
        assert!(k.starts_with('/'), "route key {k:?} of {target:?}");
        let encoded = percent_encode_path(k);
        assert_eq!(http::route_key(&encoded).as_ref(), Some(k), "{encoded:?}");
    }
    key
}

// ---------------------------------------------------------------------------------------
// Controller commands
// ---------------------------------------------------------------------------------------

/// What `controller::parse_command` must make of a body, worked out from the JSON value
/// alone (SPEC section 5, and the opt numbers `src/command.rs` adds): `Err(BadRequest)` when
/// the body is not one JSON object or a field has the wrong JSON type (an `args_bunch` entry
/// must be an object: Go's decoder refuses an array there), `Err(Invalid)` for a well-typed
/// command that is not valid, else the command. Only the kind of error is compared.
///
/// | opt | command | args_bunch |
/// |---|---|---|
/// | 1 | add | required, non-empty, each `path` and `dst` |
/// | 2 | del | required, non-empty, each `path` |
/// | 3 | reset | ignored |
/// | 4 | sync | required (may be empty), each `path` and `dst` |
/// | 5 | stats, `"reset": bool` | optional, each `path` |
/// | 6 | kick | required, non-empty, each `path` |
/// | 7 | billing report | ignored |
/// | 8 | acknowledge, `"report_id": string`, required non-empty | ignored |
/// | 9 | ping | ignored |
///
/// Del and sync take `"kick": bool`. Add and sync entries may carry the limits
/// `speed_limit`, `device_limit`, `conn_limit`, `quota`, `expire`: JSON integers that fit
/// an i64 (else a bad request), non-negative (else invalid), 0 or absent for none.
pub fn expected_command(body: &[u8]) -> Result<Command, CommandError> {
    fn bad<T>(why: &str) -> Result<T, CommandError> {
        Err(CommandError::BadRequest(why.to_string()))
    }
    fn invalid<T>(why: &str) -> Result<T, CommandError> {
        Err(CommandError::Invalid(why.to_string()))
    }
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return bad("not one JSON object");
    };
    let opt = match map.get("opt") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(n) => Some(n),
            None => return bad("opt is not an i64"),
        },
        Some(_) => return bad("opt is not a number"),
    };
    let flag = |name: &str| match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(()),
    };
    let (Ok(reset), Ok(kick)) = (flag("reset"), flag("kick")) else {
        return bad("reset or kick is not a bool");
    };
    let report_id = match map.get("report_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return bad("report_id is not a string"),
    };
    const LIMITS: [&str; 5] = [
        "speed_limit",
        "device_limit",
        "conn_limit",
        "quota",
        "expire",
    ];
    type Entry = (Option<String>, Option<String>, [i64; 5]);
    let args: Option<Vec<Entry>> = match map.get("args_bunch") {
        None | Some(Value::Null) => None,
        Some(Value::Array(entries)) => {
            let mut args = Vec::new();
            for entry in entries {
                let Value::Object(entry) = entry else {
                    return bad("an entry is not an object");
                };
                let field = |name: &str| match entry.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(()),
                };
                let mut limits = [0i64; 5];
                for (value, name) in limits.iter_mut().zip(LIMITS) {
                    match entry.get(name) {
                        None | Some(Value::Null) => {}
                        Some(Value::Number(n)) if n.as_i64().is_some() => {
                            *value = n.as_i64().unwrap_or(0)
                        }
                        Some(_) => return bad("a limit is not an i64"),
                    }
                }
                match (field("path"), field("dst")) {
                    (Ok(path), Ok(dst)) => args.push((path, dst, limits)),
                    _ => return bad("path or dst is not a string"),
                }
            }
            Some(args)
        }
        Some(_) => return bad("args_bunch is not an array"),
    };
    let paths = |args: Vec<Entry>| -> Result<Vec<String>, CommandError> {
        let mut paths = Vec::new();
        for (path, _, _) in args {
            match path {
                Some(p) if p.starts_with('/') => paths.push(p),
                _ => return invalid("bad path"),
            }
        }
        Ok(paths)
    };
    let users = |args: Vec<Entry>| -> Result<Vec<NewUser>, CommandError> {
        let mut users = Vec::new();
        for (path, dst, limits) in args {
            let route = match (path, dst) {
                (Some(p), _) if !p.starts_with('/') => return invalid("bad path"),
                (None, _) => return invalid("no path"),
                (Some(p), Some(d)) if controller::valid_dst(&d) => Route::new(&p, &d),
                _ => return invalid("bad dst"),
            };
            if limits.iter().any(|&l| l < 0) {
                return invalid("a negative limit");
            }
            let [speed_limit, device_limit, conn_limit, quota, expire] = limits.map(|l| l as u64);
            users.push(NewUser {
                route,
                limits: Limits {
                    speed_limit,
                    device_limit,
                    conn_limit,
                    quota,
                    expire,
                },
            });
        }
        Ok(users)
    };
    let non_empty = args.clone().filter(|a| !a.is_empty());
    match opt {
        Some(1) => match non_empty {
            Some(args) => Ok(Command::Add(users(args)?)),
            None => invalid("empty add"),
        },
        Some(2) => match non_empty {
            Some(args) => Ok(Command::Del {
                paths: paths(args)?,
                kick: kick.unwrap_or(false),
            }),
            None => invalid("empty del"),
        },
        Some(3) => Ok(Command::Reset),
        Some(4) => match args {
            Some(args) => Ok(Command::Sync {
                users: users(args)?,
                kick: kick.unwrap_or(false),
            }),
            None => invalid("sync without args_bunch"),
        },
        Some(5) => Ok(Command::Stats {
            paths: args.map(paths).transpose()?,
            reset: reset.unwrap_or(false),
        }),
        Some(6) => match non_empty {
            Some(args) => Ok(Command::Kick(paths(args)?)),
            None => invalid("empty kick"),
        },
        Some(7) => Ok(Command::Report),
        Some(8) => match report_id {
            Some(id) if !id.is_empty() => Ok(Command::Ack(id)),
            _ => invalid("ack without report_id"),
        },
        Some(9) => Ok(Command::Ping),
        _ => invalid("invalid opt"),
    }
}

/// `controller::parse_command(body)` never panics and agrees with [`expected_command`]:
/// the same command, or the same kind of error. A body with a duplicate key (which
/// `serde_json::Value` hides, the last one winning) may be refused as a bad request
/// instead; where it is accepted it must still mean the same command.
pub fn controller_check(body: &[u8]) -> Result<Command, CommandError> {
    let got = controller::parse_command(body);
    let want = expected_command(body);
    if let Ok(Command::Add(users)) = &got {
        assert!(!users.is_empty());
        for user in users {
            let route = &user.route;
            assert!(route.path().starts_with('/') && controller::valid_dst(route.dst()));
        }
    }
    if let Ok(Command::Sync { users, .. }) = &got {
        for user in users {
            let route = &user.route;
            assert!(route.path().starts_with('/') && controller::valid_dst(route.dst()));
        }
    }
    if let Ok(Command::Del { paths, .. } | Command::Kick(paths)) = &got {
        assert!(!paths.is_empty() && paths.iter().all(|p| p.starts_with('/')));
    }
    if let Ok(Command::Stats {
        paths: Some(paths), ..
    }) = &got
    {
        assert!(paths.iter().all(|p| p.starts_with('/')));
    }
    if serde_json::from_slice::<Value>(body).is_err()
        && serde_json::from_slice::<IgnoredAny>(body).is_ok()
    {
        // Well-formed JSON that a `Value` cannot hold: a string with a lone surrogate
        // escape or invalid UTF-8, or nesting past serde_json's depth limit. Where that is
        // in a field the command ignores, accepting the body is right (Go's decoder does);
        // there is no oracle for the rest.
        return got;
    }
    if !same_command_outcome(&got, &want) {
        let duplicates = serde_json::from_slice::<DuplicateKeys>(body).is_ok_and(|d| d.0);
        let refused = matches!(got, Err(CommandError::BadRequest(_)));
        assert!(
            duplicates && refused,
            "parse_command({:?}) = {got:?}, expected {want:?}",
            String::from_utf8_lossy(body)
        );
    }
    got
}

/// Whether two results of `parse_command` are the same command or the same kind of error
/// (messages differ, e.g. in the positions they quote).
pub fn same_command_outcome(
    a: &Result<Command, CommandError>,
    b: &Result<Command, CommandError>,
) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(CommandError::Invalid(_)), Err(CommandError::Invalid(_))) => true,
        (Err(CommandError::BadRequest(_)), Err(CommandError::BadRequest(_))) => true,
        _ => false,
    }
}

/// Whether any JSON object in a document repeats a key.
struct DuplicateKeys(bool);

impl<'de> Deserialize<'de> for DuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DuplicateKeysVisitor)
    }
}

struct DuplicateKeysVisitor;

impl<'de> Visitor<'de> for DuplicateKeysVisitor {
    type Value = DuplicateKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(DuplicateKeys(false))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(DuplicateKeys(false))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(DuplicateKeys(false))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(DuplicateKeys(false))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(DuplicateKeys(false))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(DuplicateKeys(false))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut dup = false;
        while let Some(DuplicateKeys(d)) = seq.next_element()? {
            dup |= d;
        }
        Ok(DuplicateKeys(dup))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = HashSet::new();
        let mut dup = false;
        while let Some((key, DuplicateKeys(d))) = map.next_entry::<String, DuplicateKeys>()? {
            dup |= d | !keys.insert(key);
        }
        Ok(DuplicateKeys(dup))
    }
}

//! Property tests of the pure pieces that read hostile input: the request
//! head reader and route key (`http`), the WebSocket frame decoder (`ws`), the smux v1
//! decoder (`smux`) and the controller's command parser (`controller`).
//!
//! The contract checks are those of the fuzz targets, in `fuzz/src/harness.rs` (included
//! here by path): what libFuzzer explores for hours, these run on generated inputs in a few
//! seconds in CI. The seed corpora and regression inputs in `fuzz/corpus/` run here too.
//! Generated valid inputs are built by encoders written here, independent of the code under
//! test, and must decode to exactly what was encoded however the input is cut into reads.

// The fuzz crate's root: its items are `pub` for the fuzz targets, not for this binary.
#[allow(unreachable_pub)]
#[path = "../../fuzz/src/harness.rs"]
mod harness;

use std::path::Path;

use harness::{SmuxEvent, WsEvent, WsOutcome};
use mtt_mu_server::controller::{self, Command, CommandError, Limits, NewUser};
use mtt_mu_server::http::{self, HeadError, RequestHead};
use mtt_mu_server::routes::Route;
use mtt_mu_server::ws::ProtocolError;
use mtt_mu_server::{smux, ws};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::Value;

/// `cases` cases per property, and no `proptest-regressions/` files written into the tree:
/// a failure found here becomes a named regression test at the end of this file instead.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// Up to 12 read cuts anywhere in an input.
fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..12)
}

fn positions(cuts: &[Index], len: usize) -> Vec<usize> {
    cuts.iter().map(|i| i.index(len + 1)).collect()
}

// ---------------------------------------------------------------------------------------
// WebSocket frames
// ---------------------------------------------------------------------------------------

/// How a frame's payload length is written: minimal, or forced to the 16- or 64-bit form
/// (which RFC 6455 allows the decoder to accept).
#[derive(Clone, Copy, Debug)]
enum LenForm {
    Min,
    L16,
    L64,
}

/// A masked client frame, encoded here from RFC 6455 section 5.2.
fn client_frame(b0: u8, form: LenForm, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut out = vec![b0];
    match form {
        LenForm::Min if n < 126 => out.push(0x80 | n as u8),
        LenForm::Min | LenForm::L16 if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

const FIN: u8 = 0x80;

#[derive(Clone, Debug)]
enum Control {
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// A data message: text or binary, cut into fragments at `cuts`, with a control frame
/// maybe between fragments.
#[derive(Clone, Debug)]
struct Message {
    text: bool,
    payload: Vec<u8>,
    cuts: Vec<Index>,
    between: Vec<Option<Control>>,
}

#[derive(Clone, Debug)]
enum Item {
    Message(Message),
    Control(Control),
}

fn close_reason() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..40).prop_map(|chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > ws::MAX_CLOSE_REASON {
                break;
            }
            s.push(c);
        }
        s
    })
}

fn control() -> impl Strategy<Value = Control> {
    let payload = || prop::collection::vec(any::<u8>(), 0..=ws::MAX_CONTROL_PAYLOAD);
    prop_oneof![
        payload().prop_map(Control::Ping),
        payload().prop_map(Control::Pong),
        Just(Control::Close(None)),
        (
            prop_oneof![1000u16..=1003, 1007u16..=1011, 3000u16..=4999],
            close_reason()
        )
            .prop_map(|(code, reason)| Control::Close(Some((code, reason)))),
    ]
}

/// Payloads: mostly short, sometimes at the length-encoding boundaries.
fn binary_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..200),
        1 => (select(vec![125usize, 126, 127, 65535, 65536]), any::<u8>())
            .prop_map(|(n, seed)| (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let body = prop_oneof![
        binary_payload().prop_map(|p| (false, p)),
        prop::collection::vec(any::<char>(), 0..60)
            .prop_map(|c| (true, String::from_iter(c).into_bytes())),
    ];
    (
        body,
        prop::collection::vec(any::<Index>(), 0..4),
        prop::collection::vec(prop::option::weighted(0.3, control()), 0..4),
    )
        .prop_map(|((text, payload), cuts, between)| Message {
            text,
            payload,
            cuts,
            between,
        })
}

fn items() -> impl Strategy<Value = Vec<Item>> {
    prop::collection::vec(
        prop_oneof![
            3 => message().prop_map(Item::Message),
            1 => control().prop_map(Item::Control),
        ],
        0..8,
    )
}

fn styles() -> impl Strategy<Value = Vec<(LenForm, [u8; 4])>> {
    let form = prop_oneof![
        6 => Just(LenForm::Min),
        1 => Just(LenForm::L16),
        1 => Just(LenForm::L64),
    ];
    prop::collection::vec((form, any::<[u8; 4]>()), 1..8)
}

/// Writes client frames, each in the next style (length form and mask) of a cycle, and
/// records the events they must decode to.
struct WsWriter<'a> {
    styles: &'a [(LenForm, [u8; 4])],
    frames: usize,
    stream: Vec<u8>,
    events: Vec<WsEvent>,
}

impl WsWriter<'_> {
    fn frame(&mut self, b0: u8, payload: &[u8]) {
        let (form, mask) = self.styles[self.frames % self.styles.len()];
        self.frames += 1;
        self.stream.extend(client_frame(b0, form, mask, payload));
    }

    fn control(&mut self, c: &Control) {
        let (b0, payload, event) = match c {
            Control::Ping(p) => (0x9, p.clone(), WsEvent::Ping(p.clone())),
            Control::Pong(p) => (0xA, p.clone(), WsEvent::Pong(p.clone())),
            Control::Close(None) => (0x8, Vec::new(), WsEvent::Close(None, Vec::new())),
            Control::Close(Some((code, reason))) => {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(reason.as_bytes());
                let event = WsEvent::Close(Some(*code), reason.as_bytes().to_vec());
                (0x8, p, event)
            }
        };
        self.frame(FIN | b0, &payload);
        harness::push_ws(&mut self.events, event);
    }

    fn message(&mut self, m: &Message) {
        let mut ends = positions(&m.cuts, m.payload.len());
        ends.sort_unstable();
        ends.push(m.payload.len());
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            let last = i + 1 == ends.len();
            let opcode = match (i, m.text) {
                (0, true) => 0x1,
                (0, false) => 0x2,
                _ => 0x0,
            };
            let part = &m.payload[start..end];
            self.frame(if last { FIN | opcode } else { opcode }, part);
            harness::push_ws(&mut self.events, WsEvent::Data(part.to_vec()));
            if let Some(Some(c)) = m.between.get(i).filter(|_| !last) {
                self.control(c);
            }
            start = end;
        }
    }
}

/// The client stream for `items` and the events it must decode to.
fn build_ws(items: &[Item], styles: &[(LenForm, [u8; 4])]) -> (Vec<u8>, Vec<WsEvent>) {
    let mut w = WsWriter {
        styles,
        frames: 0,
        stream: Vec::new(),
        events: Vec::new(),
    };
    for item in items {
        match item {
            Item::Control(c) => w.control(c),
            Item::Message(m) => w.message(m),
        }
    }
    (w.stream, w.events)
}

/// A frame that breaks RFC 6455, the events it still yields, and the error it must end
/// decoding with, when it follows a valid stream (which ends between messages).
fn bad_ws_frame() -> impl Strategy<Value = (Vec<u8>, Vec<WsEvent>, ProtocolError)> {
    let m = [0x11, 0x22, 0x33, 0x44];
    let cases: Vec<(Vec<u8>, Vec<WsEvent>, ProtocolError)> = vec![
        (vec![0x82, 0x01, b'x'], vec![], ProtocolError::Unmasked),
        (
            client_frame(FIN | 0x40 | 0x2, LenForm::Min, m, b"x"),
            vec![],
            ProtocolError::ReservedBits,
        ),
        (
            client_frame(FIN | 0x3, LenForm::Min, m, b""),
            vec![],
            ProtocolError::BadOpcode(3),
        ),
        (
            client_frame(FIN | 0xB, LenForm::Min, m, b""),
            vec![],
            ProtocolError::BadOpcode(0xB),
        ),
        (
            client_frame(FIN | 0x9, LenForm::Min, m, &[7; 126]),
            vec![],
            ProtocolError::ControlTooLong,
        ),
        (
            client_frame(0x9, LenForm::Min, m, b""),
            vec![],
            ProtocolError::FragmentedControl,
        ),
        (
            client_frame(FIN, LenForm::Min, m, b"x"),
            vec![],
            ProtocolError::UnexpectedContinuation,
        ),
        (
            [
                client_frame(0x2, LenForm::Min, m, b"a"),
                client_frame(FIN | 0x2, LenForm::Min, m, b"b"),
            ]
            .concat(),
            vec![WsEvent::Data(b"a".to_vec())],
            ProtocolError::ExpectedContinuation,
        ),
        (
            vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            ProtocolError::LengthOverflow,
        ),
        (
            client_frame(FIN | 0x8, LenForm::Min, m, &[0x03]),
            vec![],
            ProtocolError::BadClosePayload,
        ),
        (
            client_frame(FIN | 0x8, LenForm::Min, m, &1005u16.to_be_bytes()),
            vec![],
            ProtocolError::BadClosePayload,
        ),
        (
            client_frame(FIN | 0x8, LenForm::Min, m, &[0x03, 0xE8, 0xC3]),
            vec![],
            ProtocolError::InvalidUtf8,
        ),
        (
            client_frame(FIN | 0x1, LenForm::Min, m, b"ok\xFF"),
            vec![],
            ProtocolError::InvalidUtf8,
        ),
        (
            // A text message that ends inside a character.
            client_frame(FIN | 0x1, LenForm::Min, m, "é".as_bytes().get(..1).unwrap()),
            vec![],
            ProtocolError::InvalidUtf8,
        ),
    ];
    select(cases)
}

proptest! {
    #![proptest_config(config(192))]

    /// Any sequence of valid masked frames (fragmented messages with control frames between
    /// fragments, every length form, random masks), cut anywhere into reads, decodes to the
    /// payload bytes and control frames that were encoded.
    #[test]
    fn ws_valid_streams_decode_to_what_was_sent(
        items in items(),
        styles in styles(),
        cuts in cuts(),
    ) {
        let (stream, events) = build_ws(&items, &styles);
        let want = WsOutcome { events, error: None };
        prop_assert_eq!(&harness::ws_decode(&stream, &[]), &want);
        prop_assert_eq!(&harness::ws_decode(&stream, &positions(&cuts, stream.len())), &want);
        if stream.len() <= 4096 {
            let bytewise: Vec<usize> = (1..stream.len()).collect();
            prop_assert_eq!(&harness::ws_decode(&stream, &bytewise), &want);
        }
    }

    /// A valid stream followed by a bad frame yields everything before it, then the error
    /// RFC 6455 names, however it is cut.
    #[test]
    fn ws_bad_frame_after_valid_stream(
        items in items(),
        styles in styles(),
        bad in bad_ws_frame(),
        cuts in cuts(),
    ) {
        let (mut stream, mut events) = build_ws(&items, &styles);
        let (frame, more, error) = bad;
        stream.extend(frame);
        for ev in more {
            harness::push_ws(&mut events, ev);
        }
        // Bytes after the error are never looked at.
        stream.extend(client_frame(FIN | 0x2, LenForm::Min, [1, 2, 3, 4], b"never"));
        let want = WsOutcome { events, error: Some(error) };
        prop_assert_eq!(&harness::ws_decode(&stream, &[]), &want);
        let got = harness::ws_decode(&stream, &positions(&cuts, stream.len()));
        harness::ws_assert_equivalent(&got, &want);
    }

    /// Arbitrary bytes in arbitrary reads never panic, keep the contract on every call and
    /// decode the same however they are cut.
    #[test]
    fn ws_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..600), cuts in cuts()) {
        let _ = harness::ws_check(&data, &positions(&cuts, data.len()));
    }

    /// Valid streams with a few bytes flipped, to get deep into the decoder's states.
    #[test]
    fn ws_corrupted_streams(
        items in items(),
        styles in styles(),
        flips in prop::collection::vec((any::<Index>(), 1u8..), 1..4),
        cuts in cuts(),
    ) {
        let (mut stream, _) = build_ws(&items, &styles);
        if !stream.is_empty() {
            for (at, x) in flips {
                let i = at.index(stream.len());
                stream[i] ^= x;
            }
        }
        let _ = harness::ws_check(&stream, &positions(&cuts, stream.len()));
    }
}

// ---------------------------------------------------------------------------------------
// smux v1 frames
// ---------------------------------------------------------------------------------------

/// A smux v1 frame, encoded here from the wire format.
fn smux_frame(cmd: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![1, cmd];
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(&sid.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn smux_frames() -> impl Strategy<Value = Vec<(u8, u32, Vec<u8>)>> {
    let sid = prop_oneof![4 => (0u32..4).prop_map(|s| 2 * s + 1), 1 => any::<u32>()];
    let payload = prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..100),
        1 => (select(vec![0usize, 1, 7, 8, 9, 16384, 65535]), any::<u8>())
            .prop_map(|(n, seed)| (0..n).map(|i| (i as u8).wrapping_mul(13) ^ seed).collect()),
    ];
    prop::collection::vec((0u8..4, sid, payload), 0..20)
}

fn build_smux(frames: &[(u8, u32, Vec<u8>)]) -> (Vec<u8>, Vec<SmuxEvent>) {
    let mut stream = Vec::new();
    let mut events = Vec::new();
    for (cmd, sid, payload) in frames {
        stream.extend(smux_frame(*cmd, *sid, payload));
        let ev = match cmd {
            0 => SmuxEvent::Syn(*sid),
            1 => SmuxEvent::Fin(*sid),
            2 => SmuxEvent::Data(*sid, payload.clone()),
            _ => SmuxEvent::Nop,
        };
        harness::push_smux(&mut events, ev);
    }
    (stream, events)
}

proptest! {
    #![proptest_config(config(256))]

    /// Valid frames of every command (payloads on SYN/FIN/NOP ignored, empty PSH silent),
    /// cut anywhere, decode to the frames that were encoded, ending at a frame boundary.
    #[test]
    fn smux_valid_streams_decode_to_what_was_sent(frames in smux_frames(), cuts in cuts()) {
        let (stream, events) = build_smux(&frames);
        let got = harness::smux_check(&stream, &positions(&cuts, stream.len()));
        prop_assert_eq!(got, harness::SmuxOutcome { events, error: None, at_boundary: true });
    }

    /// The same streams cut short end inside a frame, with what arrived decoded.
    #[test]
    fn smux_truncated_streams(frames in smux_frames(), end in any::<Index>(), cuts in cuts()) {
        let (stream, _) = build_smux(&frames);
        let stream = &stream[..end.index(stream.len() + 1)];
        let _ = harness::smux_check(stream, &positions(&cuts, stream.len()));
    }

    /// A bad version or command after valid frames ends the session with that error.
    #[test]
    fn smux_bad_header_after_valid_frames(
        frames in smux_frames(),
        bad in prop_oneof![
            (any::<u8>().prop_filter("not 1", |v| *v != 1), 0u8..4),
            (Just(1u8), 4u8..),
        ],
        cuts in cuts(),
    ) {
        let (mut stream, events) = build_smux(&frames);
        stream.extend([bad.0, bad.1, 0, 0, 1, 0, 0, 0]);
        stream.extend(smux_frame(2, 1, b"never"));
        let error = if bad.0 != 1 {
            smux::SmuxError::BadVersion(bad.0)
        } else {
            smux::SmuxError::BadCmd(bad.1)
        };
        let got = harness::smux_check(&stream, &positions(&cuts, stream.len()));
        prop_assert_eq!(got, harness::SmuxOutcome { events, error: Some(error), at_boundary: false });
    }

    /// Arbitrary bytes, and bytes biased toward plausible headers, never panic and decode
    /// as the reference reading of the wire format does, however they are cut.
    #[test]
    fn smux_arbitrary_bytes(
        data in prop::collection::vec(any::<u8>(), 0..600),
        biased in any::<bool>(),
        cuts in cuts(),
    ) {
        let data: Vec<u8> = if biased { data.iter().map(|b| b % 5).collect() } else { data };
        let _ = harness::smux_check(&data, &positions(&cuts, data.len()));
    }

    /// `smux::encode_header` writes what the decoder reads back.
    #[test]
    fn smux_encode_header_round_trip(cmd in 0u8..4, sid in any::<u32>(), len in any::<u16>()) {
        let cmd = smux::Cmd::from_u8(cmd).unwrap();
        let mut header = [0; smux::HEADER_LEN];
        smux::encode_header(cmd, sid, len, &mut header);
        let mut frame = header.to_vec();
        frame.resize(smux::HEADER_LEN + usize::from(len), 0xAB);
        prop_assert_eq!(&frame, &smux_frame(cmd.to_u8(), sid, &frame[8..]));
    }
}

// ---------------------------------------------------------------------------------------
// Request heads and route keys
// ---------------------------------------------------------------------------------------

/// A header line of a generated request, with what it means.
#[derive(Clone, Debug)]
enum Header {
    Connection(Vec<&'static str>),
    Upgrade(Vec<&'static str>),
    Version(String),
    Key(String),
    Protocol(Vec<String>),
    ContentLength(u64),
    TransferEncoding,
    Other(String, String),
}

fn header() -> impl Strategy<Value = Header> {
    let connection: &'static [&str] = &[
        "Upgrade",
        "upgrade",
        "keep-alive",
        "Keep-Alive",
        "close",
        "foo",
    ];
    let upgrade: &'static [&str] = &["websocket", "WebSocket", "h2c", "websocket/13", "tls/1.0"];
    prop_oneof![
        prop::collection::vec(select(connection), 1..4).prop_map(Header::Connection),
        prop::collection::vec(select(upgrade), 1..3).prop_map(Header::Upgrade),
        "[0-9]{1,3}".prop_map(Header::Version),
        "[A-Za-z0-9+/]{1,30}={0,2}".prop_map(Header::Key),
        prop::collection::vec("[a-z_]{1,10}", 1..4).prop_map(Header::Protocol),
        prop_oneof![0u64..100_000, any::<u64>()].prop_map(Header::ContentLength),
        Just(Header::TransferEncoding),
        ("X-[A-Za-z0-9-]{1,12}", "([!-~]([ -~]{0,30}[!-~])?)?")
            .prop_map(|(n, v)| Header::Other(n, v)),
    ]
}

/// How a header line is written: the case of its name, the space after the colon, and
/// whether the line ends in CRLF or a bare LF.
type LineStyle = (u64, &'static str, bool);

fn line_style() -> impl Strategy<Value = LineStyle> {
    (
        any::<u64>(),
        select(vec![":", ": ", ":\t", ":  "]),
        prop::bool::weighted(0.9),
    )
}

fn random_case(name: &str, mask: u64) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// A request head from its parts, and the `RequestHead` it must parse to (worked out here
/// from RFC 6455 and 9110, not by the code under test).
fn build_head(
    method: &str,
    target: &str,
    minor: u8,
    headers: &[(Header, LineStyle)],
) -> (Vec<u8>, RequestHead) {
    let mut raw = format!("{method} {target} HTTP/1.{minor}\r\n").into_bytes();
    let mut want = RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        minor_version: minor,
        ..RequestHead::default()
    };
    for (header, (case, colon, crlf)) in headers {
        let (name, value) = match header {
            Header::Connection(tokens) => {
                for t in tokens {
                    let t = t.to_ascii_lowercase();
                    want.connection_upgrade |= t == "upgrade";
                    want.connection_keep_alive |= t == "keep-alive";
                    want.connection_close |= t == "close";
                }
                ("Connection", tokens.join(", "))
            }
            Header::Upgrade(tokens) => {
                want.upgrade_websocket |=
                    tokens.iter().any(|t| t.eq_ignore_ascii_case("websocket"));
                ("Upgrade", tokens.join(","))
            }
            Header::Version(v) => {
                want.ws_version = Some(v.clone());
                ("Sec-WebSocket-Version", v.clone())
            }
            Header::Key(k) => {
                want.ws_key = Some(k.clone());
                ("Sec-WebSocket-Key", k.clone())
            }
            Header::Protocol(p) => {
                want.ws_protocols.extend(p.iter().cloned());
                ("Sec-WebSocket-Protocol", p.join(", "))
            }
            Header::ContentLength(n) => {
                match want.content_length {
                    None => want.content_length = Some(*n),
                    Some(m) if m == *n => {}
                    Some(_) => want.bad_content_length = true,
                }
                ("Content-Length", n.to_string())
            }
            Header::TransferEncoding => {
                want.transfer_encoding = true;
                ("Transfer-Encoding", "chunked".to_string())
            }
            Header::Other(n, v) => (n.as_str(), v.clone()),
        };
        let end = if *crlf { "\r\n" } else { "\n" };
        raw.extend(format!("{}{colon}{value}{end}", random_case(name, *case)).into_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    (raw, want)
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT"
        ])
        .prop_map(str::to_string),
        "[A-Z]{1,10}",
    ]
}

/// An origin-form path without escapes (so its route key is itself), and a query.
fn path_and_query() -> impl Strategy<Value = (String, String)> {
    (
        prop::collection::vec("[A-Za-z0-9._~!$&'()*+,;=:@-]{0,12}", 1..5),
        prop::option::of("[A-Za-z0-9=&/?%.-]{0,20}"),
    )
        .prop_map(|(segments, query)| {
            let path = segments.iter().map(|s| format!("/{s}")).collect::<String>();
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            (path, query)
        })
}

/// Bytes that look like a head: header names, separators and digits, in any order.
fn head_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let pieces = vec![
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "Sec-WebSocket-Key",
        ":",
        ": ",
        " ",
        "\t",
        "\r\n",
        "\n",
        "\r",
        "+",
        "-",
        "0",
        "5",
        "12",
        ",",
        "x",
        "\u{a0}",
        "\u{85}",
        "\x0b",
        "\0",
        "\u{ff}",
        "/",
        "?",
        "%",
        "%2F",
        "%zz",
        "HTTP/1.1",
    ];
    (
        select(vec![
            "GET / HTTP/1.1\r\n",
            "POST /x?y HTTP/1.0\r\n",
            "GET http://h?/p HTTP/1.1\r\n",
            "",
        ]),
        prop::collection::vec(select(pieces), 0..40),
        select(vec!["", "\r\n", "\r\n\r\n"]),
    )
        .prop_map(|(start, pieces, end)| [start, &pieces.concat(), end].concat().into_bytes())
}

/// `%XY` escapes with lower-case hex digits.
fn lower_case_escapes(encoded: &str) -> String {
    let mut out = String::new();
    let mut rest = encoded;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        out.push_str(&rest[i..i + 3].to_ascii_lowercase());
        rest = &rest[i + 3..];
    }
    out + rest
}

/// Strings that look like request targets.
fn target_like() -> impl Strategy<Value = String> {
    let pieces = vec![
        "/",
        "//",
        "?",
        "#",
        "%",
        "%2",
        "%2F",
        "%3f",
        "%E4%BD%A0",
        "%ff",
        "%C3",
        "%A9",
        "%zz",
        "+",
        "a",
        "é",
        "http://",
        "https://",
        "ws://",
        "wss://",
        "HTTP://",
        "h:1",
        "@",
        "*",
        ":",
        ";",
        " ",
    ];
    prop::collection::vec(select(pieces), 0..12).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(config(160))]

    /// A valid head built from a random method, path and headers parses to the same target
    /// and header meanings, takes exactly its own bytes, and asks for more bytes at every
    /// shorter prefix; its route key is its path.
    #[test]
    fn http_valid_heads_parse_to_what_was_sent(
        method in method(),
        (path, query) in path_and_query(),
        minor in 0u8..2,
        headers in prop::collection::vec((header(), line_style()), 0..30),
        body in prop::collection::vec(any::<u8>(), 0..40),
        cuts in cuts(),
    ) {
        let target = format!("{path}{query}");
        let (head, want) = build_head(&method, &target, minor, &headers);
        let data = [&head[..], &body[..]].concat();
        let got = harness::http_check(&data, &positions(&cuts, data.len()));
        let (mut got, len) = got.expect("a valid head").expect("a complete head");
        prop_assert_eq!(len, head.len());
        if want.bad_content_length {
            // Which of the disagreeing lengths is kept does not matter.
            got.content_length = want.content_length;
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(harness::route_key_check(&target), Some(path));
    }

    /// Arbitrary bytes, and bytes that look like heads, never panic, and the answer for a
    /// connection does not depend on how its bytes were cut into reads.
    #[test]
    fn http_arbitrary_bytes(
        data in prop_oneof![prop::collection::vec(any::<u8>(), 0..300), head_like_bytes()],
        cuts in cuts(),
    ) {
        let _ = harness::http_check(&data, &positions(&cuts, data.len()));
    }

    /// Route keys: decoding is the inverse of percent-encoding for any UTF-8 path (whatever
    /// the query, origin or absolute form), and any target agrees with Go's `URL.Path`.
    #[test]
    fn route_key_inverts_percent_encoding(
        path in "/\\PC{0,30}",
        query in prop::option::of("[ -~]{0,20}"),
        lower in any::<bool>(),
    ) {
        let mut encoded = harness::percent_encode_path(&path);
        if lower {
            // Go takes lower-case hex digits in escapes too.
            encoded = lower_case_escapes(&encoded);
        }
        let q = query.map(|q| format!("?{q}")).unwrap_or_default();
        let origin = format!("{encoded}{q}");
        prop_assert_eq!(harness::route_key_check(&origin), Some(path.clone()));
        let absolute = format!("http://example.com:8080{encoded}{q}");
        prop_assert_eq!(harness::route_key_check(&absolute), Some(path));
    }

    /// Absolute-form targets, with or without a path, and queries that hold `/` and `?`.
    #[test]
    fn route_key_absolute_form(
        scheme in select(vec!["http://", "https://", "ws://", "wss://", "HTTP://", "ftp://", ""]),
        authority in "[a-z0-9.:@-]{0,12}",
        path in prop::option::of("/[a-z/%0-9A-F]{0,10}"),
        query in prop::option::of("\\?[a-z/?=%]{0,10}"),
    ) {
        let target = [scheme, &authority, &path.unwrap_or_default(), &query.unwrap_or_default()]
            .concat();
        let _ = harness::route_key_check(&target);
    }

    /// `Content-Length` values with signs, spaces and Unicode white space around digits.
    #[test]
    fn http_content_length_values(
        values in prop::collection::vec(
            "(\\+|-| |\t|\u{a0}|\u{85}|\u{3000})?[0-9]{0,4}( |\t|\u{a0}|\u{85}|x)?",
            1..3,
        ),
    ) {
        let mut raw = b"POST /c HTTP/1.1\r\n".to_vec();
        for v in &values {
            raw.extend(format!("Content-Length: {v}\r\n").into_bytes());
        }
        raw.extend_from_slice(b"\r\n{}");
        let got = harness::http_check(&raw, &[]);
        prop_assert!(matches!(got, Ok(Some(_))), "{:?}", got);
    }

    #[test]
    fn route_key_arbitrary_targets(target in prop_oneof![any::<String>(), target_like()]) {
        let _ = harness::route_key_check(&target);
    }
}

#[test]
fn http_header_count_and_size_limits() {
    let with_headers = |n: usize| {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            raw.extend(format!("X-{i}: y\r\n").into_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    };
    assert!(matches!(
        http::parse_head(&with_headers(http::MAX_HEADERS)),
        Ok(Some(_))
    ));
    assert_eq!(
        http::parse_head(&with_headers(http::MAX_HEADERS + 1)),
        Err(HeadError::TooLarge)
    );
    let with_size = |size: usize| {
        let mut raw = b"GET / HTTP/1.1\r\nX: ".to_vec();
        raw.resize(size - 4, b'v');
        raw.extend_from_slice(b"\r\n\r\n");
        raw
    };
    let (_, len) = http::parse_head(&with_size(http::MAX_HEAD))
        .unwrap()
        .unwrap();
    assert_eq!(len, http::MAX_HEAD);
    assert_eq!(
        http::parse_head(&with_size(http::MAX_HEAD + 1)),
        Err(HeadError::TooLarge)
    );
}

// ---------------------------------------------------------------------------------------
// Controller commands
// ---------------------------------------------------------------------------------------

/// A user's `dst`: a host name, an IPv4 address or a bracketed IPv6 address, and a port.
fn valid_dst() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        "[a-z0-9]([a-z0-9._-]{0,30}[a-z0-9])?",
        any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<std::net::Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
    ];
    (host, 1u16..).prop_map(|(h, p)| format!("{h}:{p}"))
}

fn user_path() -> impl Strategy<Value = String> {
    "/\\PC{0,20}"
}

/// Any JSON value, with the keys the controller reads among the random ones.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(Value::from),
        select(vec![1i64, 2, 3, 9, 0, -1]).prop_map(Value::from),
        prop_oneof![user_path(), valid_dst(), "\\PC{0,10}"].prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            select(vec!["opt", "args_bunch", "path", "dst", "reset"]).prop_map(str::to_string),
            "\\PC{0,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Commands of the right shape with every field maybe missing, null, of the wrong type or
/// invalid.
fn command_like() -> impl Strategy<Value = Value> {
    let opt = prop_oneof![
        select(vec![1i64, 2, 3, 4, 5, 6, 9]).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        select(vec![
            Value::Null,
            Value::from("1"),
            Value::from(1.0),
            Value::from(u64::MAX),
            Value::from(true),
        ]),
    ];
    let field = prop_oneof![
        4 => user_path().prop_map(Value::from),
        4 => valid_dst().prop_map(Value::from),
        1 => select(vec![
            Value::Null,
            Value::from(""),
            Value::from("x"),
            Value::from("h"),
            Value::from("h:0"),
            Value::from(":80"),
            Value::from("h:65536"),
            Value::from(5),
            Value::from(vec![Value::from("/p")]),
        ]),
    ];
    let entry = prop_oneof![
        8 => (prop::option::of(field.clone()), prop::option::of(field), any::<bool>()).prop_map(
            |(path, dst, extra)| {
                let mut m = serde_json::Map::new();
                if let Some(p) = path {
                    m.insert("path".into(), p);
                }
                if let Some(d) = dst {
                    m.insert("dst".into(), d);
                }
                if extra {
                    m.insert("comment".into(), Value::from("x"));
                }
                Value::Object(m)
            }
        ),
        1 => json_value(),
    ];
    let args = prop_oneof![
        6 => prop::collection::vec(entry, 0..5).prop_map(Value::from),
        1 => json_value(),
    ];
    let reset = prop_oneof![
        Just(Value::Bool(true)),
        Just(Value::Bool(false)),
        Just(Value::Null),
        Just(Value::from(1)),
    ];
    (
        prop::option::of(opt),
        prop::option::of(args),
        prop::option::weighted(0.2, reset),
    )
        .prop_map(|(opt, args, reset)| {
            let mut m = serde_json::Map::new();
            if let Some(r) = reset {
                m.insert("reset".into(), r);
            }
            if let Some(o) = opt {
                m.insert("opt".into(), o);
            }
            if let Some(a) = args {
                m.insert("args_bunch".into(), a);
            }
            Value::Object(m)
        })
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

proptest! {
    #![proptest_config(config(256))]

    /// A valid add of random users (duplicates included, keys in any order, extra keys)
    /// parses to exactly those users in order; the same paths make a valid del.
    #[test]
    fn controller_valid_add_and_del(
        users in prop::collection::vec((user_path(), valid_dst()), 1..8),
        dup in any::<Index>(),
        opt_first in any::<bool>(),
        dst_first in any::<bool>(),
        extra in any::<bool>(),
    ) {
        let mut users = users;
        let again = users[dup.index(users.len())].clone();
        users.push(again);
        let entries: Vec<String> = users
            .iter()
            .map(|(p, d)| {
                let (p, d) = (format!("\"path\":{}", json_str(p)), format!("\"dst\":{}", json_str(d)));
                let (a, b) = if dst_first { (d, p) } else { (p, d) };
                let x = if extra { ",\"remark\":{\"k\":[1,2]}" } else { "" };
                format!("{{{a},{b}{x}}}")
            })
            .collect();
        let body = |opt: u8| {
            let (o, a) = (format!("\"opt\":{opt}"), format!("\"args_bunch\":[{}]", entries.join(",")));
            if opt_first { format!("{{{o},{a}}}") } else { format!("\n{{ {a} , {o} }}\n") }
        };
        let add = body(1);
        prop_assert_eq!(controller::parse_command(add.as_bytes()), Ok(Command::Add(users.iter().map(|(p, d)| NewUser { route: Route::new(p, d), limits: Limits::default() }).collect())));
        let _ = harness::controller_check(add.as_bytes());
        let paths: Vec<String> = users.into_iter().map(|(p, _)| p).collect();
        prop_assert_eq!(controller::parse_command(body(2).as_bytes()), Ok(Command::Del { paths, kick: false }));
    }

    /// Arbitrary JSON values never panic and mean what the controller's contract says
    /// (a command error is res 2, a wrong JSON type a 400).
    #[test]
    fn controller_arbitrary_json(value in prop_oneof![json_value(), command_like()]) {
        let body = serde_json::to_vec(&value).unwrap();
        let _ = harness::controller_check(&body);
    }

    /// Arbitrary bytes, and JSON-ish bytes, never panic and are refused as bad requests
    /// unless they are one JSON object.
    #[test]
    fn controller_arbitrary_bytes(
        data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(
                select(vec!["{", "}", "[", "]", "\"opt\"", "\"args_bunch\"", "\"path\"", "\"dst\"",
                    ":", ",", "1", "9", "-0", "1e3", "\"/p\"", "\"h:1\"", "null", " ", "\"\\ud800\"",
                    "\"\\u0000\"", "\u{ff}"]),
                0..40,
            ).prop_map(|p| p.concat().into_bytes()),
        ],
    ) {
        if let Ok(c) = harness::controller_check(&data) {
            prop_assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_ok(), "{:?}", c);
        }
    }

    /// `valid_dst` takes HOST:PORT with a name, IPv4 or bracketed IPv6 host and a port in
    /// 1..=65535, and nothing without a port.
    #[test]
    fn controller_valid_dst(dst in valid_dst(), port in prop_oneof![Just(0u32), 65536u32..]) {
        prop_assert!(controller::valid_dst(&dst), "{}", dst);
        let (host, _) = dst.rsplit_once(':').unwrap();
        prop_assert!(!controller::valid_dst(host), "{}", host);
        prop_assert!(!controller::valid_dst(&format!("{host}:{port}")), "{}:{}", host, port);
        prop_assert!(!controller::valid_dst(&format!("{host}:")), "{}:", host);
    }
}

#[test]
fn controller_spec_examples() {
    use CommandError::{BadRequest, Invalid};
    let kind = |body: &str| match controller::parse_command(body.as_bytes()) {
        Ok(c) => format!("{c:?}"),
        Err(BadRequest(_)) => "400".to_string(),
        Err(Invalid(_)) => "res 2".to_string(),
    };
    for (body, want) in [
        (r#"{}"#, "res 2"),
        (r#"{"opt":9}"#, "Ping"),
        (r#"{"opt":3,"args_bunch":null}"#, "Reset"),
        (r#"{"opt":1}"#, "res 2"),
        (r#"{"opt":1,"args_bunch":[]}"#, "res 2"),
        (r#"{"opt":1,"args_bunch":[{"path":"/p"}]}"#, "res 2"),
        (r#"{"opt":1,"args_bunch":[{"dst":"h:1"}]}"#, "res 2"),
        (
            r#"{"opt":1,"args_bunch":[{"path":"p","dst":"h:1"}]}"#,
            "res 2",
        ),
        (
            r#"{"opt":1,"args_bunch":[{"path":"/p","dst":"h"}]}"#,
            "res 2",
        ),
        (r#"{"opt":2,"args_bunch":[{"dst":"h:1"}]}"#, "res 2"),
        (r#"{"opt":4}"#, "res 2"),
        (r#"{"opt":"1"}"#, "400"),
        (r#"{"opt":1.0}"#, "400"),
        (r#"{"opt":9} x"#, "400"),
        (r#"[{"opt":9}]"#, "400"),
        (r#"null"#, "400"),
        (r#""#, "400"),
        (r#"{"opt":1,"args_bunch":{"path":"/p","dst":"h:1"}}"#, "400"),
        (r#"{"opt":1,"args_bunch":[{"path":1,"dst":"h:1"}]}"#, "400"),
    ] {
        assert_eq!(kind(body), want, "{body}");
        let _ = harness::controller_check(body.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------
// Seed corpora and regressions found by fuzzing
// ---------------------------------------------------------------------------------------

/// Every input in `fuzz/corpus/<target>/` (seeds and the regression inputs of bugs the
/// fuzzers found) passes the fuzz target's checks.
#[test]
fn fuzz_corpora_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 4] = [
        ("http_head", harness::fuzz_http_head),
        ("ws_decoder", harness::fuzz_ws_decoder),
        ("smux_decoder", harness::fuzz_smux_decoder),
        ("controller_command", harness::fuzz_controller_command),
    ];
    let mut failed = Vec::new();
    for (target, check) in targets {
        let dir = root.join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| check(&input)).is_err() {
                failed.push(path.strip_prefix(&root).unwrap().to_path_buf());
            }
            n += 1;
        }
        assert!(n > 0, "no corpus for {target}");
    }
    assert!(
        failed.is_empty(),
        "inputs that fail their checks: {failed:?}"
    );
}

/// `parse_command` must refuse an `args_bunch` entry that is a JSON array (a field of the
/// wrong JSON type: 400, as Go's decoder refuses it), not read it as `[path, dst]`.
#[test]
fn regression_args_bunch_entry_must_be_an_object() {
    for body in [
        r#"{"opt":1,"args_bunch":[["/p","h:1"]]}"#,
        r#"{"opt":2,"args_bunch":[["/p"]]}"#,
        r#"{"opt":2,"args_bunch":[["/p",null]]}"#,
        r#"{"opt":3,"args_bunch":[[]]}"#,
    ] {
        assert!(
            matches!(
                controller::parse_command(body.as_bytes()),
                Err(CommandError::BadRequest(_))
            ),
            "{body}: {:?}",
            controller::parse_command(body.as_bytes())
        );
    }
}

/// `Content-Length` is 1*DIGIT (RFC 9110 8.6; Go's `strconv.ParseUint` agrees): a sign or
/// Unicode white space around the digits makes it bad, not a length.
#[test]
fn regression_content_length_is_digits_only() {
    for value in [
        "+5", "5\u{a0}", "\u{a0}5", "\u{85}5", "-0", "5 5", "0x5", "",
    ] {
        let raw = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
        let (head, _) = http::parse_head(raw.as_bytes()).unwrap().unwrap();
        assert!(
            head.bad_content_length,
            "Content-Length: {value:?} gave {head:?}"
        );
    }
    for (value, n) in [("5", 5), (" 5\t", 5), ("007", 7)] {
        let raw = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
        let (head, _) = http::parse_head(raw.as_bytes()).unwrap().unwrap();
        assert_eq!(
            (head.content_length, head.bad_content_length),
            (Some(n), false)
        );
    }
}

/// Go cuts the query off an absolute-form target before it looks for the path, so
/// `http://h?x/p1` has an empty `URL.Path` (no user), not `/p1`.
#[test]
fn regression_route_key_absolute_form_query_is_not_the_path() {
    for target in ["http://h?x/p1", "ws://h:80?/p1", "https://h?a=/p1?b"] {
        assert_eq!(http::route_key(target), None, "{target}");
    }
    assert_eq!(http::route_key("http://h/p1?x/y").as_deref(), Some("/p1"));
}

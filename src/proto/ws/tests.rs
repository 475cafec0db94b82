//! Unit tests of [`super`]: edge cases of the codec, checked byte by byte.

use super::*;
use std::io::{Cursor, Read, Write};

/// The kit's seeded generator (`testkit::rng`), with the shapes these tests draw, so a
/// property test replays from its seed.
struct Rng(testkit::rng::Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(testkit::rng::Rng::new(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn mask(&mut self) -> [u8; 4] {
        (self.next() as u32).to_ne_bytes()
    }

    /// A size biased towards the interesting small values.
    fn size(&mut self) -> usize {
        match self.below(10) {
            0..=3 => self.below(8),
            4..=6 => self.below(300),
            7 | 8 => 60_000 + self.below(12_000),
            _ => self.below(3_000),
        }
    }

    /// Random text mixing 1- to 4-byte characters, of about `n` bytes.
    fn text(&mut self, n: usize) -> String {
        const CHARS: [char; 10] = [
            'a',
            'Z',
            '\u{7F}',
            'é',
            '\u{7FF}',
            '\u{800}',
            '€',
            '\u{FFFF}',
            '😀',
            '\u{10FFFF}',
        ];
        let mut s = String::new();
        while s.len() < n {
            s.push(CHARS[self.below(CHARS.len())]);
        }
        s
    }
}

const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BIN: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const FIN: u8 = 0x80;

/// Length encoding of a test frame: minimal, or forced 16/64-bit.
#[derive(Clone, Copy, Debug)]
enum Len {
    Min,
    L16,
    L64,
}

/// Reference client frame builder, independent of the code under test:
/// first byte `b0` verbatim, optional mask, chosen length encoding.
fn raw_frame(b0: u8, masked: bool, len: Len, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let m = if masked { 0x80 } else { 0 };
    let mut out = vec![b0];
    match len {
        Len::Min if n < 126 => out.push(m | n as u8),
        Len::Min | Len::L16 if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A well-formed masked client frame.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(b0, true, Len::Min, [0x37, 0xFA, 0x21, 0x3D], payload)
}

/// An owned copy of an event, with the bytes it refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Data(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, Vec<u8>),
}

/// Append `g`, merging adjacent data (read splits change how data is cut)
/// and dropping empty data.
fn push(got: &mut Vec<Got>, g: Got) {
    match (got.last_mut(), g) {
        (_, Got::Data(d)) if d.is_empty() => {}
        (Some(Got::Data(prev)), Got::Data(d)) => prev.extend_from_slice(&d),
        (_, g) => got.push(g),
    }
}

fn normalized(events: Vec<Got>) -> Vec<Got> {
    let mut out = Vec::new();
    for g in events {
        push(&mut out, g);
    }
    out
}

/// Feed one read's worth of bytes the way the relay does, checking the
/// `consumed` contract on every call.
fn feed(dec: &mut Decoder, chunk: &[u8], got: &mut Vec<Got>) -> Result<(), ProtocolError> {
    let mut buf = chunk.to_vec();
    let mut off = 0;
    loop {
        let rest = &mut buf[off..];
        let len = rest.len();
        let (event, n) = dec.decode(rest)?;
        assert!(n <= len, "consumed {n} of {len}");
        let Some(event) = event else {
            assert_eq!(n, len, "None must consume everything");
            return Ok(());
        };
        assert!(n > 0, "an event must consume input");
        let g = match event {
            Event::Data(r) => {
                assert!(!r.is_empty() && r.end <= n, "bad range {r:?} for {n}");
                Got::Data(rest[r].to_vec())
            }
            Event::Ping => Got::Ping(dec.control_payload().to_vec()),
            Event::Pong => Got::Pong(dec.control_payload().to_vec()),
            Event::Close(code) => {
                let reason = dec.control_payload().get(2..).unwrap_or_default();
                assert_eq!(code.is_none(), dec.control_payload().is_empty());
                Got::Close(code, reason.to_vec())
            }
        };
        push(got, g);
        off += n;
    }
}

/// Decode `stream` cut at the (sorted) positions `cuts`.
fn decode_cuts(stream: &[u8], cuts: &[usize]) -> (Vec<Got>, Option<ProtocolError>) {
    let mut dec = Decoder::new();
    let mut got = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        if let Err(e) = feed(&mut dec, &stream[start..end], &mut got) {
            // Errors are final.
            assert_eq!(dec.decode(&mut [0x82, 0x80, 0, 0, 0, 0]), Err(e));
            assert_eq!(dec.decode(&mut []), Err(e));
            return (got, Some(e));
        }
        start = end;
    }
    (got, None)
}

fn decode_whole(stream: &[u8]) -> (Vec<Got>, Option<ProtocolError>) {
    decode_cuts(stream, &[])
}

fn decode_bytewise(stream: &[u8]) -> (Vec<Got>, Option<ProtocolError>) {
    let cuts: Vec<usize> = (1..stream.len()).collect();
    decode_cuts(stream, &cuts)
}

/// Decode `stream` whole, byte by byte and cut in two at every boundary,
/// expecting the same outcome each time.
fn check_all_splits(stream: &[u8], want: &[Got], err: Option<ProtocolError>) {
    let want = normalized(want.to_vec());
    assert_eq!(decode_whole(stream), (want.clone(), err), "whole");
    assert_eq!(decode_bytewise(stream), (want.clone(), err), "bytewise");
    for cut in 0..=stream.len() {
        assert_eq!(
            decode_cuts(stream, &[cut]),
            (want.clone(), err),
            "cut {cut}"
        );
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

const SIZES: [usize; 8] = [0, 1, 125, 126, 127, 65535, 65536, 100_000];

/// The cut positions of `roundtrip_two_piece_splits` for a frame of `len`
/// bytes: every boundary, except for big frames where the middle of the
/// payload is sampled (every boundary there costs O(n^2)); see the ignored
/// exhaustive test.
fn cut_points(len: usize) -> Vec<usize> {
    if len <= 4096 {
        return (0..=len).collect();
    }
    (0..=len)
        .filter(|&c| c < 1100 || c > len - 1100 || c % 131 == 0)
        .collect()
}

fn roundtrip_sizes(exhaustive: bool) {
    for (i, &size) in SIZES.iter().enumerate() {
        let payload = pattern(size);
        let mask = [0x11 * i as u8, 0xA5, 0x5A ^ i as u8, 0xFF];
        let stream = raw_frame(FIN | BIN, true, Len::Min, mask, &payload);
        let want = normalized(vec![Got::Data(payload.clone())]);
        let cuts = if exhaustive {
            (0..=stream.len()).collect()
        } else {
            cut_points(stream.len())
        };
        for cut in cuts {
            let (got, err) = decode_cuts(&stream, &[cut]);
            assert_eq!(err, None, "size {size} cut {cut}");
            assert!(got == want, "size {size} cut {cut}: payload differs");
        }
    }
}

#[test]
fn roundtrip_two_piece_splits() {
    roundtrip_sizes(false);
}

/// Every two-piece split of every size, including the big ones (slow in
/// debug builds: run with `cargo test --release -- --ignored`).
#[test]
#[ignore]
fn roundtrip_two_piece_splits_exhaustive() {
    roundtrip_sizes(true);
}

#[test]
fn roundtrip_one_byte_at_a_time() {
    for &size in &SIZES {
        let payload = pattern(size);
        let stream = frame(FIN | BIN, &payload);
        let want = normalized(vec![Got::Data(payload)]);
        assert!(decode_bytewise(&stream) == (want, None), "size {size}");
    }
}

#[test]
fn roundtrip_all_sizes_in_one_stream() {
    let mut stream = Vec::new();
    let mut want = Vec::new();
    for &size in &SIZES {
        let payload = pattern(size);
        stream.extend(frame(FIN | TEXT, &vec![b'x'; size]));
        stream.extend(frame(FIN | BIN, &payload));
        want.push(Got::Data(vec![b'x'; size]));
        want.push(Got::Data(payload));
    }
    let want = normalized(want);
    for cut in (0..=stream.len()).step_by(997) {
        assert!(
            decode_cuts(&stream, &[cut]) == (want.clone(), None),
            "cut {cut}"
        );
    }
    let mut dec = Decoder::new();
    let mut buf = stream.clone();
    let mut got = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let (event, n) = dec.decode(&mut buf[off..]).unwrap();
        if let Some(Event::Data(r)) = event {
            // Ranges are relative to the slice passed in.
            got.push(Got::Data(buf[off..][r].to_vec()));
        }
        off += n;
    }
    assert!(normalized(got) == want);
}

#[test]
fn data_streams_before_frame_is_complete() {
    let payload = pattern(1000);
    let mut stream = frame(FIN | BIN, &payload);
    let mut dec = Decoder::new();
    // Header (2 + 2 + 4 bytes) plus 10 payload bytes.
    let (event, n) = dec.decode(&mut stream[..18]).unwrap();
    assert_eq!((event, n), (Some(Event::Data(8..18)), 18));
    assert_eq!(&stream[8..18], &payload[..10]);
    assert!(dec.in_message());
    let (event, n) = dec.decode(&mut stream[18..]).unwrap();
    assert_eq!((event, n), (Some(Event::Data(0..990)), 990));
    assert_eq!(&stream[18..], &payload[10..]);
    assert!(!dec.in_message());
}

#[test]
fn header_is_absorbed_into_the_decoder() {
    let mut stream = frame(FIN | BIN, &pattern(70_000));
    let mut dec = Decoder::new();
    // The 14-byte header in three pieces, each fully consumed.
    for piece in [0..1, 1..5, 5..14] {
        let len = piece.len();
        assert_eq!(dec.decode(&mut stream[piece]), Ok((None, len)));
    }
    let (event, n) = dec.decode(&mut stream[14..20]).unwrap();
    assert_eq!((event, n), (Some(Event::Data(0..6)), 6));
    assert_eq!(&stream[14..20], &pattern(6)[..]);
    assert_eq!(dec.decode(&mut []), Ok((None, 0)));
}

#[test]
fn fragmented_message_with_interleaved_control_frames() {
    let frames = [
        frame(TEXT, b"Hel"),
        frame(FIN | PING, b"p1"),
        frame(CONT, b"lo, "),
        frame(FIN | PONG, b""),
        frame(CONT, b""),
        frame(FIN | PING, &[7; 125]),
        frame(FIN | CONT, "wörld".as_bytes()),
        frame(FIN | BIN, b"x"),
    ];
    // in_message() after each whole frame.
    let in_message = [true, true, true, true, true, true, false, false];
    let mut dec = Decoder::new();
    for (f, want) in frames.iter().zip(in_message) {
        let mut got = Vec::new();
        feed(&mut dec, f, &mut got).unwrap();
        assert_eq!(dec.in_message(), want);
    }
    let stream = frames.concat();
    let want = [
        Got::Data(b"Hel".to_vec()),
        Got::Ping(b"p1".to_vec()),
        Got::Data(b"lo, ".to_vec()),
        Got::Pong(vec![]),
        Got::Ping(vec![7; 125]),
        Got::Data("wörldx".as_bytes().to_vec()),
    ];
    check_all_splits(&stream, &want, None);
}

#[test]
fn close_between_fragments() {
    let mut close = vec![0x03, 0xE9];
    close.extend_from_slice("bye ✓".as_bytes());
    let stream = [
        frame(BIN, b"ab"),
        frame(FIN | CLOSE, &close),
        frame(FIN | CONT, b"cd"),
    ]
    .concat();
    let want = [
        Got::Data(b"ab".to_vec()),
        Got::Close(Some(1001), "bye ✓".as_bytes().to_vec()),
        Got::Data(b"cd".to_vec()),
    ];
    check_all_splits(&stream, &want, None);
}

#[test]
fn control_frames() {
    let stream = [
        frame(FIN | PING, b""),
        frame(FIN | PING, b"hello"),
        frame(FIN | PONG, &pattern(125)),
        frame(FIN | CLOSE, b""),
        frame(FIN | CLOSE, &[0x0F, 0xA0]),
        frame(FIN | CLOSE, &[0x03, 0xE8, b'o', b'k']),
    ]
    .concat();
    let want = [
        Got::Ping(vec![]),
        Got::Ping(b"hello".to_vec()),
        Got::Pong(pattern(125)),
        Got::Close(None, vec![]),
        Got::Close(Some(4000), vec![]),
        Got::Close(Some(1000), b"ok".to_vec()),
    ];
    check_all_splits(&stream, &want, None);
}

#[test]
fn control_payload_is_returned_until_next_call() {
    let mut stream = frame(FIN | PING, b"are you there");
    let mut dec = Decoder::new();
    assert_eq!(dec.decode(&mut stream[..9]), Ok((None, 9)));
    let (event, n) = dec.decode(&mut stream[9..]).unwrap();
    assert_eq!((event, n), (Some(Event::Ping), stream.len() - 9));
    assert_eq!(dec.control_payload(), b"are you there");
}

#[test]
fn empty_data_frames_produce_no_events() {
    let mut dec = Decoder::new();
    let mut got = Vec::new();
    feed(&mut dec, &frame(FIN | BIN, b""), &mut got).unwrap();
    assert!(got.is_empty() && !dec.in_message());
    feed(&mut dec, &frame(TEXT, b""), &mut got).unwrap();
    assert!(got.is_empty() && dec.in_message());
    feed(&mut dec, &frame(CONT, b""), &mut got).unwrap();
    assert!(got.is_empty() && dec.in_message());
    feed(&mut dec, &frame(FIN | CONT, b""), &mut got).unwrap();
    assert!(got.is_empty() && !dec.in_message());
    // A stream of empty frames followed by data: one call skips them all.
    let mut stream = [frame(FIN | TEXT, b""), frame(FIN | BIN, b"z")].concat();
    let len = stream.len();
    assert_eq!(
        Decoder::new().decode(&mut stream),
        Ok((Some(Event::Data(len - 1..len)), len))
    );
}

#[test]
fn non_minimal_lengths_are_tolerated() {
    let m = [1, 2, 3, 4];
    let stream = [
        raw_frame(FIN | BIN, true, Len::L16, m, b"short"),
        raw_frame(FIN | BIN, true, Len::L64, m, b"words"),
        raw_frame(FIN | TEXT, true, Len::L64, m, b""),
        raw_frame(FIN | PING, true, Len::L16, m, b"p"),
        raw_frame(FIN | PONG, true, Len::L64, m, &[9; 125]),
        raw_frame(FIN | BIN, true, Len::L64, m, &pattern(300)),
    ]
    .concat();
    let mut want_data = b"shortwords".to_vec();
    let want = [
        Got::Data(std::mem::take(&mut want_data)),
        Got::Ping(b"p".to_vec()),
        Got::Pong(vec![9; 125]),
        Got::Data(pattern(300)),
    ];
    check_all_splits(&stream, &want, None);
}

/// Valid UTF-8 cut into three fragments at every pair of positions, each
/// decoded whole and byte by byte (characters split across frames and reads).
#[test]
fn utf8_split_across_frames_and_reads() {
    let text = "a\u{7F}é€😀\u{10FFFF}\u{800}z";
    let bytes = text.as_bytes();
    for i in 0..=bytes.len() {
        for j in i..=bytes.len() {
            let stream = [
                frame(TEXT, &bytes[..i]),
                frame(FIN | PING, b"!"),
                frame(CONT, &bytes[i..j]),
                frame(FIN | CONT, &bytes[j..]),
            ]
            .concat();
            let want = normalized(vec![
                Got::Data(bytes[..i].to_vec()),
                Got::Ping(b"!".to_vec()),
                Got::Data(bytes[i..].to_vec()),
            ]);
            assert_eq!(decode_whole(&stream), (want.clone(), None), "{i} {j}");
            assert_eq!(decode_bytewise(&stream), (want, None), "{i} {j}");
        }
    }
    // Data events of text are the original bytes, emitted in place.
    check_all_splits(
        &frame(FIN | TEXT, bytes),
        &[Got::Data(bytes.to_vec())],
        None,
    );
}

#[test]
fn invalid_utf8_is_rejected_wherever_it_is_split() {
    let bad: [&[u8]; 12] = [
        &[0xFF],
        &[0x80],
        &[b'a', 0xC3],                         // truncated at the end of the message
        &[0xE2, 0x82],                         // truncated at the end of the message
        &[0xF0, 0x9F, 0x98],                   // truncated at the end of the message
        &[0xC0, 0x80],                         // overlong
        &[0xE0, 0x80, 0xAF],                   // overlong
        &[0xED, 0xA0, 0x80],                   // surrogate
        &[0xF4, 0x90, 0x80, 0x80],             // above U+10FFFF
        &[0xF5, 0x80, 0x80, 0x80],             // invalid lead byte
        &[0xE2, 0x41, 0x82],                   // missing continuation byte
        &[b'o', b'k', 0xCE, 0xBA, 0xE1, b'x'], // valid prefix
    ];
    for seq in bad {
        for cut in 0..=seq.len() {
            let stream = [frame(TEXT, &seq[..cut]), frame(FIN | CONT, &seq[cut..])].concat();
            for (got, err) in [decode_whole(&stream), decode_bytewise(&stream)] {
                assert_eq!(err, Some(ProtocolError::InvalidUtf8), "{seq:x?} cut {cut}");
                // Whatever was emitted is a prefix of the input.
                if let Some(Got::Data(d)) = got.first() {
                    assert!(seq.starts_with(d));
                }
            }
        }
        // Binary messages are not validated.
        let stream = frame(FIN | BIN, seq);
        assert_eq!(decode_whole(&stream), (vec![Got::Data(seq.to_vec())], None));
    }
    // Fail fast: the error is reported before the message ends.
    let stream = frame(TEXT, &[b'a', 0xE2, 0x28, b'b']);
    assert_eq!(decode_whole(&stream).1, Some(ProtocolError::InvalidUtf8));
    assert_eq!(ProtocolError::InvalidUtf8.close_code(), 1007);
}

/// One crafted frame per error variant, with its close code.
#[test]
fn every_protocol_error() {
    use ProtocolError::*;
    let m = [9, 8, 7, 6];
    let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
        (raw_frame(FIN | BIN, false, Len::Min, m, b"hi"), Unmasked),
        (raw_frame(FIN | PING, false, Len::Min, m, b""), Unmasked),
        (frame(FIN | 0x40 | BIN, b"x"), ReservedBits),
        (frame(FIN | 0x20 | TEXT, b"x"), ReservedBits),
        (frame(FIN | 0x10 | PING, b"x"), ReservedBits),
        (frame(FIN | 0x3, b"x"), BadOpcode(0x3)),
        (frame(FIN | 0x7, b"x"), BadOpcode(0x7)),
        (frame(FIN | 0xB, b"x"), BadOpcode(0xB)),
        (frame(FIN | 0xF, b""), BadOpcode(0xF)),
        (frame(FIN | PING, &[0; 126]), ControlTooLong),
        (
            frame(FIN | CLOSE, &[0x03, 0xE8].repeat(100)),
            ControlTooLong,
        ),
        (
            raw_frame(FIN | PONG, true, Len::L64, m, &[0; 126]),
            ControlTooLong,
        ),
        (frame(PING, b""), FragmentedControl),
        (frame(CLOSE, &[0x03, 0xE8]), FragmentedControl),
        (frame(FIN | CONT, b"x"), UnexpectedContinuation),
        (frame(CONT, b""), UnexpectedContinuation),
        (
            [frame(FIN | TEXT, b"done"), frame(FIN | CONT, b"x")].concat(),
            UnexpectedContinuation,
        ),
        (
            [frame(TEXT, b"a"), frame(FIN | BIN, b"b")].concat(),
            ExpectedContinuation,
        ),
        (
            [frame(BIN, b"a"), frame(TEXT, b"b")].concat(),
            ExpectedContinuation,
        ),
        (
            [frame(BIN, b"a"), frame(FIN | PING, b""), frame(BIN, b"")].concat(),
            ExpectedContinuation,
        ),
        (
            vec![FIN | BIN, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1],
            LengthOverflow,
        ),
        (
            vec![FIN | BIN, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            LengthOverflow,
        ),
        (frame(FIN | CLOSE, &[0x03]), BadClosePayload),
        (frame(FIN | CLOSE, &[0x03, 0xED]), BadClosePayload), // 1005
        (frame(FIN | CLOSE, &[0x03, 0xEE, b'x']), BadClosePayload), // 1006
        (frame(FIN | CLOSE, &[0x03, 0xF7]), BadClosePayload), // 1015
        (frame(FIN | TEXT, &[0xC3, 0x28]), InvalidUtf8),
        (frame(FIN | CLOSE, &[0x03, 0xE8, 0xFF]), InvalidUtf8),
        (
            frame(FIN | CLOSE, &[0x03, 0xE8, b'a', 0xE2, 0x82]),
            InvalidUtf8,
        ),
    ];
    for (stream, err) in &cases {
        let want_code = if *err == InvalidUtf8 { 1007 } else { 1002 };
        assert_eq!(err.close_code(), want_code);
        assert!(!err.to_string().is_empty());
        let (_, got) = decode_whole(stream);
        assert_eq!(got, Some(*err), "{stream:x?}");
        assert_eq!(decode_bytewise(stream).1, Some(*err), "{stream:x?}");
    }
    // Every variant is covered.
    let covered = |f: fn(&ProtocolError) -> bool| cases.iter().any(|(_, e)| f(e));
    assert!(covered(|e| matches!(e, Unmasked)));
    assert!(covered(|e| matches!(e, ReservedBits)));
    assert!(covered(|e| matches!(e, BadOpcode(_))));
    assert!(covered(|e| matches!(e, ControlTooLong)));
    assert!(covered(|e| matches!(e, FragmentedControl)));
    assert!(covered(|e| matches!(e, UnexpectedContinuation)));
    assert!(covered(|e| matches!(e, ExpectedContinuation)));
    assert!(covered(|e| matches!(e, LengthOverflow)));
    assert!(covered(|e| matches!(e, BadClosePayload)));
    assert!(covered(|e| matches!(e, InvalidUtf8)));
    for op in (0x3..=0x7).chain(0xB..=0xF) {
        assert_eq!(decode_whole(&frame(FIN | op, b"")).1, Some(BadOpcode(op)));
    }
}

#[test]
fn close_codes_on_the_wire() {
    let valid: [u16; 13] = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ];
    let invalid: [u16; 16] = [
        0, 1, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ];
    for code in valid {
        let stream = frame(FIN | CLOSE, &code.to_be_bytes());
        assert_eq!(
            decode_whole(&stream),
            (vec![Got::Close(Some(code), vec![])], None)
        );
    }
    for code in invalid {
        let stream = frame(FIN | CLOSE, &code.to_be_bytes());
        assert_eq!(
            decode_whole(&stream).1,
            Some(ProtocolError::BadClosePayload),
            "{code}"
        );
    }
    for code in [
        close_code::NORMAL,
        close_code::GOING_AWAY,
        close_code::PROTOCOL_ERROR,
        close_code::INVALID_DATA,
        close_code::POLICY,
        close_code::TOO_BIG,
        close_code::INTERNAL_ERROR,
    ] {
        assert!(is_valid_close_code(code), "{code}");
    }
}

#[test]
fn opcode_values() {
    let all = [
        (OpCode::Continuation, 0x0),
        (OpCode::Text, 0x1),
        (OpCode::Binary, 0x2),
        (OpCode::Close, 0x8),
        (OpCode::Ping, 0x9),
        (OpCode::Pong, 0xA),
    ];
    for (op, v) in all {
        assert_eq!(op.as_u8(), v);
        assert_eq!(OpCode::from_u8(v), Some(op));
        assert_eq!(op.is_control(), v >= 8);
    }
    assert_eq!((0..=255).filter_map(OpCode::from_u8).count(), 6);
}

#[test]
fn decoder_is_small() {
    assert!(std::mem::size_of::<Decoder>() < 200);
}

fn naive_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(offset + i) % 4];
    }
}

#[test]
fn apply_mask_matches_naive() {
    let mut rng = Rng::new(1);
    let mask = [0xDE, 0xAD, 0xBE, 0xEF];
    let backing = rng.bytes(100_100);
    for offset in 0..8 {
        for len in (0..100).chain([4095, 100_003]) {
            // Also vary the start address, for unaligned words.
            let start = offset % 5;
            let mut ours = backing[start..start + len].to_vec();
            let mut want = ours.clone();
            apply_mask(&mut ours, mask, offset);
            naive_mask(&mut want, mask, offset);
            assert_eq!(ours, want, "offset {offset} len {len}");
        }
    }
    // Masking piecewise with running offsets equals masking at once.
    let mut whole = backing[..1000].to_vec();
    apply_mask(&mut whole, mask, 0);
    let mut pieces = backing[..1000].to_vec();
    let mut at = 0;
    for n in [1, 2, 3, 17, 64, 5, 300, 608] {
        apply_mask(&mut pieces[at..at + n], mask, at);
        at += n;
    }
    assert_eq!(whole, pieces);
    // Masking twice is the identity.
    apply_mask(&mut whole, mask, 0);
    assert_eq!(whole, &backing[..1000]);
}

#[test]
fn encode_header_boundaries() {
    let cases: [(u64, &[u8]); 7] = [
        (0, &[0x82, 0]),
        (125, &[0x82, 125]),
        (126, &[0x82, 126, 0x00, 0x7E]),
        (127, &[0x82, 126, 0x00, 0x7F]),
        (65535, &[0x82, 126, 0xFF, 0xFF]),
        (65536, &[0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]),
        (
            (1 << 63) - 1,
            &[0x82, 127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        ),
    ];
    for (len, want) in cases {
        let mut out = [0xAA; MAX_SERVER_HEADER];
        let n = encode_header(OpCode::Binary, len, &mut out);
        assert_eq!(&out[..n], want, "len {len}");
        assert_eq!(header_len(len), n);
    }
    for (op, b0) in [
        (OpCode::Continuation, 0x80),
        (OpCode::Text, 0x81),
        (OpCode::Close, 0x88),
        (OpCode::Ping, 0x89),
        (OpCode::Pong, 0x8A),
    ] {
        let mut out = [0; MAX_SERVER_HEADER];
        assert_eq!(encode_header(op, 3, &mut out), 2);
        assert_eq!(out[..2], [b0, 3]);
    }
}

#[test]
fn encode_frame_boundaries() {
    for (len, header) in [
        (0usize, vec![0x82, 0]),
        (125, vec![0x82, 125]),
        (126, vec![0x82, 126, 0, 126]),
        (65535, vec![0x82, 126, 0xFF, 0xFF]),
        (65536, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
    ] {
        let payload = pattern(len);
        let mut out = vec![0xEE]; // appends, keeps what was there
        encode_frame(OpCode::Binary, &payload, &mut out);
        let want = [&[0xEE][..], &header, &payload].concat();
        assert!(out == want, "len {len}");
    }
    let mut out = Vec::new();
    encode_frame(OpCode::Ping, b"abc", &mut out);
    assert_eq!(out, [0x89, 3, b'a', b'b', b'c']);
}

#[test]
fn encode_close_frames() {
    let mut out = Vec::new();
    encode_close(1000, "", &mut out);
    assert_eq!(out, [0x88, 2, 0x03, 0xE8]);
    out.clear();
    encode_close(close_code::PROTOCOL_ERROR, "bad", &mut out);
    assert_eq!(out, [0x88, 5, 0x03, 0xEA, b'b', b'a', b'd']);
    // Reasons are cut to 123 bytes on a char boundary.
    for (reason, kept) in [
        ("x".repeat(123), 123),
        ("x".repeat(124), 123),
        ("x".repeat(300), 123),
        ("é".repeat(70), 122),
        ("€".repeat(50), 123),
        ("😀".repeat(40), 120),
        (format!("{}é", "x".repeat(122)), 122),
    ] {
        out.clear();
        encode_close(4000, &reason, &mut out);
        assert_eq!(out.len(), 4 + kept, "{reason}");
        assert_eq!(out[..4], [0x88, (2 + kept) as u8, 0x0F, 0xA0]);
        assert_eq!(&out[4..], &reason.as_bytes()[..kept]);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}

/// In-memory stream for driving tungstenite.
struct Mem {
    /// Bytes tungstenite reads (our server frames).
    input: Cursor<Vec<u8>>,
    /// Bytes tungstenite writes (its masked client frames).
    output: Vec<u8>,
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn tungstenite_client(input: Vec<u8>) -> tungstenite::WebSocket<Mem> {
    let mem = Mem {
        input: Cursor::new(input),
        output: Vec::new(),
    };
    tungstenite::WebSocket::from_raw_socket(mem, tungstenite::protocol::Role::Client, None)
}

#[test]
fn tungstenite_client_frames_decode() {
    use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode as TOp};
    use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};
    use tungstenite::Message;

    // Whole messages written by tungstenite's client side (random masks).
    let mut ws = tungstenite_client(Vec::new());
    let big = pattern(70_000);
    ws.send(Message::text("héllo wörld €😀")).unwrap();
    ws.send(Message::binary(big.clone())).unwrap();
    ws.send(Message::Ping(b"ping!".to_vec().into())).unwrap();
    ws.send(Message::Pong(Vec::new().into())).unwrap();
    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "gone ✓".into(),
    }))
    .unwrap();
    ws.flush().unwrap();
    let stream = std::mem::take(&mut ws.get_mut().output);
    let want = normalized(vec![
        Got::Data("héllo wörld €😀".as_bytes().to_vec()),
        Got::Data(big),
        Got::Ping(b"ping!".to_vec()),
        Got::Pong(vec![]),
        Got::Close(Some(1001), "gone ✓".as_bytes().to_vec()),
    ]);
    for cut in (0..=stream.len()).step_by(37) {
        assert!(
            decode_cuts(&stream, &[cut]) == (want.clone(), None),
            "cut {cut}"
        );
    }
    assert!(decode_bytewise(&stream) == (want, None));

    // Hand-made fragmented frames formatted by tungstenite, at all sizes.
    let mut stream = Vec::new();
    let mut want = Vec::new();
    let mut rng = Rng::new(7);
    for &size in &SIZES {
        let payload = pattern(size);
        let mid = size / 3;
        for (part, opcode, fin) in [
            (&payload[..mid], TOp::Data(Data::Binary), false),
            (&payload[mid..], TOp::Data(Data::Continue), true),
        ] {
            let header = FrameHeader {
                is_final: fin,
                opcode,
                mask: Some(rng.mask()),
                ..FrameHeader::default()
            };
            Frame::from_payload(header, part.to_vec().into())
                .format(&mut stream)
                .unwrap();
        }
        want.push(Got::Data(payload));
    }
    let want = normalized(want);
    for cut in (0..=stream.len()).step_by(4999) {
        assert!(
            decode_cuts(&stream, &[cut]) == (want.clone(), None),
            "cut {cut}"
        );
    }
}

#[test]
fn our_frames_parse_with_tungstenite() {
    use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode as TOp};
    use tungstenite::protocol::frame::FrameHeader;
    use tungstenite::Message;

    // Headers at the length boundaries.
    for len in [0u64, 1, 125, 126, 127, 65535, 65536, 100_000, 1 << 40] {
        for (op, top) in [
            (OpCode::Binary, TOp::Data(Data::Binary)),
            (OpCode::Text, TOp::Data(Data::Text)),
            (OpCode::Continuation, TOp::Data(Data::Continue)),
        ] {
            let mut out = [0; MAX_SERVER_HEADER];
            let n = encode_header(op, len, &mut out);
            let mut cursor = Cursor::new(&out[..n]);
            let (header, parsed_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(parsed_len, len);
            assert_eq!(cursor.position() as usize, n);
            assert!(header.is_final && header.mask.is_none());
            assert!(!header.rsv1 && !header.rsv2 && !header.rsv3);
            assert_eq!(header.opcode, top);
            assert_eq!(header.len(len), n);
        }
    }

    // Whole frames read by tungstenite's client side (which rejects masks).
    let big = pattern(70_000);
    let mut stream = Vec::new();
    encode_frame(OpCode::Text, "sérvér €".as_bytes(), &mut stream);
    encode_frame(OpCode::Binary, &big, &mut stream);
    encode_frame(OpCode::Binary, &pattern(126), &mut stream);
    encode_frame(OpCode::Ping, b"hb", &mut stream);
    let mut header = [0; MAX_SERVER_HEADER];
    let n = encode_header(OpCode::Binary, 65535, &mut header);
    stream.extend_from_slice(&header[..n]);
    stream.extend_from_slice(&pattern(65535));
    encode_close(
        close_code::GOING_AWAY,
        &"shutting down ".repeat(20),
        &mut stream,
    );
    let mut ws = tungstenite_client(stream);
    assert_eq!(ws.read().unwrap(), Message::text("sérvér €"));
    assert_eq!(ws.read().unwrap(), Message::binary(big));
    assert_eq!(ws.read().unwrap(), Message::binary(pattern(126)));
    assert_eq!(ws.read().unwrap(), Message::Ping(b"hb".to_vec().into()));
    assert_eq!(ws.read().unwrap(), Message::binary(pattern(65535)));
    match ws.read().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Away);
            assert_eq!(frame.reason.as_str(), &"shutting down ".repeat(20)[..123]);
        }
        other => panic!("expected close, got {other:?}"),
    }
}

/// A random valid client stream and the events it must decode to.
fn random_stream(rng: &mut Rng) -> (Vec<u8>, Vec<Got>) {
    let mut stream = Vec::new();
    let mut want = Vec::new();
    let len_form = |rng: &mut Rng, n: usize| match rng.below(6) {
        0 if n < 65536 => Len::L16,
        1 => Len::L64,
        _ => Len::Min,
    };
    let control = |rng: &mut Rng, stream: &mut Vec<u8>, want: &mut Vec<Got>| {
        let n = rng.below(126);
        let (op, payload, got) = match rng.below(3) {
            0 => {
                let p = rng.bytes(n);
                (PING, p.clone(), Got::Ping(p))
            }
            1 => {
                let p = rng.bytes(n);
                (PONG, p.clone(), Got::Pong(p))
            }
            _ if n == 0 => (CLOSE, vec![], Got::Close(None, vec![])),
            _ => {
                let code = [1000, 1001, 1003, 1011, 3000, 4999][rng.below(6)];
                let n = rng.below(110);
                let mut reason = rng.text(n);
                while reason.len() > 123 {
                    reason.pop();
                }
                let mut p = u16::to_be_bytes(code).to_vec();
                p.extend_from_slice(reason.as_bytes());
                (CLOSE, p, Got::Close(Some(code), reason.into_bytes()))
            }
        };
        let form = len_form(rng, payload.len());
        stream.extend(raw_frame(FIN | op, true, form, rng.mask(), &payload));
        want.push(got);
    };
    for _ in 0..1 + rng.below(6) {
        if rng.chance(30) {
            control(rng, &mut stream, &mut want);
            continue;
        }
        let size = rng.size();
        let (op, payload) = if rng.chance(50) {
            (TEXT, rng.text(size).into_bytes())
        } else {
            (BIN, rng.bytes(size))
        };
        // Fragment at random points (empty fragments included).
        let mut cuts: Vec<usize> = (0..rng.below(4))
            .map(|_| rng.below(payload.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.push(payload.len());
        let mut start = 0;
        for (k, &end) in cuts.iter().enumerate() {
            let fin = if k + 1 == cuts.len() { FIN } else { 0 };
            let opcode = if k == 0 { op } else { CONT };
            let part = &payload[start..end];
            let form = len_form(rng, part.len());
            stream.extend(raw_frame(fin | opcode, true, form, rng.mask(), part));
            want.push(Got::Data(part.to_vec()));
            if fin == 0 && rng.chance(40) {
                control(rng, &mut stream, &mut want);
            }
            start = end;
        }
    }
    (stream, normalized(want))
}

fn random_cuts(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(len + 1)).collect();
    if rng.chance(20) {
        // Many small reads around one spot.
        let at = rng.below(len + 1);
        cuts.extend((at..len.min(at + 40)).step_by(1 + rng.below(3)));
    }
    cuts.sort_unstable();
    cuts
}

#[test]
fn property_random_valid_streams() {
    let mut rng = Rng::new(0x5EED);
    for round in 0..400 {
        let (stream, want) = random_stream(&mut rng);
        for _ in 0..4 {
            let cuts = random_cuts(&mut rng, stream.len());
            let got = decode_cuts(&stream, &cuts);
            assert!(got == (want.clone(), None), "round {round} cuts {cuts:?}");
        }
        if stream.len() < 2000 {
            assert!(decode_bytewise(&stream) == (want, None), "round {round}");
        }
    }
}

#[test]
fn property_valid_prefix_then_bad_frame() {
    use ProtocolError::*;
    let mut rng = Rng::new(42);
    for round in 0..300 {
        let (mut stream, want) = random_stream(&mut rng);
        let m = rng.mask();
        let (bad, err) = match rng.below(8) {
            0 => (raw_frame(FIN | BIN, false, Len::Min, m, b"x"), Unmasked),
            1 => (frame(FIN | 0x40 | TEXT, b"x"), ReservedBits),
            2 => (frame(FIN | 0xC, b""), BadOpcode(0xC)),
            3 => (frame(FIN | PONG, &[1; 126]), ControlTooLong),
            4 => (frame(PING, b""), FragmentedControl),
            5 => (frame(FIN | CONT, b"x"), UnexpectedContinuation),
            6 => (vec![BIN, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], LengthOverflow),
            _ => (frame(FIN | CLOSE, &[0x03, 0xEE]), BadClosePayload),
        };
        stream.extend(bad);
        stream.extend(frame(FIN | BIN, b"never seen"));
        let cuts = random_cuts(&mut rng, stream.len());
        let got = decode_cuts(&stream, &cuts);
        assert!(got == (want, Some(err)), "round {round} cuts {cuts:?}");
    }
}

#[test]
fn property_garbage_never_panics() {
    let mut rng = Rng::new(0xBAD);
    for _ in 0..3000 {
        let len = rng.below(600);
        let mut stream = rng.bytes(len);
        if rng.chance(50) && len >= 2 {
            // Mostly plausible headers, so decoding gets deep.
            stream[0] = (stream[0] & 0x8F) | if rng.chance(90) { 0x80 } else { 0 };
            stream[1] = 0x80 | (stream[1] % 130);
        }
        let cuts = random_cuts(&mut rng, len);
        let _ = decode_cuts(&stream, &cuts);
    }
    // Valid streams with a few corrupted bytes.
    for _ in 0..300 {
        let (mut stream, _) = random_stream(&mut rng);
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(stream.len());
            stream[i] ^= 1 << rng.below(8);
        }
        let cuts = random_cuts(&mut rng, stream.len());
        let _ = decode_cuts(&stream, &cuts);
    }
}

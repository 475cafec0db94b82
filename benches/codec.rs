//! The wire codecs on the relay's hot path: RFC 6455 frames (decoding a masked client frame
//! with in-place unmasking, encoding server frames) and smux v1 frames, at the payload sizes
//! a tunnel sees (1 KiB, 16 KiB as mtt-client and smux write, 64 KiB as our read buffer).
//!
//! Throughput is in payload bytes. `cargo bench -- --test` runs each once as a smoke test.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mtt_mu_server::smux;
use mtt_mu_server::ws::{self, OpCode};

const SIZES: [usize; 3] = [1024, 16 * 1024, 64 * 1024];

/// A masked binary client frame (FIN set) carrying `len` bytes.
fn client_frame(len: usize, mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x82];
    if len <= 125 {
        frame.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    let start = frame.len();
    frame.extend((0..len).map(|i| (i * 7 + 3) as u8));
    ws::apply_mask(&mut frame[start..], mask, 0);
    frame
}

/// Decodes every event in `buf`, returning the payload bytes seen. The buffer is unmasked
/// in place, so calling this twice on the same buffer toggles the payload between masked
/// and plain: the work per call is the same, and no copy pollutes the measurement.
fn decode_all(buf: &mut [u8]) -> usize {
    let mut decoder = ws::Decoder::new();
    let mut pos = 0;
    let mut payload = 0;
    while pos < buf.len() {
        match decoder.decode(&mut buf[pos..]) {
            Ok((Some(ws::Event::Data(range)), consumed)) => {
                payload += range.len();
                black_box(&buf[pos + range.start]);
                pos += consumed;
            }
            Ok((_, consumed)) => pos += consumed,
            Err(e) => panic!("decode: {e}"),
        }
    }
    payload
}

fn ws_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_decode_unmask");
    for size in SIZES {
        let mut frame = client_frame(size, [0x37, 0xfa, 0x21, 0x3d]);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter(|| assert_eq!(decode_all(black_box(&mut frame)), size))
        });
    }
    group.finish();

    // What the relay's 64 KiB read buffer holds when a client writes 1 KiB messages: many
    // small frames per read, so the per-frame cost shows.
    let mut group = c.benchmark_group("ws_decode_unmask_stream");
    let mut stream = Vec::new();
    let mut frames = 0;
    while stream.len() + 1024 + 8 <= 64 * 1024 {
        stream.extend(client_frame(1024, [1, 2, 3, frames as u8]));
        frames += 1;
    }
    group.throughput(Throughput::Bytes(frames * 1024));
    group.bench_function("1KiB_frames_in_64KiB", |b| {
        b.iter(|| decode_all(black_box(&mut stream)))
    });
    group.finish();
}

fn ws_encode(c: &mut Criterion) {
    // The relay's path: the header is written into room left in front of the payload, so
    // the payload is not touched.
    let mut group = c.benchmark_group("ws_encode_header_in_place");
    for size in SIZES {
        let mut buf = vec![0u8; ws::MAX_SERVER_HEADER + size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter(|| {
                let mut header = [0u8; ws::MAX_SERVER_HEADER];
                let n = ws::encode_header(OpCode::Binary, black_box(size as u64), &mut header);
                let start = ws::MAX_SERVER_HEADER - n;
                buf[start..ws::MAX_SERVER_HEADER].copy_from_slice(&header[..n]);
                black_box(&buf[start..]);
            })
        });
    }
    group.finish();

    // A whole frame appended to a reused buffer: header plus a copy of the payload.
    let mut group = c.benchmark_group("ws_encode_frame_copy");
    for size in SIZES {
        let payload = vec![0x5au8; size];
        let mut out = Vec::with_capacity(size + ws::MAX_SERVER_HEADER);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                ws::encode_frame(OpCode::Binary, black_box(&payload), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

/// A byte stream of smux PSH frames with `payload` bytes each, cycling over four streams,
/// about 64 KiB long.
fn smux_stream(payload: usize) -> (Vec<u8>, u64) {
    let mut stream = Vec::new();
    let mut bytes = 0;
    let mut i = 0u32;
    while stream.len() + smux::HEADER_LEN + payload <= 64 * 1024 + smux::HEADER_LEN {
        let mut header = [0u8; smux::HEADER_LEN];
        smux::encode_header(smux::Cmd::Psh, 1 + 2 * (i % 4), payload as u16, &mut header);
        stream.extend_from_slice(&header);
        stream.extend(std::iter::repeat_n(0xa5, payload));
        bytes += payload as u64;
        i += 1;
    }
    (stream, bytes)
}

fn smux_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("smux_decode");
    for payload in [1024usize, 16 * 1024, smux::MAX_PAYLOAD] {
        let (stream, bytes) = smux_stream(payload);
        group.throughput(Throughput::Bytes(bytes));
        group.bench_with_input(
            BenchmarkId::from_parameter(payload),
            &stream,
            |b, stream| {
                b.iter(|| {
                    let mut decoder = smux::Decoder::new();
                    let mut pos = 0;
                    let mut seen = 0;
                    // The relay hands the decoder whatever a read returned: 4 KiB pieces here,
                    // so headers straddle reads as they do on the wire.
                    for chunk in stream.chunks(4096) {
                        let mut at = 0;
                        while at < chunk.len() {
                            let (event, consumed) = decoder.decode(&chunk[at..]).expect("valid");
                            if let Some(smux::Event::Data { range, .. }) = event {
                                seen += range.len();
                            }
                            at += consumed;
                        }
                        pos += chunk.len();
                    }
                    assert_eq!(pos, stream.len());
                    black_box(seen)
                })
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("smux_encode_header");
    group.bench_function("psh", |b| {
        let mut header = [0u8; smux::HEADER_LEN];
        b.iter(|| {
            smux::encode_header(smux::Cmd::Psh, black_box(7), black_box(16384), &mut header);
            black_box(header)
        })
    });
    group.finish();
}

criterion_group!(benches, ws_decode, ws_encode, smux_decode);
criterion_main!(benches);

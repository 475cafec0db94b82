//! Unit tests of [`super`]: edge cases of the codec, checked byte by byte.

use super::*;
use testkit::rng::Rng;

/// A decoded event with its payload bytes, adjacent data for one stream
/// merged, so that results of different input splits compare equal.
#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Syn(u32),
    Fin(u32),
    Nop,
    Data(u32, Vec<u8>),
}

fn frame(cmd: Cmd, sid: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = [0; HEADER_LEN];
    encode_header(cmd, sid, payload.len() as u16, &mut h);
    let mut v = h.to_vec();
    v.extend_from_slice(payload);
    v
}

/// Feeds `chunks` in order like a session would and collects events.
fn run(chunks: &[&[u8]]) -> Result<Vec<Ev>, SmuxError> {
    let mut d = Decoder::new();
    let mut out: Vec<Ev> = Vec::new();
    for chunk in chunks {
        let mut pos = 0;
        loop {
            let rest = &chunk[pos..];
            let (ev, n) = d.decode(rest)?;
            assert!(n <= rest.len());
            match ev {
                None => {
                    assert_eq!(n, rest.len(), "None must consume everything");
                    break;
                }
                Some(Event::Data { sid, range }) => {
                    assert!(!range.is_empty() && range.end <= n);
                    let bytes = &rest[range];
                    match out.last_mut() {
                        Some(Ev::Data(s, v)) if *s == sid => v.extend_from_slice(bytes),
                        _ => out.push(Ev::Data(sid, bytes.to_vec())),
                    }
                }
                Some(Event::Syn(s)) => out.push(Ev::Syn(s)),
                Some(Event::Fin(s)) => out.push(Ev::Fin(s)),
                Some(Event::Nop) => out.push(Ev::Nop),
            }
            assert!(n >= 1, "an event must consume input");
            pos += n;
        }
    }
    Ok(out)
}

/// Splits `data` into random chunks (some empty) of up to `max` bytes.
fn random_chunks<'a>(rng: &mut Rng, data: &'a [u8], max: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let k = (rng.below(max as u64 + 1) as usize).min(data.len() - pos);
        out.push(&data[pos..pos + k]);
        pos += k;
    }
    out
}

/// A stream with every frame kind, payloads on ignored commands and an
/// empty PSH, and the events it must decode to.
fn sample() -> (Vec<u8>, Vec<Ev>) {
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut s = Vec::new();
    s.extend(frame(Cmd::Syn, 3, b""));
    s.extend(frame(Cmd::Psh, 3, b"hello"));
    s.extend(frame(Cmd::Nop, 0, b""));
    s.extend(frame(Cmd::Syn, 5, b"xyz")); // payload ignored
    s.extend(frame(Cmd::Psh, 5, &big));
    s.extend(frame(Cmd::Psh, 3, b"")); // no event
    s.extend(frame(Cmd::Psh, 3, b"!"));
    s.extend(frame(Cmd::Nop, 0, b"pad")); // payload ignored
    s.extend(frame(Cmd::Fin, 3, b"junk")); // payload ignored
    s.extend(frame(Cmd::Psh, 0xFFFF_FFFF, b"last"));
    s.extend(frame(Cmd::Fin, 5, b""));
    let want = vec![
        Ev::Syn(3),
        Ev::Data(3, b"hello".to_vec()),
        Ev::Nop,
        Ev::Syn(5),
        Ev::Data(5, big),
        Ev::Data(3, b"!".to_vec()),
        Ev::Nop,
        Ev::Fin(3),
        Ev::Data(0xFFFF_FFFF, b"last".to_vec()),
        Ev::Fin(5),
    ];
    (s, want)
}

#[test]
fn every_frame_kind() {
    assert_eq!(run(&[&frame(Cmd::Syn, 1, b"")]), Ok(vec![Ev::Syn(1)]));
    assert_eq!(run(&[&frame(Cmd::Fin, 7, b"")]), Ok(vec![Ev::Fin(7)]));
    assert_eq!(run(&[&frame(Cmd::Nop, 0, b"")]), Ok(vec![Ev::Nop]));
    assert_eq!(
        run(&[&frame(Cmd::Psh, 9, b"abc")]),
        Ok(vec![Ev::Data(9, b"abc".to_vec())])
    );
    assert_eq!(run(&[&frame(Cmd::Psh, 9, b"")]), Ok(vec![]));
    let max = vec![0xA5; MAX_PAYLOAD];
    assert_eq!(
        run(&[&frame(Cmd::Psh, 1, &max)]),
        Ok(vec![Ev::Data(1, max.clone())])
    );
}

#[test]
fn whole_buffer_and_no_copy_ranges() {
    let (s, want) = sample();
    assert_eq!(run(&[&s]), Ok(want));
    // With the whole stream at hand the first PSH payload comes out in
    // one piece, pointing right after its header.
    let mut d = Decoder::new();
    assert_eq!(d.decode(&s), Ok((Some(Event::Syn(3)), 8)));
    let (ev, n) = d.decode(&s[8..]).unwrap();
    assert_eq!(
        ev,
        Some(Event::Data {
            sid: 3,
            range: 8..13
        })
    );
    assert_eq!(n, 13);
    assert_eq!(d.decode(&[]), Ok((None, 0)));
}

#[test]
fn split_at_every_byte_boundary() {
    let (s, want) = sample();
    for i in 0..=s.len() {
        assert_eq!(run(&[&s[..i], &s[i..]]).as_ref(), Ok(&want), "split at {i}");
    }
    // Two splits, around the header/payload edges of the early frames.
    for i in 0..60.min(s.len()) {
        for j in i..(i + 30).min(s.len()) {
            assert_eq!(run(&[&s[..i], &s[i..j], &s[j..]]).as_ref(), Ok(&want));
        }
    }
}

#[test]
fn byte_at_a_time() {
    let (s, want) = sample();
    let chunks: Vec<&[u8]> = s.chunks(1).collect();
    assert_eq!(run(&chunks), Ok(want));
    let mut d = Decoder::new();
    for b in &s {
        assert!(d.decode(std::slice::from_ref(b)).is_ok());
    }
    assert!(d.at_frame_boundary());
}

#[test]
fn random_chunks_match() {
    let (s, want) = sample();
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    for round in 0..500 {
        let max = [1, 3, 8, 9, 17, 100, 5000][round % 7];
        let chunks = random_chunks(&mut rng, &s, max);
        assert_eq!(run(&chunks).as_ref(), Ok(&want));
    }
}

#[test]
fn frame_boundary_tracking() {
    let f = frame(Cmd::Psh, 1, b"abcd");
    let mut d = Decoder::new();
    assert!(d.at_frame_boundary());
    assert_eq!(d.decode(&f[..5]), Ok((None, 5)));
    assert!(!d.at_frame_boundary());
    assert_eq!(
        d.decode(&f[5..10]),
        Ok((
            Some(Event::Data {
                sid: 1,
                range: 3..5
            }),
            5
        ))
    );
    assert!(!d.at_frame_boundary());
    assert_eq!(
        d.decode(&f[10..]),
        Ok((
            Some(Event::Data {
                sid: 1,
                range: 0..2
            }),
            2
        ))
    );
    assert!(d.at_frame_boundary());
}

#[test]
fn bad_version() {
    for v in [0u8, 2, 3, 0x80, 255] {
        let mut f = frame(Cmd::Syn, 1, b"");
        f[0] = v;
        assert_eq!(run(&[&f]), Err(SmuxError::BadVersion(v)));
        let chunks: Vec<&[u8]> = f.chunks(1).collect();
        assert_eq!(run(&chunks), Err(SmuxError::BadVersion(v)));
    }
    // After good frames, too; and the error sticks.
    let mut s = frame(Cmd::Syn, 1, b"");
    s.extend(frame(Cmd::Psh, 1, b"ab"));
    s.extend([2, 0, 0, 0, 1, 0, 0, 0]);
    let mut d = Decoder::new();
    let mut pos = 0;
    let err = loop {
        match d.decode(&s[pos..]) {
            Ok((_, n)) => pos += n,
            Err(e) => break e,
        }
    };
    assert_eq!(err, SmuxError::BadVersion(2));
    assert_eq!(d.decode(&frame(Cmd::Nop, 0, b"")), Err(err));
}

#[test]
fn bad_cmd() {
    for c in 4..=255u8 {
        let mut f = frame(Cmd::Nop, 1, b"");
        f[1] = c;
        assert_eq!(run(&[&f]), Err(SmuxError::BadCmd(c)));
        assert_eq!(Cmd::from_u8(c), None);
    }
    for c in [Cmd::Syn, Cmd::Fin, Cmd::Psh, Cmd::Nop] {
        assert_eq!(Cmd::from_u8(c.to_u8()), Some(c));
    }
}

#[test]
fn encode_header_layout() {
    let mut h = [0; HEADER_LEN];
    encode_header(Cmd::Psh, 0x0403_0201, 0x1234, &mut h);
    assert_eq!(h, [1, 2, 0x34, 0x12, 1, 2, 3, 4]);
    encode_header(Cmd::Fin, 3, 0, &mut h);
    assert_eq!(h, [1, 1, 0, 0, 3, 0, 0, 0]);
}

#[test]
fn random_valid_streams() {
    let mut rng = Rng::new(12345);
    for _ in 0..200 {
        let mut s = Vec::new();
        let mut want: Vec<Ev> = Vec::new();
        for _ in 0..rng.below(20) as usize {
            let sid = rng.below(4) as u32 * 2 + 1;
            let len = [0, 1, 7, 8, 9, 300, 20000][rng.below(7) as usize];
            let payload: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let cmd = [Cmd::Syn, Cmd::Fin, Cmd::Psh, Cmd::Nop][rng.below(4) as usize];
            s.extend(frame(cmd, sid, &payload));
            match cmd {
                Cmd::Syn => want.push(Ev::Syn(sid)),
                Cmd::Fin => want.push(Ev::Fin(sid)),
                Cmd::Nop => want.push(Ev::Nop),
                Cmd::Psh if len == 0 => {}
                Cmd::Psh => match want.last_mut() {
                    Some(Ev::Data(s, v)) if *s == sid => v.extend(payload),
                    _ => want.push(Ev::Data(sid, payload)),
                },
            }
        }
        let max = [1, 5, 64, 4096, 70000][rng.below(5) as usize];
        let chunks = random_chunks(&mut rng, &s, max);
        assert_eq!(run(&chunks), Ok(want));
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng::new(0xDEAD_BEEF_CAFE_F00D);
    for round in 0..3000 {
        let len = rng.below(2000) as usize;
        // Half the rounds bias bytes toward valid headers to go deeper.
        let data: Vec<u8> = (0..len)
            .map(|_| {
                let b = rng.next_u64() as u8;
                if round % 2 == 0 {
                    b % 5
                } else {
                    b
                }
            })
            .collect();
        let mut d = Decoder::new();
        let max = 1 + rng.below(64) as usize;
        for chunk in random_chunks(&mut rng, &data, max) {
            let mut pos = 0;
            while pos <= chunk.len() {
                match d.decode(&chunk[pos..]) {
                    Ok((None, n)) => {
                        assert_eq!(pos + n, chunk.len());
                        break;
                    }
                    Ok((Some(ev), n)) => {
                        assert!(n >= 1 && pos + n <= chunk.len());
                        if let Event::Data { range, .. } = ev {
                            assert!(!range.is_empty() && range.end <= n);
                        }
                        pos += n;
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

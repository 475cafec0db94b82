//! Deterministic pseudo-random numbers: [`Rng`] (splitmix64) for everything the kit and
//! the tools choose at random, [`XorShift64`] where bytes must match the Go peer's bit for
//! bit; and the byte streams built from them ([`pattern`], [`ByteStream`]).
//!
//! Not cryptographic, and not meant to be: a seed must give the same run again.

/// splitmix64: tiny, fast, and every seed gives a different full-period stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The generator of `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next number, uniform over `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// Log-uniform in `lo..=hi` (`lo >= 1`): as many small values as large ones.
    pub fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let lo = lo.max(1);
        let hi = hi.max(lo);
        let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
        let x = a + (b - a) * (self.below(1 << 24) as f64 / (1u64 << 24) as f64);
        (x.exp() as u64).clamp(lo, hi)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// A WebSocket masking key.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }
}

/// xorshift64 (13, 7, 17) seeded as `tests/gopeer/main.go` seeds its pattern: the Go peer's
/// bytes are recomputed from it, so it must stay bit for bit what main.go does.
#[derive(Clone, Debug)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// The generator of `seed`: state `seed * 0x9E3779B97F4A7C15 | 1` (never zero).
    pub fn new(seed: u64) -> XorShift64 {
        XorShift64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next state.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// `len` deterministic pseudo-random bytes for `seed` (the low byte of each [`XorShift64`]
/// step): test payloads that are easy to regenerate and compare.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = XorShift64::new(seed);
    (0..len).map(|_| x.next_u64() as u8).collect()
}

/// Mixes several numbers into one seed.
pub fn mix(parts: &[u64]) -> u64 {
    let mut rng = Rng::new(0x5eed_50a4_0000_0001);
    let mut acc = 0u64;
    for &p in parts {
        rng = Rng::new(rng.next_u64() ^ p);
        acc ^= rng.next_u64();
    }
    acc
}

/// The deterministic byte stream of one tunnel: the client sends it, the backend checks it
/// on arrival, the client checks the echo against what it sent.
#[derive(Clone, Debug)]
pub struct ByteStream {
    rng: Rng,
    word: [u8; 8],
    used: usize,
}

impl ByteStream {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> ByteStream {
        ByteStream {
            rng: Rng::new(seed ^ 0xb17e_57e4_a11d_a7a0),
            word: [0; 8],
            used: 8,
        }
    }

    /// Writes the next `out.len()` bytes of the stream into `out`.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while self.used < 8 && i < out.len() {
            out[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
        let mut chunks = out[i..].chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            self.word = self.rng.next_u64().to_le_bytes();
            self.used = 0;
            for b in rest {
                *b = self.word[self.used];
                self.used += 1;
            }
        }
    }
}

/// Counts the bytes where `got` and `want` differ (equal lengths).
pub fn mismatches(got: &[u8], want: &[u8]) -> u64 {
    if got == want {
        return 0;
    }
    got.iter().zip(want).filter(|(a, b)| a != b).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_the_same_however_it_is_cut() {
        let mut whole = vec![0u8; 1000];
        ByteStream::new(7).fill(&mut whole);
        let mut s = ByteStream::new(7);
        let mut pieces = Vec::new();
        let mut rng = Rng::new(1);
        while pieces.len() < 1000 {
            let n = (rng.range(0, 20) as usize).min(1000 - pieces.len());
            let mut b = vec![0u8; n];
            s.fill(&mut b);
            pieces.extend_from_slice(&b);
        }
        assert_eq!(whole, pieces);
        let mut other = vec![0u8; 1000];
        ByteStream::new(8).fill(&mut other);
        assert!(mismatches(&whole, &other) > 900);
    }

    #[test]
    fn pattern_is_the_xorshift_low_byte() {
        // What the tests' payloads were before the kit existed: seed 1, first bytes.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15 | 1;
        let want: Vec<u8> = (0..64)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(pattern(64, 1), want);
    }

    #[test]
    fn ranges_stay_in_bounds() {
        let mut rng = Rng::new(3);
        for _ in 0..10_000 {
            let x = rng.range(5, 9);
            assert!((5..=9).contains(&x));
            let y = rng.log_range(1, 1 << 20);
            assert!((1..=1 << 20).contains(&y));
        }
    }
}

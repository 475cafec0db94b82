//! Go's duration syntax (`time.ParseDuration`), as `-timeout`, `-grace` and the other
//! duration flags take it: "90s", "1m0s", "1h30m", "250ms". Error messages are Go's, word
//! for word. This file only parses; which durations a flag accepts (greater than zero, or
//! negative meaning off) is the flag table's business.

use std::time::Duration;

/// Go's time.ParseDuration: "90s", "1m0s", "1h30m", "250ms", "1.5h", "2h45m30.5s", "300us",
/// "300µs", "10ns", "0".
///
/// A leading sign is allowed; "-0s" is zero, but any other negative duration is an error,
/// since [`Duration`] cannot hold it. Rejects the empty string, a number without a unit
/// (except "0"), unknown units and values over Go's limit (about 292 years). Error messages
/// are Go's (`time: unknown unit "x" in duration "1x"`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    match parse_signed_duration(s)? {
        (true, d) if !d.is_zero() => Err(format!(
            "time: negative duration {} is not allowed",
            go_quote(s)
        )),
        (_, d) => Ok(d),
    }
}

/// Go's time.quote: double quotes, `"` and `\` escaped, bytes that are not printable ASCII
/// as `\xNN`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for &b in s.as_bytes() {
        if !(b' '..0x80).contains(&b) {
            out.push_str(&format!("\\x{b:02x}"));
        } else {
            if b == b'"' || b == b'\\' {
                out.push('\\');
            }
            out.push(b as char);
        }
    }
    out.push('"');
    out
}

/// Go's leadingInt: the leading digits of `s`, or None on overflow past 1<<63.
fn leading_int(s: &str) -> Option<(u64, &str)> {
    let mut x: u64 = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        if x > (1 << 63) / 10 {
            return None;
        }
        x = x * 10 + u64::from(bytes[i] - b'0');
        if x > 1 << 63 {
            return None;
        }
        i += 1;
    }
    Some((x, &s[i..]))
}

/// Go's leadingFraction: the leading digits of `s` as (value, scale), silently dropping
/// precision once the value would overflow.
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let mut x: u64 = 0;
    let mut scale = 1.0f64;
    let mut overflow = false;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        if !overflow {
            if x > ((1 << 63) - 1) / 10 {
                overflow = true;
            } else {
                let y = x * 10 + u64::from(bytes[i] - b'0');
                if y > 1 << 63 {
                    overflow = true;
                } else {
                    x = y;
                    scale *= 10.0;
                }
            }
        }
        i += 1;
    }
    (x, scale, &s[i..])
}

/// Nanoseconds per unit, as Go's unitMap.
fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Go's time.ParseDuration, returning (negative, magnitude).
pub(super) fn parse_signed_duration(orig: &str) -> Result<(bool, Duration), String> {
    let invalid = || format!("time: invalid duration {}", go_quote(orig));
    let mut s = orig;
    let mut negative = false;
    if let Some(c) = s.chars().next() {
        if c == '-' || c == '+' {
            negative = c == '-';
            s = &s[1..];
        }
    }
    if s == "0" {
        return Ok((negative, Duration::ZERO));
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        let before = s.len();
        let (mut v, after_int) = leading_int(s).ok_or_else(invalid)?;
        s = after_int;
        let pre = before != s.len();

        let mut f = 0u64;
        let mut scale = 1.0f64;
        let mut post = false;
        if let Some(after_dot) = s.strip_prefix('.') {
            let (frac, sc, after_frac) = leading_fraction(after_dot);
            post = after_dot.len() != after_frac.len();
            f = frac;
            scale = sc;
            s = after_frac;
        }
        if !pre && !post {
            return Err(invalid());
        }

        let unit_len = s
            .bytes()
            .position(|c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", go_quote(orig)));
        }
        let (unit_str, after_unit) = s.split_at(unit_len);
        s = after_unit;
        let unit = unit_nanos(unit_str).ok_or_else(|| {
            format!(
                "time: unknown unit {} in duration {}",
                go_quote(unit_str),
                go_quote(orig)
            )
        })?;
        if v > (1 << 63) / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            // Go computes the fraction in float64, nanosecond exact up to hours.
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > 1 << 63 {
                return Err(invalid());
            }
        }
        total += v;
        if total > 1 << 63 {
            return Err(invalid());
        }
    }
    if !negative && total > (1 << 63) - 1 {
        return Err(invalid());
    }
    Ok((negative, Duration::from_nanos(total)))
}

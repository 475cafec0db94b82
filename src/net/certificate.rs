//! When a certificate expires: the `notAfter` of an X.509 certificate, read by a small DER
//! walk (certificate, tbsCertificate, past version, serial, signature algorithm and issuer,
//! to validity), for `mtt_certificate_expiry_timestamp_seconds` and the status page. It
//! checks nothing else about the certificate: rustls did that when it was loaded.

/// The `notAfter` of a DER certificate, in seconds since the Unix epoch (UTC); `None` when
/// the bytes are not a certificate this walk understands.
pub(crate) fn not_after(der: &[u8]) -> Option<i64> {
    let (certificate, _) = element(der, 0x30)?;
    let (tbs, _) = element(certificate, 0x30)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, absent for v1.
    if rest.first() == Some(&0xa0) {
        rest = element(rest, 0xa0)?.1;
    }
    rest = element(rest, 0x02)?.1; // serialNumber
    rest = element(rest, 0x30)?.1; // signature AlgorithmIdentifier
    rest = element(rest, 0x30)?.1; // issuer
    let (validity, _) = element(rest, 0x30)?;
    let (_, _, after_not_before) = any_element(validity)?;
    let (tag, time, _) = any_element(after_not_before)?;
    match tag {
        0x17 => utc_time(time),
        0x18 => generalized_time(time),
        _ => None,
    }
}

/// The content of the element at the start of `input` if its tag is `tag`, and what follows.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = any_element(input)?;
    (found == tag).then_some((content, rest))
}

/// The tag, content and rest of the element at the start of `input` (definite lengths
/// only, as DER requires).
fn any_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || input.len() < octets {
            return None;
        }
        let (bytes, rest) = input.split_at(octets);
        input = rest;
        bytes.iter().fold(0usize, |n, &b| n << 8 | usize::from(b))
    };
    if input.len() < length {
        return None;
    }
    let (content, rest) = input.split_at(length);
    Some((tag, content, rest))
}

/// UTCTime `YYMMDDHHMMSSZ`; years 50-99 are 19xx (RFC 5280 4.1.2.5.1).
fn utc_time(text: &[u8]) -> Option<i64> {
    let yy = digits(text.get(..2)?)?;
    let year = if yy >= 50 { 1900 + yy } else { 2000 + yy };
    seconds(year, text.get(2..)?)
}

/// GeneralizedTime `YYYYMMDDHHMMSSZ`.
fn generalized_time(text: &[u8]) -> Option<i64> {
    seconds(digits(text.get(..4)?)?, text.get(4..)?)
}

/// `MMDDHHMMSSZ` of `year` as seconds since the epoch.
fn seconds(year: i64, text: &[u8]) -> Option<i64> {
    if text.len() != 11 || text[10] != b'Z' {
        return None;
    }
    let field = |at: usize| digits(&text[at..at + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

fn digits(text: &[u8]) -> Option<i64> {
    text.iter().try_fold(0i64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_until(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        // date -u -d 2031-03-04 +%s; years from 2050 are GeneralizedTime (RFC 5280).
        assert_eq!(
            not_after(&certificate_until(2031, 3, 4)),
            Some(1_930_348_800)
        );
        assert_eq!(
            not_after(&certificate_until(2051, 1, 1)),
            Some(2_556_144_000)
        );
        assert_eq!(
            not_after(&certificate_until(1999, 12, 31)),
            Some(946_598_400)
        );
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        let der = certificate_until(2031, 3, 4);
        assert_eq!(not_after(&der[..der.len() / 2]), None);
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}

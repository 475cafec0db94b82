//! The PROXY protocol (HAProxy's, versions 1 and 2), read in front of a data connection
//! when `-proxy-protocol` is on, so the real client address reaches logs. Parsing only:
//! reading just enough bytes off a socket (and keeping what followed the header, to be
//! replayed to TLS or HTTP) is [`crate::net`]'s part.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The twelve bytes that start a version 2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is at most this long, CRLF included.
const V1_MAX: usize = 107;
/// Largest version 2 header we accept (addresses and TLVs); HAProxy's are far smaller.
pub const V2_MAX: usize = 16 + 1024;

/// Why a connection's PROXY header was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The connection does not start with a PROXY header.
    Missing,
    /// It does, but the header is malformed.
    Malformed(&'static str),
}

/// Parses a header at the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// source address it names (`None` for `UNKNOWN`/`LOCAL`) and the header's length.
pub fn parse(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == b'P' {
        parse_v1(buf)
    } else if buf[0] == b'\r' {
        parse_v2(buf)
    } else {
        Err(ProxyError::Missing)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ProxyError> {
    let prefix = &b"PROXY "[..buf.len().min(6)];
    if !b"PROXY ".starts_with(prefix) {
        return Err(ProxyError::Missing);
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Malformed("v1 header too long"))
        } else {
            Ok(None)
        };
    };
    if end + 2 > V1_MAX {
        return Err(ProxyError::Malformed("v1 header too long"));
    }
    let line =
        std::str::from_utf8(&buf[..end]).map_err(|_| ProxyError::Malformed("v1 not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY"
    let source = match fields.next() {
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let (src, _dst, sport, _dport) =
                match (fields.next(), fields.next(), fields.next(), fields.next()) {
                    (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
                    _ => return Err(ProxyError::Malformed("v1 fields missing")),
                };
            if fields.next().is_some() {
                return Err(ProxyError::Malformed("v1 extra fields"));
            }
            let ip: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 bad address"))?;
            if (family == "TCP4") != ip.is_ipv4() {
                return Err(ProxyError::Malformed("v1 address family"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 bad port"))?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(ProxyError::Malformed("v1 bad protocol")),
    };
    Ok(Some((source, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ProxyError> {
    let have = buf.len().min(12);
    if buf[..have] != V2_SIGNATURE[..have] {
        return Err(ProxyError::Missing);
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 bad version"));
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if 16 + len > V2_MAX {
        return Err(ProxyError::Malformed("v2 header too long"));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let source = match (version_command & 0x0f, buf[13]) {
        // LOCAL: a health check from the proxy itself; no address.
        (0, _) => None,
        // PROXY over TCP (or UDP) and IPv4.
        (1, 0x11 | 0x12) => {
            if body.len() < 12 {
                return Err(ProxyError::Malformed("v2 short IPv4 block"));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        (1, 0x21 | 0x22) => {
            if body.len() < 36 {
                return Err(ProxyError::Malformed("v2 short IPv6 block"));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        // Unix sockets or unspecified: no IP address to report.
        (1, _) => None,
        _ => return Err(ProxyError::Malformed("v2 bad command")),
    };
    Ok(Some((source, 16 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_forms() {
        assert_eq!(
            parse(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET"),
            Ok(Some((Some("192.0.2.1:56324".parse().unwrap()), 45)))
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"),
            Ok(Some((Some("[2001:db8::1]:1".parse().unwrap()), 40)))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((None, 15))));
        assert_eq!(parse(b"PROXY TCP4 192.0.2.1"), Ok(None));
        assert_eq!(parse(b"PRO"), Ok(None));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::Missing));
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n").is_err());
        assert!(parse(b"PROXY TCP4 ::1 ::1 1 1\r\n").is_err());
        assert!(parse(&[b'P'; 200]).is_err());
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert!(parse(long.as_bytes()).is_err());
    }

    #[test]
    fn v2_forms() {
        let mut v4 = V2_SIGNATURE.to_vec();
        v4.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 1, 0xdc, 0x04, 1, 187,
        ]);
        v4.extend_from_slice(b"rest");
        assert_eq!(
            parse(&v4),
            Ok(Some((Some("192.0.2.1:56324".parse().unwrap()), 28)))
        );
        for cut in 0..28 {
            assert_eq!(parse(&v4[..cut]), Ok(None), "cut {cut}");
        }
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Ok(Some((None, 16))));
        let mut v6 = V2_SIGNATURE.to_vec();
        v6.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let mut src = [0u8; 16];
        src[15] = 1;
        v6.extend_from_slice(&src);
        v6.extend_from_slice(&[0u8; 16]);
        v6.extend_from_slice(&[0, 80, 0, 81]);
        assert_eq!(
            parse(&v6),
            Ok(Some((Some("[::1]:80".parse().unwrap()), 52)))
        );
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert!(parse(&bad).is_err());
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&huge).is_err());
    }
}

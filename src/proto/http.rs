//! HTTP/1.1 request heads, parsed with limits, and the few responses the server gives.
//!
//! Both ports use it: the data port to find the WebSocket upgrade and its route key, the
//! controller to find its POSTs. A head is at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`]
//! headers (reading it off a socket before a deadline is [`crate::net`]'s part).
//! Responses to strangers look like an ordinary nginx (a 404 page), never like a tunnel.
//! This module does not read, route, dial or frame: it parses heads and writes canned
//! answers.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Largest request head accepted (request line and headers); a longer one gets 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers accepted in one request; more get 431.
pub const MAX_HEADERS: usize = 100;

/// Why no head could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The peer closed (or reset) before sending a complete head; `empty` when it sent
    /// nothing at all, which is not worth a response.
    Closed { empty: bool },
    /// The deadline passed first.
    Timeout,
    /// Head larger than [`MAX_HEAD`], or more than [`MAX_HEADERS`] headers: 431.
    TooLarge,
    /// Not HTTP/1.x: 400.
    Malformed,
}

/// A header we care about, or its absence.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method as sent.
    pub method: String,
    /// The request target as sent (path and query, or absolute form).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    /// `Connection` lists `close`.
    pub connection_close: bool,
    /// `Connection` lists `keep-alive` (what an HTTP/1.0 client says to keep it).
    pub connection_keep_alive: bool,
    /// `Upgrade` lists `websocket`.
    pub upgrade_websocket: bool,
    /// `Sec-WebSocket-Version`, as sent.
    pub ws_version: Option<String>,
    /// `Sec-WebSocket-Key`, as sent.
    pub ws_key: Option<String>,
    /// The tokens of every `Sec-WebSocket-Protocol` header, in order.
    pub ws_protocols: Vec<String>,
    /// `Content-Length`, when present and valid.
    pub content_length: Option<u64>,
    /// A `Content-Length` that is not a number, or several that disagree.
    pub bad_content_length: bool,
    /// `Transfer-Encoding` present (we never read chunked bodies on the data port).
    pub transfer_encoding: bool,
    /// `Authorization`, as sent (the controller's secret).
    pub authorization: Option<String>,
}

impl RequestHead {
    /// Whether the connection may carry another request after this one, as HTTP says.
    pub fn keep_alive(&self) -> bool {
        if self.connection_close {
            return false;
        }
        self.minor_version >= 1 || self.connection_keep_alive
    }
}

/// Parses a complete head at the start of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let mut head = RequestHead {
        method: request.method.unwrap_or_default().to_string(),
        target: request.path.unwrap_or_default().to_string(),
        minor_version: request.version.unwrap_or(1),
        ..RequestHead::default()
    };
    for header in request.headers.iter() {
        let name = header.name;
        let value = String::from_utf8_lossy(header.value);
        if name.eq_ignore_ascii_case("connection") {
            for token in tokens(&value) {
                if token.eq_ignore_ascii_case("upgrade") {
                    head.connection_upgrade = true;
                } else if token.eq_ignore_ascii_case("close") {
                    head.connection_close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    head.connection_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            // Tokens may carry a version: "websocket/13" is not websocket.
            if tokens(&value).any(|t| t.eq_ignore_ascii_case("websocket")) {
                head.upgrade_websocket = true;
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.ws_key = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            head.ws_protocols
                .extend(tokens(&value).map(|token| token.to_string()));
        } else if name.eq_ignore_ascii_case("content-length") {
            // Digits only (RFC 9110, as Go): no sign, no Unicode white space.
            let digits = value.trim_matches([' ', '\t']);
            let parsed = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                digits.parse::<u64>().ok()
            } else {
                None
            };
            match parsed {
                Some(n) if head.content_length.is_none() || head.content_length == Some(n) => {
                    head.content_length = Some(n)
                }
                _ => head.bad_content_length = true,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.into_owned());
        }
    }
    Ok(Some((head, len)))
}

/// The non-empty, trimmed items of a comma-separated header value.
fn tokens(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// The route key of a request target: the path without the query string, percent-decoded
/// as Go's `URL.Path` is. `None` for a target Go would refuse (a bad escape, `*`, no
/// path) or a path that is not UTF-8 (no user can have it).
pub fn route_key(target: &str) -> Option<String> {
    let path_and_query = if target.starts_with('/') {
        target
    } else {
        // Absolute form: scheme://authority/path?query.
        let rest = target
            .strip_prefix("http://")
            .or_else(|| target.strip_prefix("https://"))
            .or_else(|| target.strip_prefix("ws://"))
            .or_else(|| target.strip_prefix("wss://"))?;
        // The query goes first, as Go parses: `http://h?x/p` has no path.
        let rest = &rest[..rest.find('?').unwrap_or(rest.len())];
        let slash = rest.find('/')?;
        &rest[slash..]
    };
    let path = match path_and_query.find('?') {
        Some(q) => &path_and_query[..q],
        None => path_and_query,
    };
    percent_decode(path)
}

/// Decodes `%XX` escapes; `+` stays `+` (path, not form, decoding).
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 4.2.2).
pub fn websocket_accept(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// The `101 Switching Protocols` response, with the selected subprotocol if any.
pub fn switching_protocols(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(protocol) = protocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(protocol);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The name this server gives in `Server:` and on its error pages.
pub const SERVER_NAME: &str = "nginx";

/// An error page as nginx writes it: the same status line, headers, and body shape.
/// Without `with_body` (a HEAD request) the headers still give the body's length.
pub fn error_page(status: u16, extra_headers: &str, keep_alive: bool, with_body: bool) -> Vec<u8> {
    let reason = reason_phrase(status);
    let body = format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}</h1></center>\r\n<hr><center>{SERVER_NAME}</center>\r\n</body>\r\n</html>\r\n"
    );
    let connection = if keep_alive { "keep-alive" } else { "close" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nServer: {SERVER_NAME}\r\nDate: {}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: {connection}\r\n{extra_headers}\r\n{body}",
        http_date(SystemTime::now()),
        body.len(),
        body = if with_body { body.as_str() } else { "" },
    )
    .into_bytes()
}

/// A JSON response, as the controller sends them (to a HEAD request, without the body).
pub fn json_response(status: u16, body: &str, keep_alive: bool) -> Vec<u8> {
    json_response_for(status, body, keep_alive, true)
}

/// As [`json_response`]; `with_body` false for a HEAD request.
pub fn json_response_for(status: u16, body: &str, keep_alive: bool, with_body: bool) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nDate: {}\r\nContent-Length: {}\r\nConnection: {connection}\r\n{}\r\n{body}",
        reason_phrase(status),
        http_date(SystemTime::now()),
        body.len(),
        match status {
            405 => "Allow: POST\r\n",
            401 => "WWW-Authenticate: Bearer\r\n",
            _ => "",
        },
        body = if with_body { body } else { "" },
    )
    .into_bytes()
}

/// A plain-text response (the Prometheus exposition format).
pub fn text_response(status: u16, body: &str, keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nDate: {}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        reason_phrase(status),
        http_date(SystemTime::now()),
        body.len(),
    )
    .into_bytes()
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Not Allowed",
        408 => "Request Time-out",
        411 => "Length Required",
        413 => "Request Entity Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Temporarily Unavailable",
        _ => "Error",
    }
}

/// An IMF-fixdate (RFC 9110 5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (hour, min, sec) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month_name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!("{weekday}, {day:02} {month_name} {year} {hour:02}:{min:02}:{sec:02} GMT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn accept_matches_rfc_example() {
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn route_key_strips_query_and_decodes() {
        assert_eq!(route_key("/p1?x=1").as_deref(), Some("/p1"));
        assert_eq!(route_key("/a%20b+c").as_deref(), Some("/a b+c"));
        assert_eq!(route_key("/%E4%BD%A0").as_deref(), Some("/你"));
        assert_eq!(route_key("http://h:1/p?q").as_deref(), Some("/p"));
        assert_eq!(route_key("/bad%zz"), None);
        assert_eq!(route_key("/bad%2"), None);
        assert_eq!(route_key("*"), None);
        assert_eq!(route_key("/%ff"), None);
    }

    #[test]
    fn parses_upgrade_head() {
        let raw = b"GET /p1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Protocol: a, smux_off\r\nSec-WebSocket-Protocol: smux_on\r\n\r\nrest";
        let (head, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(&raw[len..], b"rest");
        assert_eq!(head.method, "GET");
        assert!(head.connection_upgrade && head.upgrade_websocket);
        assert_eq!(head.ws_version.as_deref(), Some("13"));
        assert_eq!(head.ws_key.as_deref(), Some("abc"));
        assert_eq!(head.ws_protocols, ["a", "smux_off", "smux_on"]);
        assert!(head.keep_alive());
    }

    #[test]
    fn partial_and_too_many_headers() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            raw.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&raw), Err(HeadError::TooLarge));
        assert_eq!(
            parse_head(b"\x16\x03\x01garbage\r\n\r\n"),
            Err(HeadError::Malformed)
        );
    }

    #[test]
    fn http_date_known_values() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(http_date(t), "Thu, 29 Feb 2024 12:34:56 GMT");
    }

    #[test]
    fn error_page_is_nginx_shaped() {
        let page = String::from_utf8(error_page(404, "", true, true)).unwrap();
        assert!(page.starts_with("HTTP/1.1 404 Not Found\r\nServer: nginx\r\n"));
        let (head, body) = page.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(body.contains("<center>nginx</center>"));
    }
}

//! Raw HTTP/1.1 from the client side: a request sent as bytes, one response read back
//! (status, head, body), header lookup, and the controller's JSON replies. Deliberately
//! minimal and strict, so that a test sees exactly what the server sent.

use std::io::{Read, Write};
use std::net::SocketAddr;

use serde_json::Value;

/// Sends a raw request and reads one response: status, head, body (by Content-Length,
/// or to EOF).
pub fn http_request(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut stream = crate::sock::raw(addr);
    stream.write_all(request.as_bytes()).unwrap();
    read_response(&mut stream)
}

/// Reads one HTTP response from `stream`.
pub fn read_response<S: Read>(stream: &mut S) -> (u16, String, Vec<u8>) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            _ => panic!(
                "connection ended inside a response head: {:?}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    let head = String::from_utf8(raw).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let length = header(&head, "content-length").map(|v| v.parse::<usize>().unwrap());
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            stream.read_exact(&mut body).unwrap();
        }
        None if status != 101 => {
            let _ = stream.read_to_end(&mut body);
        }
        None => {}
    }
    (status, head, body)
}

/// The value of a header in a response head, by case-insensitive name.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// A controller request: `POST /` carrying `body` (any bytes), `Connection: close`.
pub fn post_request(body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Checks a controller reply's shape (JSON content type, exactly the three keys) and returns
/// it parsed.
pub fn json_reply(head: &str, body: &[u8]) -> Value {
    assert_eq!(
        header(head, "content-type").as_deref(),
        Some("application/json"),
        "{head}"
    );
    let reply: Value = serde_json::from_slice(body).expect("a JSON reply");
    let object = reply.as_object().expect("an object");
    assert_eq!(object.len(), 3, "{reply}");
    assert!(object["res"].is_u64(), "{reply}");
    assert!(object["err_string"].is_string(), "{reply}");
    assert!(object["current_users"].is_u64(), "{reply}");
    reply
}

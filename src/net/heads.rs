//! Reading what comes before the bytes a connection is about: a PROXY header, and an
//! HTTP request head, each bounded in size (the limits are [`crate::proto`]'s) and in
//! time (a deadline the caller sets: `-head-timeout` from accept, TLS included). The
//! parsing is in [`crate::proto::http`] and [`crate::proto::proxy_protocol`]; this file
//! only reads until they have enough.

use std::net::SocketAddr;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::time::Instant;

use crate::proto::http::{parse_head, HeadError, RequestHead, MAX_HEAD};
use crate::proto::proxy_protocol::{parse, ProxyError, V2_MAX};

/// First read of a head: small, because most heads are a few hundred bytes and an idle
/// keep-alive connection should not hold a large buffer.
const FIRST_READ: usize = 2048;

/// Reads one request head. `buf` holds bytes already read (a previous request's surplus)
/// and is returned with the head and whatever followed it; `Ok((head, head_len, buf))`.
pub(crate) async fn read_head<S: AsyncReadRent>(
    stream: &mut S,
    mut buf: Vec<u8>,
    deadline: Instant,
) -> (Result<(RequestHead, usize), HeadError>, Vec<u8>) {
    loop {
        if !buf.is_empty() {
            match parse_head(&buf) {
                Ok(Some(parsed)) => return (Ok(parsed), buf),
                Ok(None) if buf.len() >= MAX_HEAD => return (Err(HeadError::TooLarge), buf),
                Ok(None) => {}
                Err(e) => return (Err(e), buf),
            }
        }
        if buf.capacity() == buf.len() {
            let want = if buf.capacity() == 0 {
                FIRST_READ
            } else {
                (buf.capacity() * 2).min(MAX_HEAD)
            };
            buf.reserve_exact(want - buf.len());
        }
        let start = buf.len();
        let end = buf.capacity().min(MAX_HEAD);
        let read = monoio::time::timeout_at(deadline, stream.read(buf.slice_mut(start..end)));
        match read.await {
            Err(_) => {
                // The read was cancelled with its buffer; start again empty is not needed,
                // the caller closes the connection.
                return (Err(HeadError::Timeout), Vec::new());
            }
            Ok((result, slice)) => {
                buf = slice.into_inner();
                match result {
                    Ok(0) | Err(_) => return (Err(HeadError::Closed { empty: start == 0 }), buf),
                    Ok(_) => {}
                }
            }
        }
    }
}

/// Reads a PROXY header from `stream` before `deadline`. Returns the source address (if
/// the header names one) and the bytes read past the header.
pub(crate) async fn read_header<S: AsyncReadRent>(
    stream: &mut S,
    deadline: Instant,
) -> Result<(Option<SocketAddr>, Vec<u8>), ProxyError> {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    loop {
        match parse(&buf)? {
            Some((source, len)) => {
                buf.drain(..len);
                return Ok((source, buf));
            }
            None => {
                if buf.len() == buf.capacity() {
                    buf.reserve(buf.capacity().min(V2_MAX));
                }
                let start = buf.len();
                let end = buf.capacity();
                let read =
                    monoio::time::timeout_at(deadline, stream.read(buf.slice_mut(start..end)));
                match read.await {
                    Ok((Ok(n), slice)) if n > 0 => buf = slice.into_inner(),
                    _ => {
                        return Err(ProxyError::Malformed(
                            "closed or timed out before a complete header",
                        ))
                    }
                }
            }
        }
    }
}

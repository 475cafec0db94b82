//! Go's listen address syntax: `net.SplitHostPort` for checking `HOST:PORT` flag values,
//! and [`listen_addr`] turning one into the socket address to bind, as Go's `net.Listen`
//! would. It resolves names but opens no socket.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};

/// Go's net.SplitHostPort.
pub(super) fn split_host_port(hostport: &str) -> Result<(&str, &str), String> {
    let Some(i) = hostport.rfind(':') else {
        return Err("missing port in address".into());
    };
    let (host, j, k);
    if hostport.starts_with('[') {
        let Some(end) = hostport.find(']') else {
            return Err("missing ']' in address".into());
        };
        if end + 1 == hostport.len() {
            return Err("missing port in address".into());
        } else if end + 1 != i {
            if hostport.as_bytes()[end + 1] == b':' {
                return Err("too many colons in address".into());
            }
            return Err("missing port in address".into());
        }
        host = &hostport[1..end];
        j = 1;
        k = end + 1;
    } else {
        host = &hostport[..i];
        if host.contains(':') {
            return Err("too many colons in address".into());
        }
        j = 0;
        k = 0;
    }
    if hostport[j..].contains('[') {
        return Err("unexpected '[' in address".into());
    }
    if hostport[k..].contains(']') {
        return Err("unexpected ']' in address".into());
    }
    Ok((host, &hostport[i + 1..]))
}

/// A decimal port 0..=65535; empty means 0, as in Go.
pub(super) fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Ok(0);
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {port:?}: a number is needed"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("invalid port {port:?}: above 65535"))
}

/// Resolves a Go-style listen address.
///
/// ":443" (empty host) means all interfaces and gives `[::]:443`, which the listener opens
/// dual stack as Go does. `HOST:PORT` with an IP literal, or `[v6]:port`, is taken as is.
/// A host name is resolved with std's [`ToSocketAddrs`]; like Go's `net.Listen` this takes
/// the first IPv4 result, or the first result if there is no IPv4 one. Port 0 (or an empty
/// port) asks for any free port. Errors name the address.
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    let fail = |why: String| format!("listen address {s:?}: {why}");
    let (host, port) = split_host_port(s).map_err(|e| fail(e.to_string()))?;
    let port = parse_port(port).map_err(fail)?;
    if host.is_empty() {
        return Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve {host:?}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| fail(format!("{host:?} resolves to no address")))
}

//! Sockets and TLS: the data port's transports (TCP or unix socket) behind one type,
//! binding listeners, dialing destinations, reading a bounded head off a stream before a
//! deadline, the rustls configuration, and our TLS 1.3 record layer. Nothing here knows
//! users, routes, WebSocket or smux.
//!
//! - [`transport`]: one type for a TCP or unix-socket data connection, and its halves.
//! - [`listen`]: binding the data and controller listeners (SO_REUSEPORT, TCP Fast Open,
//!   unix sockets).
//! - [`dial`]: connecting to a destination within a bound.
//! - [`heads`]: reading a PROXY header or an HTTP request head, bounded in size and time.
//! - [`certificate`]: a certificate's expiry (`notAfter`), read from its DER.
//! - [`tls`]: the rustls configuration (files or self-signed), ALPN, resumption, reload.
//! - [`tls_stream`]: the handshake, then our own TLS 1.3 record layer (rustls for TLS 1.2).

pub(crate) mod certificate;
pub(crate) mod dial;
pub(crate) mod heads;
pub(crate) mod listen;
pub(crate) mod tls;
pub(crate) mod tls_stream;
pub(crate) mod transport;

//! One data-port connection from its first byte to its end: the PROXY header and TLS
//! handshake, the request head and route, the upgrade, then the tunnel in the mode the
//! client chose, or a hand-off to the fallback web site. A connection gets what it needs
//! from its worker as one small [`Context`]; it never sees the worker itself, the other
//! workers or the controller.
//!
//! - [`connection`]: from TLS handshake to tunnel: heads, routing, upgrade checks, mode.
//! - [`client_side`]: the server's end of the client's WebSocket: the frame reader (in
//!   place) and the single frame writer.
//! - [`plain`]: the plain tunnel (`smux_off`).
//! - [`mux`]: the smux v1 session (`smux_on`).
//! - [`fallback`]: relaying a connection that is not a tunnel to a real web server.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use crate::control::registry::StatsTable;
use crate::control::routes::RouteView;

pub(crate) mod client_side;
pub(crate) mod connection;
pub(crate) mod fallback;
pub(crate) mod mux;
pub(crate) mod plain;

/// What every connection needs to know, fixed at start-up.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Use smux for clients that offer no subprotocol (`-mux`).
    pub mux_default: bool,
    /// Close a plain tunnel or a mux stream after this long with no bytes (`-timeout`).
    pub idle_timeout: Duration,
    /// Time from accept to a complete request head, TLS handshake included.
    pub head_timeout: Duration,
    /// The web server for connections that are not tunnels (`-fallback`).
    pub fallback: Option<Arc<str>>,
    /// Every data connection starts with a PROXY protocol header (`-proxy-protocol`).
    pub proxy_protocol: bool,
}

/// What a worker lends its connections: its view of the routes, its TLS configuration,
/// its counters and the settings. One per worker, shared by that worker's tasks only (it
/// is not `Send`); the worker changes it when the controller asks.
pub(crate) struct Context {
    /// This worker's view of the routes (its own array of the controller's shared shards),
    /// changed only by the controller's broadcasts.
    pub routes: RefCell<RouteView>,
    /// The TLS acceptor, or `None` for plain HTTP behind a proxy; replaced when the
    /// certificate is reloaded (open connections keep the one they started with).
    pub tls: RefCell<Option<Arc<rustls::ServerConfig>>>,
    /// Fixed at start-up.
    pub settings: Settings,
    /// This worker's counters, per user and in total.
    pub stats: StatsTable,
}

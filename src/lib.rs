//! `mtt-mu-server`: the multi-user server of mos-tls-tunnel. Many users share one port;
//! each user's client opens a WebSocket (usually over TLS), the HTTP path of the upgrade
//! picks the user, and the bytes inside the WebSocket are relayed to that user's TCP
//! destination. A panel adds and removes users at run time through a JSON controller.
//!
//! Thread per core: each worker runs a monoio runtime (io_uring by default, epoll with
//! `-driver epoll`) with its own SO_REUSEPORT listener and its own copy of the routes; the
//! controller thread owns the authoritative table and broadcasts every change to the
//! workers, replying only when all have it. The data path takes no lock.
//!
//! # Layout
//!
//! Data flows down this list: accept, TLS, head, route, tunnel.
//!
//! - [`config`]: argv in Go's flag syntax to a [`config::Config`]; Go durations.
//! - [`server`]: start-up; binds every listener, starts workers and the controller.
//! - [`worker`]: one thread per core: runtime, listeners, accept loop, connection cap,
//!   draining, the idle sweep, answering the controller.
//! - [`stream`]: the data port's transport (TCP or unix socket) behind one type.
//! - [`proxy_protocol`]: PROXY v1/v2 headers in front of data connections.
//! - [`tls`]: the rustls configuration (files or self-signed), ALPN, resumption, reload.
//! - [`tls_stream`]: the handshake, then our own TLS 1.3 record layer (rustls for TLS 1.2).
//! - [`connection`]: one data-port connection from TLS handshake to tunnel: heads,
//!   routing, upgrade checks, mode choice.
//! - [`http`]: bounded request-head reading, route keys, canned responses.
//! - [`fallback`]: handing non-tunnel connections to a real web server.
//! - [`ws`]: the RFC 6455 frame codec (server side), in-place unmasking.
//! - [`client`]: the client side of a tunnel: frame reader (in place) and the single
//!   frame writer.
//! - [`tunnel`]: the plain tunnel, and dialing destinations.
//! - [`mux`]: the smux v1 session (multiplexed mode).
//! - [`smux`]: the smux v1 frame codec.
//! - [`task`]: spawning tasks so that a panic ends only its own task; the relay budget
//!   and the yield pump that keep a busy tunnel from stalling its worker, and the yield
//!   hook where a busy worker answers the controller.
//! - [`routes`]: the route table (one thin shared block per user) and the changes made to it.
//! - [`broadcast`]: requests from the controller to every worker (route changes, counters,
//!   kicks, metrics) and their answers.
//! - [`stats`]: per-user and per-worker counters, kicking.
//! - [`controller`]: the control API on its own thread: authoritative table, HTTP, auth,
//!   `/metrics`.
//! - [`command`]: parsing and validating the controller's JSON commands.
//! - [`state`]: durable users (`-state FILE`): a log of changes with compaction.
//! - [`metrics`]: the Prometheus text format of `/metrics`.
//! - [`doorbell`]: waking a worker's task from another thread (route changes, shutdown).

pub mod broadcast;
pub mod client;
pub mod command;
pub mod config;
pub mod connection;
pub mod controller;
pub mod doorbell;
pub mod fallback;
pub mod http;
pub mod metrics;
pub mod mux;
pub mod proxy_protocol;
pub mod routes;
pub mod server;
pub mod smux;
pub mod state;
pub mod stats;
pub mod stream;
pub mod task;
pub mod tls;
pub mod tls_stream;
pub mod tunnel;
pub mod worker;
pub mod ws;

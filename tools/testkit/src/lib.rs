#![warn(missing_docs)]

//! `testkit`: the client side of mtt-mu-server, shared by the integration tests
//! (`tests/it`), the soak tool (`tools/soak`) and the load generator (`tools/loadgen`).
//!
//! Everything here talks to a server from the outside, over real sockets, the way
//! mtt-client and misbehaving clients do; nothing here links the server's own code, so a
//! bug in the server's codecs cannot hide behind the same bug in the client.
//!
//! Layout:
//! - [`rng`]: deterministic generators (splitmix64, and the xorshift of the Go peer) and
//!   the byte streams built from them.
//! - [`procfs`]: a process's RSS, descriptors and CPU time from `/proc`; our fd limit.
//! - [`tls`]: the TLS client (rustls, ring) that accepts the server's self-signed
//!   certificate, and [`tls::Transport`], a connection that is plain TCP or TLS.
//! - [`records`]: a TLS 1.3 client that writes and reads the records a test chooses
//!   (rustls for the handshake and key updates, ring for the records).
//! - [`ws`]: RFC 6455 client framing (masked frames out, server frames in) and the upgrade.
//! - [`smux`]: xtaci/smux v1 framing inside the WebSocket byte stream, both ways.
//! - [`http`]: raw HTTP/1.1 requests and responses, for the data port and the controller.
//! - [`sock`]: raw-socket behaviour: reading to the close, pushing until blocked,
//!   trickling, resets, sockets that refuse or black-hole connections.
//! - [`backend`]: destinations the server dials: echo, capture, counting, flooding, recording.
//! - [`panel`]: a panel simulator (our protocol and UniProxy) that keeps users, counts
//!   what nodes push and can be told to fail, for the panel sync.
//! - [`server`]: starting the server binary (ours, or a package's) on ephemeral ports and
//!   asking its controller; per-test directories; the health checks every hostile case ends
//!   with.
//! - [`hostile`]: the hostile-input suite's cases: a bad thing sent, the answer asserted.
//! - [`gopeer`]: the Go peer (gorilla/websocket + xtaci/smux), built once, and its data.
//! - [`programs`]: the outside programs tests need (Go, nginx, promtool, Chromium, ...):
//!   found on PATH, or the test skips loudly, except under CI, where it fails.
//! - [`prelude`]: what most tests use, in one import.

pub mod backend;
pub mod gopeer;
pub mod hostile;
pub mod http;
pub mod panel;
pub mod procfs;
pub mod programs;
pub mod records;
pub mod rng;
pub mod server;
pub mod smux;
pub mod sock;
pub mod tls;
pub mod ws;

/// What most integration tests use, in one `use testkit::prelude::*`.
pub mod prelude {
    pub use crate::backend::{backend, capture_backend, echo_backend};
    pub use crate::http::{header, http_request, read_response};
    pub use crate::rng::pattern;
    pub use crate::server::{eventually, metric, temp_dir, unique_path, Server, WAIT};
    pub use crate::sock::dead_addr;
    pub use crate::tls::{tls_client, tls_client_with, tls_config, tls_config_versions, Transport};
    pub use crate::ws::{
        frame_with, masked_frame, raw_upgrade, read_data, read_frame, read_until_close, try_ws, Ws,
    };
}

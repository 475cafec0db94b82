//! `mtt-mu-server`: the multi-user server of mos-tls-tunnel. Many users share one port;
//! each user's client opens a WebSocket (usually over TLS), the HTTP path of the upgrade
//! picks the user, and the bytes inside the WebSocket are relayed to that user's TCP
//! destination. A panel adds and removes users at run time through a JSON controller.
//!
//! Thread per core: each worker runs a monoio runtime (io_uring by default, epoll with
//! `-driver epoll`) with its own SO_REUSEPORT listener and its own view of the routes (an
//! array of handles to the table's immutable shards, which all workers share); the
//! controller thread owns the authoritative table and broadcasts every change to the
//! workers, replying only when all have it. The data path takes no lock.
//!
//! # Layout
//!
//! One folder a layer. Data flows down: accept (`worker/`), TLS (`net/`), head and route
//! (`tunnel/` with [`proto`]), tunnel; the control plane (`control/`) talks to workers
//! only by message. A module uses only those below it in this list, never one above:
//!
//! - [`server`] (start-up: binds every listener, starts workers and the controller) and
//!   `main.rs` (argv, logging, exit codes).
//! - [`logging`]: how log lines are written (text, or JSON with side, user and client
//!   fields; no timestamp of our own under systemd's journal).
//! - [`config`]: argv in Go's flag syntax to a [`config::Config`], every flag described once
//!   in one table that also drives the usage text; Go durations, listen addresses.
//! - `worker/`: one thread per core: runtime, accept loop, connection cap, draining, the
//!   idle sweep, answering the controller. Owns each worker's `tunnel::Context`.
//! - `tunnel/`: one connection from TLS handshake to end: heads, routing, upgrade, the
//!   plain tunnel, the mux session, the fallback hand-off.
//! - `control/`: the controller thread (HTTP API, commands, state file, `/metrics`), the
//!   route table, per-user counters, limits and billing ledger it manages, its messages to
//!   the workers, and the panel sync thread (`-panel`) that asks it by message.
//! - `net/`: transports, listeners, dialing, bounded head reading, the TLS configuration
//!   and our TLS 1.3 record layer.
//! - `runtime/`: contained task spawning, the relay budget and yield hook, doorbells, and
//!   giving the memory freed after a peak back to the kernel (`malloc_trim`).
//! - [`proto`]: the wire formats (WebSocket, smux, HTTP heads, PROXY headers) as pure
//!   parsers and encoders; it builds without monoio (`--no-default-features`).
//!
//! Tests, benches and tools reach the crate through what is `pub` here; everything else
//! is `pub(crate)`.

pub mod config;
#[cfg(feature = "runtime")]
pub mod logging;
pub mod proto;
#[cfg(feature = "runtime")]
pub mod server;

#[cfg(feature = "runtime")]
pub(crate) mod control;
#[cfg(feature = "runtime")]
pub(crate) mod net;
#[cfg(feature = "runtime")]
pub(crate) mod runtime;
#[cfg(feature = "runtime")]
pub(crate) mod tunnel;
#[cfg(feature = "runtime")]
pub(crate) mod worker;

// The public surface for tests, benches, fuzzing and tools: the codecs, and the
// controller's command parsing and route table (which benches drive directly).
#[cfg(feature = "runtime")]
pub use control::{controller, routes};

/// What tests that speak TLS at the record level need of our record layer: the alert
/// codes it sends and its limits (which debug builds lower so tests can reach them).
#[cfg(feature = "runtime")]
pub mod tls_record {
    pub use crate::net::tls_stream::{alert, KEY_UPDATE_AFTER, MAX_RECORDS_WITHOUT_DATA};
}
pub use proto::{http, proxy_protocol, smux, ws};

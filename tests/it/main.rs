//! The integration tests: one binary, a module per area, each starting the real server
//! binary on ephemeral loopback ports and talking to it over sockets with real clients.
//! What they share (starting servers, TLS and WebSocket clients, smux framing, backends,
//! the Go peer) is the `testkit` crate in `tools/testkit`, which the soak and load tools
//! use too.
//!
//! The tests run in parallel in this one process: none may use a fixed port, a shared
//! path, or process-wide state (environment, limits) that another test could see.
//!
//! - [`tunnel`]: the plain tunnel end to end, over TLS and plain TCP.
//! - [`mux`]: the multiplexed tunnel against the Go peer (xtaci/smux).
//! - [`controller`]: the controller's commands and errors over real HTTP.
//! - [`policy`]: per-user limits (speed, devices, connections, quota, expiry) and lossless
//!   billing reports.
//! - [`panel`]: panel sync (`-panel`) against the kit's panel simulator, ours and UniProxy.
//! - [`operations`]: what operators run: auth, counters, metrics, sync, kick, state.
//! - [`service`]: running as a system service: the Debian package and its systemd unit,
//!   JSON and journal logs, the man page, promtool on the metrics and alert rules, the
//!   /status page in Chromium.
//! - [`startup`]: flags, exit codes, TLS files, a busy port.
//! - [`goflag`]: our argv reading against Go's own `flag` package, 190,000 inputs.
//! - [`shutdown`]: graceful shutdown and the connection cap.
//! - [`edge`]: real peers at the edge: nginx, HAProxy, unix sockets, TCP Fast Open.
//! - [`hostile`]: hostile clients and failing destinations.
//! - [`properties`]: property tests of the codecs that read hostile input.
//! - [`tls_records`]: the TLS 1.3 record layer, record by record: alerts, KeyUpdate,
//!   truncation, and rustls and OpenSSL as peers.
//! - [`soak`]: the short soak of CI.

mod controller;
mod edge;
mod goflag;
mod hostile;
mod mux;
mod operations;
mod panel;
mod policy;
mod properties;
mod service;
mod shutdown;
mod soak;
mod startup;
mod tls_records;
mod tunnel;

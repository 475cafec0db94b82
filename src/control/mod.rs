//! The control plane: the controller thread that panels talk to, and the state it is
//! the authority on. It reaches the workers only by message ([`broadcast`]); the workers
//! and their tunnels read the route table and counters defined here, in their own copies.
//!
//! - [`controller`]: the control API on its own thread: authoritative table, HTTP, auth,
//!   `/metrics`, certificate reload.
//! - [`command`]: parsing and validating the controller's JSON commands.
//! - [`policy`]: per-user limits (speed, devices, connections, quota, expiry) and the state
//!   a limited user shares across workers.
//! - [`routes`]: the route table (one thin shared block per user, in immutable shards the
//!   workers share) and the changes made to it.
//! - [`broadcast`]: requests from the controller to every worker (route changes, counters,
//!   kicks, metrics) and their answers.
//! - [`registry`]: a worker's registry of open tunnels and per-user counters: counting
//!   bytes, kicking users, sweeping idle plain tunnels.
//! - [`billing`]: the ledger of counts panels have not acknowledged (opt 7 and 8).
//! - [`panel`]: panel sync (`-panel`): a thread that pulls users from a panel and pushes
//!   traffic and client addresses, asking the controller by message (ours and UniProxy).
//! - [`state`]: durable users (`-state FILE`): a log of changes with compaction.
//! - [`metrics`]: the Prometheus text format of `/metrics`.
//! - [`status`]: the operator's `GET /status` page and `/status.json`, and the process
//!   facts (descriptors, certificate expiry) `/metrics` adds.

pub(crate) mod billing;
pub(crate) mod broadcast;
pub(crate) mod command;
pub mod controller;
pub(crate) mod metrics;
pub(crate) mod panel;
pub(crate) mod policy;
pub(crate) mod registry;
pub mod routes;
pub(crate) mod state;
pub(crate) mod status;

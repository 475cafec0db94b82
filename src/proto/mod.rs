//! The wire formats, as parsers and encoders over byte slices: no I/O, no runtime, no
//! knowledge of users or routes. This folder builds without monoio (`cargo check --lib
//! --no-default-features` in `run-tests.sh` proves it), so it can be fuzzed, benchmarked
//! and read on its own.
//!
//! - [`ws`]: the RFC 6455 frame codec (server side), in-place unmasking.
//! - [`smux`]: the smux v1 frame codec.
//! - [`http`]: request heads (parsed with httparse, with limits), route keys, the
//!   responses the data port and the controller send.
//! - [`proxy_protocol`]: PROXY v1/v2 headers in front of data connections.

pub mod http;
pub mod proxy_protocol;
pub mod smux;
pub mod ws;

//! `http::parse_head` fed as a head arrives read by read, and `http::route_key`: see
//! `harness::fuzz_http_head`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| mtt_fuzz_harness::fuzz_http_head(input));

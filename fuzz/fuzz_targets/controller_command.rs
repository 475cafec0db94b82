//! `controller::parse_command` on a request body: never panics, and agrees with a reading of
//! the body as a `serde_json::Value` against SPEC section 5. See
//! `harness::fuzz_controller_command`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| mtt_fuzz_harness::fuzz_controller_command(input));

//! `ws::Decoder::decode` fed client bytes read by read: the contract on every call, and the
//! same events and error however the reads are cut. See `harness::fuzz_ws_decoder`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| mtt_fuzz_harness::fuzz_ws_decoder(input));

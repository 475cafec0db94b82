//! `smux::Decoder::decode` fed the WebSocket byte stream read by read: the contract on every
//! call, and the events of a reference reading of the wire format however the reads are
//! cut. See `harness::fuzz_smux_decoder`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| mtt_fuzz_harness::fuzz_smux_decoder(input));

//! Fuzzes a hub session with arbitrary command sequences (see `duplex_hub::fuzzing`): every
//! command's validation and state change on an in-memory hub; the session must keep
//! answering. Run: `cargo +nightly fuzz run hub_frames`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| duplex_hub::fuzzing::session_frames(input));

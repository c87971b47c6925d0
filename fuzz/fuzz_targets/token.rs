//! Fuzzes bearer-token parsing and the claims-to-rights mapping (see
//! `duplex_server::auth::fuzzing`): no panic, and no identity from an unsigned token.
//! Run: `cargo +nightly fuzz run token`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| duplex_server::auth::fuzzing::token(input));

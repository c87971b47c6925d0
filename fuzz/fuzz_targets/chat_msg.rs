//! Fuzzes the Chat service's `Msg` decoder against prost: the same text for what prost
//! accepts, the same error for what it refuses (see `duplex_server::chat::decode_msg`).
//! Run: `cargo +nightly fuzz run chat_msg`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|input: &[u8]| {
    let ours = duplex_server::chat::decode_msg(bytes::Bytes::copy_from_slice(input));
    let theirs = duplex_proto::chat::Msg::decode(input);
    match (ours, theirs) {
        (Ok(ours), Ok(theirs)) => assert_eq!(ours.text(), theirs.text.as_bytes()),
        (Err(ours), Err(theirs)) => assert_eq!(ours.to_string(), theirs.to_string()),
        (ours, theirs) => panic!("ours {ours:?}, prost {theirs:?}"),
    }
});

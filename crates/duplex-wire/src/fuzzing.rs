//! The body of the fuzz target (`fuzz/fuzz_targets/decode.rs`), here so that a normal
//! test can run it too (`tests/fuzz_loop.rs`, a bounded randomized loop on stable Rust).
//!
//! Input format: a sequence of records `[control][bytes…]`. The control byte's low bit
//! picks the direction (0 = client to server, 1 = server to client) and its upper seven
//! bits give the chunk length minus one (1–128 bytes, fewer at the end of the input).
//! Seeds therefore carry a real connection's bytes in the chunking it arrived in.

use std::time::{Duration, Instant};

use crate::{ConnectionDecoder, Direction, Event, FrameDecoder, Limits, Schema};

/// Splits fuzz input into direction-tagged chunks.
pub fn chunks(data: &[u8]) -> Vec<(Direction, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&control, tail)) = rest.split_first() {
        let direction = if control & 1 == 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        let len = usize::from(control >> 1) + 1;
        let (chunk, tail) = tail.split_at(len.min(tail.len()));
        out.push((direction, chunk));
        rest = tail;
    }
    out
}

/// Encodes direction-tagged bytes in the input format, in chunks of at most `max`
/// (1–128) bytes: how seeds are made.
pub fn encode(chunks: &[(Direction, &[u8])], max: usize) -> Vec<u8> {
    let max = max.clamp(1, 128);
    let mut out = Vec::new();
    for (direction, bytes) in chunks {
        for piece in bytes.chunks(max) {
            out.push(((piece.len() - 1) as u8) << 1 | direction.index() as u8);
            out.extend_from_slice(piece);
        }
    }
    out
}

/// An error as compared across chunkings: a bad preface shows the bytes buffered when
/// it was detected, which depends on the chunking, so only its kind is compared.
fn error_key(error: &crate::DecodeError) -> String {
    match error {
        crate::DecodeError::BadPreface { .. } => "BadPreface".to_owned(),
        other => format!("{other:?}"),
    }
}

/// Decodes the input through a [`ConnectionDecoder`] (small limits, so bounds are
/// exercised) and renders every event, decoding messages with `schema`. Checks one
/// property besides "no panic": each direction yields the same frames whether its bytes
/// arrive in the input's chunks or all at once.
pub fn run(data: &[u8], schema: &Schema) {
    let limits = Limits {
        message_capture: 256,
        max_header_block: 1024,
        max_hpack_table: 4096,
        max_streams: 8,
        max_closed_streams: 4,
        max_pending_settings: 2,
    };
    let mut conn = ConnectionDecoder::new(limits);
    let start = Instant::now();
    let mut whole: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut frames: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for (i, (direction, chunk)) in chunks(data).into_iter().enumerate() {
        whole[direction.index()].extend_from_slice(chunk);
        let now = start + Duration::from_micros(i as u64);
        for event in conn.feed(direction, chunk, now) {
            match &event {
                Event::Frame(frame) => {
                    frames[direction.index()].push(format!("{:?}", frame.frame));
                    if let Some(path) = &frame.path {
                        for message in &frame.messages {
                            if let Some(Ok(decoded)) = schema.decode(path, direction, &message.data)
                            {
                                let _ = decoded.text();
                            }
                        }
                    }
                    let _ = format!("{frame:?}");
                }
                Event::Error { error, .. } => {
                    frames[direction.index()].push(error_key(error));
                }
                Event::Preface { .. } => {}
            }
        }
    }
    let _ = conn.summary(start + Duration::from_secs(1));

    for direction in Direction::BOTH {
        let mut decoder = match direction {
            Direction::ClientToServer => FrameDecoder::client(),
            Direction::ServerToClient => FrameDecoder::server(),
        };
        decoder.feed(&whole[direction.index()]);
        let at_once: Vec<String> = std::iter::from_fn(|| decoder.next_item())
            .filter_map(|item| match item {
                Ok(crate::Item::Frame(frame)) => Some(format!("{frame:?}")),
                Ok(crate::Item::Preface) => None,
                Err(error) => Some(error_key(&error)),
            })
            .collect();
        assert_eq!(
            at_once,
            frames[direction.index()],
            "chunking changed the frames decoded {direction}"
        );
    }
}

//! Frame builders for the unit tests: raw bytes as a peer would send them.

use crate::frame::{Flags, FrameHeader, FrameType};

/// One frame's bytes.
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        length: payload.len() as u32,
        kind: FrameType::from(kind),
        flags: Flags(flags),
        reserved: false,
        stream_id: stream,
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(payload);
    out
}

pub(crate) fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in params {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(4, 0, 0, &payload)
}

pub(crate) fn settings_ack() -> Vec<u8> {
    frame(4, Flags::ACK, 0, &[])
}

pub(crate) fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(8, 0, stream, &increment.to_be_bytes())
}

pub(crate) fn data(stream: u32, end_stream: bool, payload: &[u8]) -> Vec<u8> {
    frame(
        0,
        if end_stream { Flags::END_STREAM } else { 0 },
        stream,
        payload,
    )
}

/// A HEADERS frame with END_HEADERS carrying `block`.
pub(crate) fn headers(stream: u32, end_stream: bool, block: &[u8]) -> Vec<u8> {
    let flags = Flags::END_HEADERS | if end_stream { Flags::END_STREAM } else { 0 };
    frame(1, flags, stream, block)
}

/// A gRPC length-prefixed message.
pub(crate) fn grpc(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK-encodes headers with `encoder` (which keeps its dynamic table between calls).
pub(crate) fn hpack(
    encoder: &mut loona_hpack::Encoder<'static>,
    fields: &[(&str, &str)],
) -> Vec<u8> {
    encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

/// Request headers of a gRPC call to `path`.
pub(crate) fn request_fields(path: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "5S"),
    ]
}

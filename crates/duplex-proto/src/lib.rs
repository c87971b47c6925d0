//! Generated protobuf types and gRPC stubs for duplex.
//!
//! Built from `proto/` by `build.rs` with `protox`, so no system `protoc` is needed.
//! Nothing here is written by hand: change the `.proto` files instead.

/// The article's `Chat` service (`proto/chat.proto`, package `chat`): a bidi stream where
/// every inbound `Msg` gets one `Echo` with text `<<text>>`.
pub mod chat {
    tonic::include_proto!("chat");
}

/// duplex rooms (`proto/duplex/v1/hub.proto`): frames of the `Hub.Connect` session stream,
/// the unary and server-streaming calls, and a generated client. The server side is
/// hand-written in `duplex-server` (it sends pre-encoded frames).
pub mod hub {
    tonic::include_proto!("duplex.v1");
}

/// The encoded `FileDescriptorSet` of every duplex proto, for reflection and the wire tap.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("duplex_descriptor");

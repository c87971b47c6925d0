//! Generated protobuf types and gRPC stubs for duplex.
//!
//! Built from `proto/` by `build.rs` with `protox`, so no system `protoc` is needed.
//! Nothing here is written by hand: change the `.proto` files instead.

/// The article's `Chat` service (`proto/chat.proto`, package `chat`): a bidi stream where
/// every inbound `Msg` gets one `Echo` with text `<<text>>`.
pub mod chat {
    tonic::include_proto!("chat");
}

/// The encoded `FileDescriptorSet` of every duplex proto, for reflection and the wire tap.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("duplex_descriptor");

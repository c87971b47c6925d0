//! Generated protobuf types for duplex, and its gRPC stubs behind a feature.
//!
//! Built from `proto/` by `build.rs` with `protox`, so no system `protoc` is needed.
//! Nothing here is written by hand: change the `.proto` files instead.
//!
//! # Feature flags
//!
//! - `grpc` (off by default): the tonic client and server stubs (`chat_client`,
//!   `chat_server`, `hub_client`). Without it the crate depends on prost only, so the
//!   engine builds without tonic.

/// The article's `Chat` service (`proto/chat.proto`, package `chat`): a bidi stream where
/// every inbound `Msg` gets one `Echo` with text `<<text>>`.
#[allow(missing_docs)] // generated: the .proto comments become docs where they exist
pub mod chat {
    include!(concat!(env!("OUT_DIR"), "/chat.rs"));
}

/// duplex rooms (`proto/duplex/v1/hub.proto`): frames of the `Hub.Connect` session stream,
/// the unary and server-streaming calls, [`hub::Code`], and (feature `grpc`) a generated
/// client. The server side is
/// hand-written in `duplex-server` (it sends pre-encoded frames).
#[allow(missing_docs)] // generated: the .proto comments become docs where they exist
pub mod hub {
    include!(concat!(env!("OUT_DIR"), "/duplex.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every duplex proto, for reflection and the wire tap.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/duplex_descriptor.bin"));

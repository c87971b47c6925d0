//! Compiles `proto/*.proto` with `protox` (a pure-Rust protobuf compiler), so building
//! duplex never needs a system `protoc`, then generates prost types and tonic stubs.
//! The encoded descriptor set is kept in `OUT_DIR` for reflection and the wire tap.
//!
//! Without the `grpc` feature only the message types are generated (no tonic in them). With
//! it, `chat.proto` also gets a generated server and client, and `hub.proto` a client only:
//! its server is written by hand in `duplex-server`, so fan-out can send bytes encoded once
//! per message instead of once per subscriber.

use std::path::{Path, PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let chat = proto_root.join("chat.proto");
    let hub = proto_root.join("duplex/v1/hub.proto");
    for file in [&chat, &hub] {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let all = protox::compile([&chat, &hub], [&proto_root])?;
    std::fs::write(out_dir.join("duplex_descriptor.bin"), all.encode_to_vec())?;

    // Cargo sets this for the build script when the crate's `grpc` feature is on.
    let stubs = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(stubs)
        .build_client(stubs)
        .compile_fds(descriptors(&chat, &proto_root)?)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(stubs)
        // `Hub.Connect` would clash with the generated `HubClient::connect(endpoint)`;
        // clients build a `HubClient::new(channel)` instead.
        .build_transport(false)
        .bytes(".duplex.v1")
        .compile_fds(descriptors(&hub, &proto_root)?)?;
    Ok(())
}

fn descriptors(
    file: &Path,
    root: &Path,
) -> Result<prost_types::FileDescriptorSet, Box<dyn std::error::Error>> {
    Ok(protox::compile([file], [root])?)
}

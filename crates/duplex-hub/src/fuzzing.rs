//! The body of the `hub_frames` fuzz target, also run on stable by `tests/fuzz_loop.rs`.
//!
//! Input: a sequence of length-prefixed `ClientFrame`s (a 2-byte big-endian length, then
//! that many bytes of protobuf; what cannot be decoded is skipped as a client's garbage
//! would be rejected by the transport). Each decoded frame goes through one real session
//! on an in-memory hub, so every command's validation and state change runs. The property:
//! no panic, and the session keeps answering (a ping after the frames gets its pong).

use std::sync::Arc;

use duplex_proto::hub::client_frame::Command;
use duplex_proto::hub::{ClientFrame, Ping, ServerFrame};
use duplex_store::MemoryStore;
use futures::{FutureExt as _, StreamExt as _};
use prost::Message as _;

use crate::{Hub, HubConfig, Identity, Rights};

/// Runs one input. Panics only if the engine misbehaves.
pub fn session_frames(input: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let config = HubConfig {
            max_payload: 64,
            max_rooms_per_session: 4,
            publish_rate: Some(100),
            publish_burst: 8,
            ..HubConfig::default()
        };
        let hub = Hub::new(Arc::new(MemoryStore::new(Default::default())), config);
        let rights = Rights::new(&["*"], &["w*", "room"]).expect("valid patterns");
        let identity = Identity {
            rights,
            quota_key: "fuzz".into(),
            ..Identity::anonymous("fuzz")
        };
        let (mut session, mut outbound) = hub.open_session(identity);
        let mut rest = input;
        while rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
            let (frame, tail) = rest[2..].split_at(len);
            rest = tail;
            if let Ok(frame) = ClientFrame::decode(frame)
                && let Some(task) = session.handle(frame).await
            {
                task.await;
            }
            // Keep the queue drained so reliable replies never wait.
            while let Some(Some(_)) = outbound.next().now_or_never() {}
        }
        let ping = ClientFrame {
            command_id: u64::MAX,
            command: Some(Command::Ping(Ping {
                client_time_unix_micros: 7,
            })),
        };
        assert!(session.handle(ping).await.is_none());
        let mut answered = false;
        while let Some(Some(item)) = outbound.next().now_or_never() {
            let Ok(bytes) = item else { break };
            let frame = ServerFrame::decode(&bytes[..]).expect("the hub encodes valid frames");
            if let Some(duplex_proto::hub::server_frame::Frame::Pong(pong)) = frame.frame {
                answered = pong.command_id == u64::MAX;
            }
        }
        assert!(answered, "the session answers after any input");
    });
}

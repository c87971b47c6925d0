//! duplex on NATS JetStream: what `duplex serve --cluster nats://…` puts behind the hub's
//! seams, so that several nodes serve one set of rooms.
//!
//! No replication or consensus of our own: JetStream is the distributed log.
//!
//! - **The log** (the hub's `Store`): one stream holds every room, one subject per room
//!   (`<prefix>.room.<token>`, the room name as one base64url token: see [`subject`]). A
//!   room's offset is the message's **stream sequence**: strictly increasing within the
//!   room, not dense, as `hub.proto` promises, and assigned by JetStream, so publishes to
//!   one room from any node need no coordination. A publish is acked only after
//!   JetStream's PubAck; dedupe is JetStream's `Nats-Msg-Id` within the stream's
//!   `duplicate_window`, which answers a repeat with the original's sequence.
//! - **The live feed** (`LiveFeed`): the stream republishes every stored message to
//!   `<prefix>.live.<token>`; a node subscribes to the live subjects of the rooms its
//!   sessions joined (NATS routes by interest, no consumer per room per node), and the
//!   republished `Nats-Last-Sequence` (the room's previous sequence) shows a gap exactly,
//!   which is read back from the stream before anything later is delivered.
//! - **Presence** (`Presence`): a KV bucket with a TTL and limit markers, so a dead node's
//!   members expire and every node sees them leave.
//!
//! [`Cluster`] is one node's connection; [`ClusterConfig`] its settings.

mod cluster;
mod config;
mod feed;
mod log;
mod presence;
pub mod subject;

pub use cluster::{Cluster, ClusterError, ConnectionState, RECORD_ALLOWANCE, Seams};
pub use config::{ClusterConfig, DEFAULT_LIVE_BUFFER, StreamStorage};
pub use feed::RepublishFeed;
pub use log::JetStreamLog;
pub use presence::{KvPresence, PresenceError, WRITES_IN_FLIGHT, bucket_name};
pub use subject::Subjects;

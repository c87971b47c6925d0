//! The duplex engine: rooms with one total order each, durable publish, fan-out encoded
//! once per message, bounded per-subscriber queues with lag policies, presence, and
//! lossless resume. It knows nothing of gRPC or sockets: the server feeds it decoded
//! `ClientFrame`s and sends the encoded `ServerFrame` bytes it yields.
//!
//! Who runs what: the sequencer task (one per hub, `sequencer.rs`) appends batches to the
//! log (which assigns offsets and dedupes), then delivers each new message to its room;
//! a [`LiveFeed`] delivers what other processes appended (none on a single node); one
//! task per session (`session.rs`) reads commands; each session's [`Outbound`] stream is
//! polled by the transport. Every queue is bounded by [`HubConfig`].

mod budget;
mod config;
mod error;
mod feed;
pub mod frames;
pub mod fuzzing;
mod hub;
mod limiter;
mod presence;
mod queue;
mod rights;
mod room;
mod sequencer;
mod session;

pub use budget::{ByteBudget, QueueBudgets};
pub use config::{HubConfig, LagPolicy};
pub use error::HubError;
pub use feed::{FeedHandle, LiveFeed, LocalFeed, RoomDelivery};
pub use hub::{HistoryPage, Hub, HubStats, PublishInput, PublishOutcome, RoomPresence};
pub use presence::{Listing, Presence};
pub use queue::{Frame, Outbound};
pub use rights::{Identity, Rights};
pub use room::validate_room_name;
pub use session::Session;

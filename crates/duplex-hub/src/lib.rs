//! The duplex engine: rooms with one total order each, durable publish, fan-out encoded
//! once per message, bounded per-subscriber queues with lag policies, presence, and
//! lossless resume. It knows nothing of gRPC or sockets: the server feeds it decoded
//! `ClientFrame`s and sends the encoded `ServerFrame` bytes it yields.
//!
//! Who runs what: the sequencer task (one per hub, `sequencer.rs`) appends batches to the
//! log (which assigns offsets and dedupes), then delivers each new message to its room;
//! a [`LiveFeed`] delivers what other processes appended (none on a single node); a
//! [`Presence`] keeps who is in each room ([`LocalPresence`] on a single node); one task
//! per session (`session.rs`) reads commands, with its deadlines (`deadlines.rs`) and its
//! replay→live switch (`resume.rs`); each session's [`Outbound`] stream is polled by the
//! transport. Every queue is bounded by [`HubConfig`].
//!
//! The API checks for the caller: [`Hub`] methods take the caller's [`Identity`] and check
//! its rights and the room name themselves, and sessions check every command, so no
//! transport can reach the engine without them. Errors carry a [`Code`] (the values are
//! the gRPC numbers), never a transport's type.

mod budget;
mod config;
mod counters;
mod deadlines;
mod engine;
mod error;
mod feed;
pub mod frames;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hub;
mod limiter;
mod presence;
mod queue;
mod resume;
mod rights;
mod room;
mod sequencer;
mod session;

pub use budget::{ByteBudget, QueueBudgets};
pub use config::{HubConfig, LagPolicy};
pub use counters::{HubCounters, ShardedCounter};
pub use duplex_proto::hub::Code;
pub use engine::{PublishInput, PublishOutcome};
pub use error::HubError;
pub use feed::{FeedHandle, LiveFeed, LocalFeed, RoomDelivery};
pub use hub::{HistoryPage, Hub, HubStats, RoomPresence, SessionOrigin, Subscription};
pub use presence::{Listing, LocalPresence, Presence, PresenceChange, PresenceEvents};
pub use queue::{Frame, Outbound};
pub use rights::{Identity, MAX_NAME_LEN, Naming, Rights};
pub use room::validate_room_name;
pub use session::Session;

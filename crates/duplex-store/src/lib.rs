//! The durable message log behind duplex rooms: it assigns offsets and dedupes.
//!
//! The hub hands a batch of [`NewMessage`]s to [`Store::append`]; the store gives each the
//! next [`Offset`] of its room (or, for a client message id it saw within the dedupe window,
//! the original's offset and `duplicate: true`) and answers per message with an
//! [`Appended`]. A publish is acknowledged only once `append` has returned, so for the
//! embedded backend an ack always follows an fsync. Subscribers that resume read history
//! back with [`Store::read_after`], and [`Store::bounds`] says which offsets retention
//! still keeps.
//!
//! Two backends:
//!
//! - [`RedbStore`]: an embedded [redb](https://docs.rs/redb) file, `DIR/duplex.redb`. One
//!   writer thread owns the write side and group-commits every append waiting while the
//!   previous commit ran into one transaction and one fsync (see [`redb_store`]).
//! - [`MemoryStore`]: per-room bounded queues in memory, for `--store memory` and tests.
//!
//! Retention ([`Retention`]) is per room, by count (enforced on every append) and by age
//! (enforced when the server calls [`Store::enforce_retention`]). Retention only ever trims
//! the oldest messages of a room, so what a room retains is always a contiguous run of its
//! log, from [`RoomBounds::earliest`] to [`RoomBounds::last`].
//!
//! **Dedupe** ([`Dedupe`]): a message whose (room, client id) was appended less than
//! `window` ago (by the messages' own [`NewMessage::time_unix_micros`]) is not stored again;
//! it is answered with the original's offset and time and `duplicate: true`. That holds
//! within one batch too, and however many other messages the room got meanwhile. The index
//! is keyed by a 128-bit hash of (room, id) (the first 16 bytes of SHA-256): two different
//! pairs collide with odds about n²/2¹²⁹ for n ids held, about 10⁻²⁴ for 24 million, and a
//! collision would only make a message look like a repeat. The index is bounded per room
//! ([`Dedupe::max_ids_per_room`]) and in total ([`Dedupe::max_ids`]); past a bound the
//! oldest ids are forgotten early, so for that room (or the whole store) the window is
//! shorter than configured: a retry of a forgotten id is stored again as a new message.
//! What the index costs per id is in each backend's docs.
//!
//! ```
//! use duplex_store::{MemoryStore, NewMessage, Retention, Store};
//!
//! # futures::executor::block_on(async {
//! let store = MemoryStore::new(Retention::default());
//! let message = |id: &str| NewMessage {
//!     room: "lobby".into(),
//!     time_unix_micros: 1_000_000,
//!     sender: "ada".into(),
//!     content_type: "text/plain".into(),
//!     client_id: id.into(),
//!     key: String::new(),
//!     payload: bytes::Bytes::from_static(b"hello"),
//! };
//! let appended = store.append(vec![message("a"), message("b"), message("a")]).await?;
//! assert_eq!(appended.iter().map(|a| a.offset).collect::<Vec<_>>(), [1, 2, 1]);
//! assert!(appended[2].duplicate);
//! let history = store.read_after("lobby", 1, 10).await?;
//! assert_eq!(history.len(), 1);
//! assert_eq!(history[0].offset, 2);
//! assert_eq!(store.last_offset("lobby").await?, 2);
//! # Ok::<(), duplex_store::StoreError>(())
//! # }).unwrap();
//! ```

pub mod counters;
mod dedupe;
mod error;
pub mod memory;
pub mod record;
pub mod redb_store;
mod writer;

use std::sync::Arc;
use std::time::Duration;

pub use futures::future::BoxFuture;

pub use counters::{Histogram, HistogramSnapshot, StoreCounters};
pub use error::StoreError;
pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// Most messages one [`Store::enforce_retention`] call removes, so that one run cannot hold
/// the writer (and with it every publisher's ack) for long. A call that returns this many
/// may have left more: call again.
pub const MAX_RETENTION_DELETES_PER_RUN: u64 = 50_000;

/// A message's position in its room's log.
///
/// Per room and strictly increasing; assigned by the store, the first message of a room
/// being 1; never reused, also after retention removed a message or the store reopened. Offsets need not be dense. 0 means "before everything": `read_after(room, 0, n)`
/// reads a room from its start.
pub type Offset = u64;

/// One message of a room's log, as stored and as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// The room the message was published to.
    pub room: String,
    /// Its position in the room's log.
    pub offset: Offset,
    /// Server time when it was appended, in microseconds since the Unix epoch. Age
    /// retention compares against it.
    pub time_unix_micros: i64,
    /// Identity of the publisher; empty for an anonymous one.
    pub sender: String,
    /// Content type the publisher gave; may be empty.
    pub content_type: String,
    /// The publisher's own message id, for deduplication; empty for none.
    pub client_id: String,
    /// Coalescing key for `latest-per-key` subscribers (`""` = none).
    pub key: String,
    /// The message body, opaque to the store.
    pub payload: bytes::Bytes,
}

impl StoredMessage {
    /// Bytes this message takes in a page: its payload and strings, plus a fixed allowance
    /// for the rest. What [`Store::read_page`] counts against its byte bound.
    pub fn size(&self) -> usize {
        MESSAGE_OVERHEAD
            + self.room.len()
            + self.sender.len()
            + self.content_type.len()
            + self.client_id.len()
            + self.key.len()
            + self.payload.len()
    }
}

impl StoredMessage {
    /// The stored form of `message` at `offset`.
    pub fn from_new(message: NewMessage, offset: Offset) -> Self {
        StoredMessage {
            room: message.room,
            offset,
            time_unix_micros: message.time_unix_micros,
            sender: message.sender,
            content_type: message.content_type,
            client_id: message.client_id,
            key: message.key,
            payload: message.payload,
        }
    }
}

/// A message to append: everything of a [`StoredMessage`] but the offset, which the store
/// assigns.
///
/// The time comes from the caller (the hub stamps one time per batch): the store compares
/// it against retention's age limit and the dedupe window, so one clock decides both, and
/// tests can drive time without sleeping. A backend with its own clock (a JetStream log)
/// may report its own time in [`Appended::time_unix_micros`] instead.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// The room the message is published to.
    pub room: String,
    /// Server time of the publish, in microseconds since the Unix epoch.
    pub time_unix_micros: i64,
    /// Identity of the publisher; empty for an anonymous one.
    pub sender: String,
    /// Content type the publisher gave; may be empty.
    pub content_type: String,
    /// The publisher's own message id, for deduplication; empty for none.
    pub client_id: String,
    /// Coalescing key for `latest-per-key` subscribers (`""` = none).
    pub key: String,
    /// The message body, opaque to the store.
    pub payload: bytes::Bytes,
}

/// What [`Store::append`] did with one message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's offset; for a duplicate, the original message's.
    pub offset: Offset,
    /// The stored time; for a duplicate, the original message's.
    pub time_unix_micros: i64,
    /// The room saw this client message id within the dedupe window: nothing was stored.
    pub duplicate: bool,
}

/// How the store remembers client message ids to dedupe repeats (see the
/// [crate docs](crate)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dedupe {
    /// A repeat of a (room, client id) appended less than this long before is a duplicate.
    /// Zero turns dedupe off: every message is stored, no id is remembered.
    pub window: Duration,
    /// Most ids remembered per room; past it the room's oldest are forgotten early.
    pub max_ids_per_room: u64,
    /// Most ids remembered in the whole store; past it the store's oldest are forgotten
    /// early, whatever their room.
    pub max_ids: u64,
}

/// Default [`Dedupe::window`]: two minutes.
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(120);
/// Default [`Dedupe::max_ids_per_room`].
pub const DEFAULT_DEDUPE_IDS_PER_ROOM: u64 = 100_000;
/// Default [`Dedupe::max_ids`].
pub const DEFAULT_DEDUPE_IDS: u64 = 1_000_000;

impl Default for Dedupe {
    fn default() -> Self {
        Dedupe {
            window: DEFAULT_DEDUPE_WINDOW,
            max_ids_per_room: DEFAULT_DEDUPE_IDS_PER_ROOM,
            max_ids: DEFAULT_DEDUPE_IDS,
        }
    }
}

impl Dedupe {
    /// No dedupe at all.
    pub const OFF: Dedupe = Dedupe {
        window: Duration::ZERO,
        max_ids_per_room: 0,
        max_ids: 0,
    };

    /// Whether ids are remembered at all.
    pub fn is_on(&self) -> bool {
        !self.window.is_zero() && self.max_ids_per_room > 0 && self.max_ids > 0
    }

    /// The window in microseconds.
    pub(crate) fn window_micros(&self) -> i64 {
        i64::try_from(self.window.as_micros()).unwrap_or(i64::MAX)
    }

    /// Whether an id first seen at `then` is still a duplicate at `now` (a clock that went
    /// back counts as within the window).
    pub(crate) fn still_holds(&self, then: i64, now: i64) -> bool {
        now.saturating_sub(then) < self.window_micros()
    }
}

/// Counts a page's bytes against [`Store::read_page`]'s bound: the first message always
/// goes in, each next one only while the page stays within the bound.
#[derive(Debug)]
pub(crate) struct PageBudget {
    left: usize,
    first: bool,
}

impl PageBudget {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            left: max_bytes,
            first: true,
        }
    }

    /// Whether a message of `size` bytes goes in the page (and counts it if so).
    pub(crate) fn admit(&mut self, size: usize) -> bool {
        let first = std::mem::take(&mut self.first);
        if size <= self.left {
            self.left -= size;
            true
        } else if first {
            self.left = 0;
            true
        } else {
            false
        }
    }
}

/// What [`StoredMessage::size`] adds for a message's fixed fields and bookkeeping.
pub const MESSAGE_OVERHEAD: usize = 64;

/// The offsets a room still retains, both inclusive.
///
/// Only exists for a room with at least one retained message (see [`Store::bounds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomBounds {
    /// Offset of the oldest retained message.
    pub earliest: Offset,
    /// Offset of the newest retained message.
    pub last: Offset,
}

/// How much of each room's log a store keeps, and how long it remembers client ids.
/// Applies to every room separately.
///
/// The default keeps every message (for [`MemoryStore`], up to its
/// [`DEFAULT_MAX_MESSAGES_PER_ROOM`](memory::DEFAULT_MAX_MESSAGES_PER_ROOM)) and dedupes
/// by [`Dedupe::default`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many messages per room; older ones are deleted in the same
    /// commit as the append that pushed the room over. `Some(0)` keeps none (offsets
    /// still advance: see [`Store::last_offset`]).
    pub max_messages: Option<u64>,
    /// Delete messages older than this (by [`StoredMessage::time_unix_micros`]) when
    /// [`Store::enforce_retention`] runs.
    pub max_age: Option<Duration>,
    /// How client message ids are remembered for dedupe; independent of how long the
    /// messages themselves are kept.
    pub dedupe: Dedupe,
}

impl Retention {
    /// The oldest `time_unix_micros` that `max_age` still keeps at `now_unix_micros`, or
    /// `None` when there is no age limit.
    fn age_cutoff(&self, now_unix_micros: i64) -> Option<i64> {
        let max_age = self.max_age?;
        let age = i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX);
        Some(now_unix_micros.saturating_sub(age))
    }
}

/// The durable log of every room, as the hub sees it.
///
/// Every method but [`commits`](Store::commits) returns a boxed future, so the trait can be
/// used as `dyn Store`. Futures of [`RedbStore`] must be polled inside a Tokio runtime
/// (reads run on its blocking pool).
pub trait Store: Send + Sync + 'static {
    /// Appends a batch of messages of any rooms, in order: each gets its room's next
    /// offset, or is reported a duplicate (see [`Dedupe`]). Returns one [`Appended`] per
    /// message, in the batch's order.
    ///
    /// Returns only once the batch is durable ([`RedbStore`]: committed with fsync), the
    /// dedupe index with it. An error means nothing of the batch is stored. Concurrent calls
    /// are group-committed: all appends waiting while one commit runs share the next commit
    /// (one fsync). An empty batch returns at once and commits nothing.
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>>;

    /// Up to `limit` retained messages of `room` with offset > `after`, in offset order.
    fn read_after(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>>;

    /// Like [`read_after`](Store::read_after), but the page also stops before the message
    /// that would take it over `max_bytes` of [`StoredMessage::size`] (a first message bigger
    /// than that comes alone), so a page of big messages is bounded in memory, not just in
    /// count. What readers that hold a page while a client is slow (replay, `History`) use.
    ///
    /// The provided version reads `limit` messages and drops what does not fit; both
    /// backends read no more than they return.
    fn read_page(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        let read = self.read_after(room, after, limit);
        Box::pin(async move {
            let mut page = PageBudget::new(max_bytes);
            let mut messages = read.await?;
            let fits = messages.iter().take_while(|m| page.admit(m.size())).count();
            messages.truncate(fits);
            Ok(messages)
        })
    }

    /// Earliest and last retained offsets of `room`; `None` when it retains none.
    fn bounds(&self, room: &str) -> BoxFuture<'_, Result<Option<RoomBounds>, StoreError>>;

    /// Highest offset ever appended to `room`, 0 if never. Survives retention deleting
    /// everything and reopening, so offsets never go back.
    fn last_offset(&self, room: &str) -> BoxFuture<'_, Result<Offset, StoreError>>;

    /// Deletes what retention no longer keeps, in every room: messages older than
    /// `max_age`, and the oldest beyond `max_messages` (already enforced on append; this
    /// catches a limit lowered since). Returns how many messages were removed, at most
    /// [`MAX_RETENTION_DELETES_PER_RUN`]; when it returns that many, call again. The server
    /// calls it periodically.
    fn enforce_retention(&self, now_unix_micros: i64) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Whether each room's offsets run without holes (each message's offset one more than
    /// the previous one's, as both embedded backends assign them), so that a hole before a
    /// room's earliest retained offset means retention removed messages. A shared log whose offsets are not
    /// dense (a cluster's stream sequences) says no, and resume then judges losses by the
    /// reader's own last offset instead.
    fn offsets_are_dense(&self) -> bool {
        true
    }

    /// Number of durable commits (fsyncs) done so far; for [`MemoryStore`], of appends.
    /// Lets tests check that every ack follows a commit.
    fn commits(&self) -> u64;

    /// What the store counts for operators (fsync latency, failed commits, whether it
    /// takes writes now); `None` for a store that counts nothing of its own.
    fn counters(&self) -> Option<&StoreCounters> {
        None
    }
}

/// A shared store is a store, so the hub can hold an `Arc<dyn Store>` and still be
/// generic over `S: Store`.
impl<S: Store + ?Sized> Store for Arc<S> {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        (**self).append(batch)
    }

    fn read_after(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        (**self).read_after(room, after, limit)
    }

    fn read_page(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        (**self).read_page(room, after, limit, max_bytes)
    }

    fn bounds(&self, room: &str) -> BoxFuture<'_, Result<Option<RoomBounds>, StoreError>> {
        (**self).bounds(room)
    }

    fn last_offset(&self, room: &str) -> BoxFuture<'_, Result<Offset, StoreError>> {
        (**self).last_offset(room)
    }

    fn enforce_retention(&self, now_unix_micros: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        (**self).enforce_retention(now_unix_micros)
    }

    fn offsets_are_dense(&self) -> bool {
        (**self).offsets_are_dense()
    }

    fn commits(&self) -> u64 {
        (**self).commits()
    }

    fn counters(&self) -> Option<&StoreCounters> {
        (**self).counters()
    }
}

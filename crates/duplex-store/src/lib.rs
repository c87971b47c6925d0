//! The durable message log behind duplex rooms.
//!
//! The hub assigns each message of a room an [`Offset`] and hands it to a [`Store`]; a
//! publish is acknowledged only once [`Store::append`] has returned, so for the embedded
//! backend an ack always follows an fsync. Subscribers that resume read history back with
//! [`Store::read_after`], and [`Store::bounds`] says which offsets retention still keeps.
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
//! ```
//! use duplex_store::{MemoryStore, Retention, Store, StoredMessage};
//!
//! # futures::executor::block_on(async {
//! let store = MemoryStore::new(Retention::default());
//! let message = |offset| StoredMessage {
//!     room: "lobby".into(),
//!     offset,
//!     time_unix_micros: 0,
//!     sender: "ada".into(),
//!     content_type: "text/plain".into(),
//!     client_id: String::new(),
//!     key: String::new(),
//!     payload: bytes::Bytes::from_static(b"hello"),
//! };
//! store.append(vec![message(1), message(2)]).await?;
//! let history = store.read_after("lobby", 1, 10).await?;
//! assert_eq!(history.len(), 1);
//! assert_eq!(history[0].offset, 2);
//! assert_eq!(store.last_offset("lobby").await?, 2);
//! # Ok::<(), duplex_store::StoreError>(())
//! # }).unwrap();
//! ```

mod error;
pub mod memory;
mod record;
pub mod redb_store;
mod writer;

use std::sync::Arc;
use std::time::Duration;

pub use futures::future::BoxFuture;

pub use error::StoreError;
pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// Most messages one [`Store::enforce_retention`] call removes, so that one run cannot hold
/// the writer (and with it every publisher's ack) for long. A call that returns this many
/// may have left more: call again.
pub const MAX_RETENTION_DELETES_PER_RUN: u64 = 50_000;

/// A message's position in its room's log.
///
/// Per room and strictly increasing; assigned by the hub, the first message of a room
/// being 1. Offsets need not be dense. 0 means "before everything": `read_after(room, 0, n)`
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

/// How much of each room's log a store keeps. Applies to every room separately.
///
/// The default keeps everything (for [`MemoryStore`], up to its
/// [`DEFAULT_MAX_MESSAGES_PER_ROOM`](memory::DEFAULT_MAX_MESSAGES_PER_ROOM)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many messages per room; older ones are deleted in the same
    /// commit as the append that pushed the room over. `Some(0)` keeps none (offsets
    /// still advance: see [`Store::last_offset`]).
    pub max_messages: Option<u64>,
    /// Delete messages older than this (by [`StoredMessage::time_unix_micros`]) when
    /// [`Store::enforce_retention`] runs.
    pub max_age: Option<Duration>,
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
    /// Persists a batch: records of any rooms; within a room, offsets must increase and
    /// follow what was stored before, or the whole batch is refused with
    /// [`StoreError::OffsetNotIncreasing`] and nothing of it is stored.
    ///
    /// Returns only once the batch is durable ([`RedbStore`]: committed with fsync).
    /// Concurrent calls are group-committed: all appends waiting while one commit runs share
    /// the next commit (one fsync). An empty batch returns at once and commits nothing.
    fn append(&self, batch: Vec<StoredMessage>) -> BoxFuture<'_, Result<(), StoreError>>;

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

    /// The client message ids of `room`'s newest messages that carry one, at most `limit`,
    /// oldest first, with their offsets: what the hub needs to dedupe a room it loads.
    ///
    /// Cheap by contract: a backend must answer without reading payloads, because the hub
    /// calls it for every room that comes back into use. The default reads the last `limit`
    /// messages (fine for a store in memory, whose reads copy no payload);
    /// [`RedbStore`] keeps a separate index of ids.
    fn recent_client_ids(
        &self,
        room: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(Offset, String)>, StoreError>> {
        let room = room.to_owned();
        Box::pin(async move {
            let last = self.last_offset(&room).await?;
            let from = last.saturating_sub(limit as u64);
            let recent = self.read_after(&room, from, limit).await?;
            Ok(recent
                .into_iter()
                .filter(|message| !message.client_id.is_empty())
                .map(|message| (message.offset, message.client_id))
                .collect())
        })
    }

    /// Deletes what retention no longer keeps, in every room: messages older than
    /// `max_age`, and the oldest beyond `max_messages` (already enforced on append; this
    /// catches a limit lowered since). Returns how many messages were removed, at most
    /// [`MAX_RETENTION_DELETES_PER_RUN`]; when it returns that many, call again. The server
    /// calls it periodically.
    fn enforce_retention(&self, now_unix_micros: i64) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Number of durable commits (fsyncs) done so far; for [`MemoryStore`], of appends.
    /// Lets tests check that every ack follows a commit.
    fn commits(&self) -> u64;
}

/// A shared store is a store, so the hub can hold an `Arc<dyn Store>` and still be
/// generic over `S: Store`.
impl<S: Store + ?Sized> Store for Arc<S> {
    fn append(&self, batch: Vec<StoredMessage>) -> BoxFuture<'_, Result<(), StoreError>> {
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

    fn recent_client_ids(
        &self,
        room: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(Offset, String)>, StoreError>> {
        (**self).recent_client_ids(room, limit)
    }

    fn enforce_retention(&self, now_unix_micros: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        (**self).enforce_retention(now_unix_micros)
    }

    fn commits(&self) -> u64 {
        (**self).commits()
    }
}

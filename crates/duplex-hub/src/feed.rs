//! The seam for live messages appended elsewhere: [`LiveFeed`], what a remote log (a
//! cluster's JetStream) implements so that messages other nodes append reach the rooms
//! of this one.
//!
//! The local log needs no feed: the sequencer (`sequencer.rs`) delivers each message
//! right after its append. A cluster log would: when a room is first joined on this node
//! (its load, see `room.rs`), the hub asks the feed to [`follow`](LiveFeed::follow) it
//! from the room's last offset, and the feed calls [`RoomDelivery::deliver`] for each
//! later message, in offset order, until the room is dropped from this node's table (its
//! [`FeedHandle`] is dropped with it). `deliver` ignores offsets at or below what the room
//! has delivered, so a feed that also sees this node's own appends, or that overlaps the
//! load, makes no duplicate; a feed that finds a gap (a missed message) must read it from
//! the log and deliver it before anything later, or end the room's subscribers with an
//! error, since a subscriber registered after a skipped offset would never see it.

use std::sync::{Arc, Weak};

use duplex_store::{BoxFuture, Offset, StoredMessage};

use crate::HubError;
use crate::room::Room;

/// Where a feed delivers one room's live messages. Holds the room weakly: once the room
/// is gone from this process, [`deliver`](RoomDelivery::deliver) says so and the feed
/// should stop.
#[derive(Debug, Clone)]
pub struct RoomDelivery {
    room: Weak<Room>,
}

impl RoomDelivery {
    pub(crate) fn new(room: &Arc<Room>) -> Self {
        RoomDelivery {
            room: Arc::downgrade(room),
        }
    }

    /// Fans a durable message of the room out to its subscribers here (see `room.rs`).
    /// Returns false once the room is gone from this process.
    pub fn deliver(&self, message: &StoredMessage) -> bool {
        match self.room.upgrade() {
            Some(room) => {
                room.deliver(message);
                true
            }
            None => false,
        }
    }
}

/// Stops following a room when dropped (whatever the feed put in it: a task's abort
/// handle, a subscription).
pub struct FeedHandle {
    _stop: Option<Box<dyn Send + Sync>>,
}

impl FeedHandle {
    /// A handle that stops following by dropping `stop`.
    pub fn new(stop: impl Send + Sync + 'static) -> Self {
        FeedHandle {
            _stop: Some(Box::new(stop)),
        }
    }

    /// A handle with nothing to stop (a feed that follows nothing).
    pub fn none() -> Self {
        FeedHandle { _stop: None }
    }
}

impl std::fmt::Debug for FeedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedHandle").finish_non_exhaustive()
    }
}

/// A source of live messages that this process did not append (see the module docs).
pub trait LiveFeed: Send + Sync + 'static {
    /// Whether this feed also delivers the messages this process appends. Then the
    /// sequencer acks them but leaves their delivery to the feed. A shared log must say
    /// yes: its offsets are assigned across processes, so the sequencer could get offset
    /// `N` acked while another node's `N-1` is still on its way through the feed, and a
    /// local delivery of `N` first would make the room skip `N-1` (`deliver` ignores
    /// offsets at or below what it delivered). The feed delivers each room in the log's
    /// order instead. The local feed says no: the sequencer is the only source.
    fn delivers_own_appends(&self) -> bool {
        false
    }

    /// Starts delivering `room`'s messages with offsets above `after`, in offset order, to
    /// `delivery`, until the returned handle is dropped. Called once per room load, in the
    /// joining session's task (never in the sequencer).
    fn follow(
        &self,
        room: &str,
        after: Offset,
        delivery: RoomDelivery,
    ) -> BoxFuture<'_, Result<FeedHandle, HubError>>;
}

impl std::fmt::Debug for dyn LiveFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveFeed")
    }
}

/// The single-node feed: follows nothing, because the local sequencer delivers every
/// message it appends.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalFeed;

impl LiveFeed for LocalFeed {
    fn follow(
        &self,
        _room: &str,
        _after: Offset,
        _delivery: RoomDelivery,
    ) -> BoxFuture<'_, Result<FeedHandle, HubError>> {
        Box::pin(std::future::ready(Ok(FeedHandle::none())))
    }
}

//! `Room`: one room's live state — who subscribes, how far the room's total order has been
//! delivered — and room-name validation. Who is present is the [`Presence`]'s (see
//! `presence.rs`); its changes are made under the room's lock, next to their events.
//!
//! The log assigns offsets; a room only delivers what the log reports, through
//! [`Room::deliver`]: under the room's lock it fans a durable message out to every
//! subscriber and advances `delivered`, ignoring any offset at or below `delivered`. The
//! local sequencer calls it right after each append; a cluster's live feed (see
//! `feed.rs`) would call it for messages appended by other nodes. A joining session
//! switches from replay to live under the same lock, reading `delivered` there: it
//! replays `(after, delivered]` from the store, then registers, and everything after that
//! is delivered to it live.
//!
//! **Where live starts for a room made after messages were stored.** A `Room` is created
//! in memory on first use (and dropped when unused), with `delivered = 0`. Before its
//! first join can read `delivered`, [`Room::ensure_loaded`] runs once, in the joiner's
//! task (never in the sequencer's): it reads the log's last offset `L` and, under the
//! lock, sets `delivered = max(delivered, L)`. Why a delivery racing that load makes
//! neither a gap nor a duplicate, for a message at offset `N`:
//!
//! - Every message is durable before it is delivered, so anything at or below
//!   `delivered` can be read from the store by a replay.
//! - No subscriber is registered before the load completes (joins await it; a room whose
//!   load completed never loads again). So whatever `deliver` fans out or skips before
//!   or during the load reaches no one, and nothing is lost by skipping it.
//! - If the load read `L ≥ N` (the append was durable when it read) and set `delivered`
//!   first, `deliver(N)` is ignored: `N ≤ delivered`, so every later joiner replays `N`
//!   from the store. If `deliver(N)` came first, `delivered = N` and `max` keeps it.
//! - If the load read `L < N`, `deliver(N)` finds `N > delivered` whichever ran first and
//!   fans out: a joiner registered by then gets it live, and its replay stopped at a
//!   `delivered` below `N`. A joiner registering later replays it (`N ≤ delivered`).
//! - `delivered` only grows (`max` on load, strictly increasing offsets on deliver), and
//!   a subscriber registers under the lock exactly when its replay cursor reached
//!   `delivered`, so each offset reaches it once: by replay if `≤ delivered` at
//!   registration, live otherwise.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use duplex_store::{Offset, Store, StoredMessage};
use tokio::sync::OnceCell;

use crate::HubError;
use crate::counters::Tally;
use crate::feed::{FeedHandle, LiveFeed, RoomDelivery};
use crate::frames;
use crate::presence::{Presence, PresenceEvents};
use crate::queue::{Frame, LivePush, MessageFrame, SubscriberQueue, coalescing_key};

/// Longest room name, in bytes.
pub(crate) const MAX_ROOM_NAME: usize = 128;

/// Checks a room name: 1–128 bytes of `[A-Za-z0-9._:-]`.
pub fn validate_room_name(name: &str) -> Result<(), HubError> {
    if name.is_empty() || name.len() > MAX_ROOM_NAME {
        return Err(HubError::InvalidArgument(format!(
            "room name must be 1 to {MAX_ROOM_NAME} bytes, got {}",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(HubError::InvalidArgument(format!(
            "room name {name:?} contains {bad:?}: use letters, digits and . _ : -"
        )));
    }
    Ok(())
}

/// A subscriber registered in a room.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) session_id: u64,
    pub(crate) queue: Arc<SubscriberQueue>,
}

#[derive(Debug, Default)]
pub(crate) struct RoomState {
    /// Last offset fanned out (or, after the load, the log's last offset then): everything
    /// up to it is durable; a replay reads up to it, live delivery starts after it.
    pub(crate) delivered: Offset,
    pub(crate) subscribers: Vec<Subscriber>,
}

#[derive(Debug)]
pub(crate) struct Room {
    pub(crate) name: Arc<str>,
    /// Subscribers and the delivered mark; a std mutex, never held across an await (see
    /// the module docs for what it orders). Presence changes are made under it too.
    state: Mutex<RoomState>,
    /// Set once the log's last offset was loaded into `delivered`.
    loaded: OnceCell<()>,
    /// Where live messages appended elsewhere come from; followed from the load on.
    feed: Arc<dyn LiveFeed>,
    /// Who is present; followed from the load on, like the feed.
    presence: Arc<dyn Presence>,
    /// Keeps the room followed by the feed and the presence while the room lives; set by
    /// the load.
    following: OnceLock<(FeedHandle, FeedHandle)>,
}

impl Room {
    /// A room whose messages from elsewhere come from `feed` (the local feed has none)
    /// and whose members are kept by `presence`.
    pub(crate) fn new(name: &str, feed: Arc<dyn LiveFeed>, presence: Arc<dyn Presence>) -> Self {
        Self {
            name: name.into(),
            state: Mutex::new(RoomState::default()),
            loaded: OnceCell::new(),
            feed,
            presence,
            following: OnceLock::new(),
        }
    }

    /// Who is present in the room: its changes are made under [`Room::lock`].
    pub(crate) fn presence(&self) -> &dyn Presence {
        &*self.presence
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loads where live delivery starts (the log's last offset) into `delivered`, once.
    /// Runs in the task of whoever first joins the room, never in the sequencer: a room
    /// coming back into use must not stall every other room's publishes. One cheap read
    /// (no payloads, no ids), then the room's feed follows it from there (see `feed.rs`),
    /// and its presence follows changes made elsewhere (see `presence.rs`).
    /// See the module docs for why racing deliveries are safe.
    pub(crate) async fn ensure_loaded(self: &Arc<Self>, store: &dyn Store) -> Result<(), HubError> {
        self.loaded
            .get_or_try_init(|| async {
                let last = store.last_offset(&self.name).await?;
                {
                    let mut state = self.lock();
                    state.delivered = state.delivered.max(last);
                }
                let messages = self
                    .feed
                    .follow(&self.name, last, RoomDelivery::new(self))
                    .await?;
                let presence = self
                    .presence
                    .follow(&self.name, PresenceEvents::new(self))
                    .await?;
                let _ = self.following.set((messages, presence));
                Ok::<(), HubError>(())
            })
            .await
            .map(|_| ())
    }

    /// Fans out a durable message of this room to its subscribers and advances
    /// `delivered`, encoded once; an offset at or below `delivered` is ignored (it was
    /// delivered, or a load put it in every replay's range). Returns whether it went out.
    pub(crate) fn deliver(&self, message: &StoredMessage) -> bool {
        let frame = Frame::message(MessageFrame {
            bytes: frames::message_frame(message),
            room: self.name.clone(),
            offset: message.offset,
            key: coalescing_key(&message.key),
        });
        let mut state = self.lock();
        if message.offset <= state.delivered {
            return false;
        }
        state.delivered = message.offset;
        Room::broadcast(&mut state, &frame, None);
        true
    }

    /// Sends `frame` to every subscriber but `except`, detaching those that lagged out or
    /// went away.
    pub(crate) fn broadcast(state: &mut RoomState, frame: &Frame, except: Option<u64>) {
        let mut tally = Tally::default();
        state.subscribers.retain(|subscriber| {
            Some(subscriber.session_id) == except
                || subscriber.queue.push_live(frame.clone(), &mut tally) == LivePush::Queued
        });
        // Whoever queued a frame is still subscribed, so there is a queue to count with.
        if let Some(subscriber) = state.subscribers.first() {
            tally.report(subscriber.queue.counters());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::QueueBudgets;
    use crate::config::LagPolicy;
    use duplex_store::{MemoryStore, NewMessage, Retention};

    /// A one-byte message for room `r`, as published.
    fn new_message() -> NewMessage {
        NewMessage {
            room: "r".into(),
            time_unix_micros: 0,
            sender: String::new(),
            content_type: String::new(),
            client_id: String::new(),
            key: String::new(),
            payload: bytes::Bytes::from_static(b"x"),
        }
    }

    /// That message as stored at `offset`.
    fn message(offset: Offset) -> StoredMessage {
        StoredMessage::from_new(new_message(), offset)
    }

    /// `deliver` fans out only offsets past `delivered`, and the load of where live starts
    /// only ever moves `delivered` forward, whichever of the two runs first.
    #[tokio::test]
    async fn deliver_ignores_what_is_at_or_below_delivered() {
        let store = MemoryStore::new(Retention::default());
        let stored = (1..=10).map(|_| new_message()).collect();
        store.append(stored).await.unwrap();

        let room = Arc::new(Room::new(
            "r",
            Arc::new(crate::feed::LocalFeed),
            Arc::new(crate::presence::LocalPresence::new()),
        ));
        // A delivery before the load (offset 11 was appended after the load's read).
        assert!(room.deliver(&message(11)));
        room.ensure_loaded(&store).await.unwrap();
        assert_eq!(room.lock().delivered, 11, "the load never moves it back");

        let fresh = Arc::new(Room::new(
            "r",
            Arc::new(crate::feed::LocalFeed),
            Arc::new(crate::presence::LocalPresence::new()),
        ));
        fresh.ensure_loaded(&store).await.unwrap();
        assert_eq!(fresh.lock().delivered, 10);
        let queue = SubscriberQueue::with_budgets(
            LagPolicy::Disconnect,
            100,
            1 << 20,
            QueueBudgets::default(),
            Arc::default(),
        );
        fresh.lock().subscribers.push(Subscriber {
            session_id: 1,
            queue: queue.clone(),
        });
        assert!(!fresh.deliver(&message(7)), "a replay covers it");
        assert!(!fresh.deliver(&message(10)), "a replay covers it");
        assert_eq!(queue.depth().0, 0);
        assert!(fresh.deliver(&message(11)));
        assert!(!fresh.deliver(&message(11)), "delivered once");
        assert!(fresh.deliver(&message(13)), "offsets need not be dense");
        assert_eq!(queue.depth().0, 2);
        assert_eq!(fresh.lock().delivered, 13);
    }

    #[test]
    fn room_names() {
        assert!(validate_room_name("lobby").is_ok());
        assert!(validate_room_name("game.eu-1:table_7").is_ok());
        assert!(validate_room_name("").is_err());
        assert!(validate_room_name("has space").is_err());
        assert!(validate_room_name("slash/room").is_err());
        assert!(validate_room_name("é").is_err());
        assert!(validate_room_name(&"r".repeat(129)).is_err());
        assert!(validate_room_name(&"r".repeat(128)).is_ok());
    }
}

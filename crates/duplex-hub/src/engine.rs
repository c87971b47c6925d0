//! `Engine`: the state every session and call shares — the room table, the one publish
//! path into the sequencer, the publish rate limit and the registry of live sessions.
//!
//! Publishing has one path: [`Engine::submit`] spends the caller's rate budget, validates
//! the message and queues it for the sequencer (waiting while its bounded queue is full),
//! and hands back a [`PendingAck`]; [`Engine::publish`] also awaits it. Sessions pipeline
//! by holding several pending acks; unary calls await theirs at once. Rights and room
//! names are checked by the callers (`Hub`, `Session`) before they get here, since only
//! they know the caller's [`Identity`](crate::Identity) and session state.
//!
//! Bounds: the room table holds only rooms someone holds (released on last use and swept);
//! the session registry holds weak handles, removed when a session ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use duplex_store::{Offset, Store};
use tokio::sync::{mpsc, oneshot};

use crate::HubError;
use crate::config::HubConfig;
use crate::counters::HubCounters;
use crate::feed::LiveFeed;
use crate::limiter::PublishLimiter;
use crate::presence::Presence;
use crate::queue::SubscriberQueue;
use crate::room::{Room, validate_room_name};

/// Longest client message id and coalescing key, in bytes.
pub(crate) const MAX_ID_LEN: usize = 128;
/// Longest content type, in bytes.
pub(crate) const MAX_CONTENT_TYPE_LEN: usize = 256;

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct PublishInput {
    /// The room to publish to.
    pub room: String,
    /// The name to show as the sender. Through [`Hub::publish`](crate::Hub::publish), the
    /// name the caller asks for (empty: its identity's name; see
    /// [`Identity::name_for_call`](crate::Identity::name_for_call)).
    pub sender: String,
    /// The message body (at least one byte, at most `max_payload`).
    pub payload: Bytes,
    /// The publisher's content type; may be empty.
    pub content_type: String,
    /// The publisher's own message id: a repeat within the dedupe window is acked with
    /// the original's offset and not stored again. Empty: no dedupe.
    pub client_id: String,
    /// Coalescing key for `latest-per-key` subscribers; empty for none.
    pub key: String,
}

/// A durable publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    /// The message's offset in its room.
    pub offset: Offset,
    /// The client id was seen before: `offset` is the original message's.
    pub duplicate: bool,
}

/// One publish in the sequencer's queue: the room (loaded), the message, and where the
/// sequencer sends the outcome once the message is durable (or the append failed).
pub(crate) struct PublishCommand {
    /// The room, held so it stays in the room table until delivered.
    pub(crate) room: Arc<Room>,
    /// What to publish, validated.
    pub(crate) input: PublishInput,
    /// Where the durable outcome goes.
    pub(crate) reply: oneshot::Sender<Result<PublishOutcome, HubError>>,
    /// When it was queued: publish → ack latency counts from here.
    pub(crate) queued_at: std::time::Instant,
}

/// A publish queued for the sequencer: resolves once it is durable (or failed).
#[derive(Debug)]
pub(crate) struct PendingAck(oneshot::Receiver<Result<PublishOutcome, HubError>>);

impl PendingAck {
    /// Waits for the sequencer's answer; UNAVAILABLE if the hub stopped first.
    pub(crate) async fn outcome(self) -> Result<PublishOutcome, HubError> {
        self.0.await.unwrap_or(Err(HubError::ShuttingDown))
    }
}

/// The engine's shared state; see the module docs. Every field is private: sessions and
/// the [`Hub`](crate::Hub) handle go through the methods.
pub(crate) struct Engine {
    /// The log every room's messages are read from (writes go through the sequencer).
    store: Arc<dyn Store>,
    /// Live messages appended elsewhere; every room follows it once loaded.
    feed: Arc<dyn LiveFeed>,
    /// Who is present in each room; every room follows it once loaded.
    presence: Arc<dyn Presence>,
    config: HubConfig,
    /// Rooms someone holds (a session, a publish, a replay), by name.
    rooms: Mutex<HashMap<Arc<str>, Arc<Room>>>,
    /// The sequencer's queue, bounded by `sequencer_queue`.
    sequencer: mpsc::Sender<PublishCommand>,
    /// The publish rate limit per identity; `None` when the rate is unlimited.
    limiter: Option<PublishLimiter>,
    /// Every open session's queue, for shutdown frames, stall sweeps and stats.
    sessions: Mutex<HashMap<u64, Weak<SubscriberQueue>>>,
    next_session: AtomicU64,
    /// The `shutdown` frame the server announced, once it has: sessions opened later get it.
    shutdown_frame: OnceLock<Bytes>,
    /// What the engine counts for operators, shared with the sequencer and every queue.
    counters: Arc<HubCounters>,
}

impl Engine {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        feed: Arc<dyn LiveFeed>,
        presence: Arc<dyn Presence>,
        config: HubConfig,
        sequencer: mpsc::Sender<PublishCommand>,
        counters: Arc<HubCounters>,
    ) -> Self {
        let limiter = config.publish_rate.map(|rate| {
            PublishLimiter::new(rate, config.publish_burst, config.rate_limited_identities)
        });
        Self {
            store,
            feed,
            presence,
            limiter,
            config,
            rooms: Mutex::new(HashMap::new()),
            sequencer,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            shutdown_frame: OnceLock::new(),
            counters,
        }
    }

    /// What the engine counts for operators.
    pub(crate) fn counters(&self) -> &Arc<HubCounters> {
        &self.counters
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Who is present in each room (changes go through a room, under its lock).
    pub(crate) fn presence(&self) -> &dyn Presence {
        &*self.presence
    }

    pub(crate) fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The room named `name`, created on first use.
    pub(crate) fn room(&self, name: &str) -> Result<Arc<Room>, HubError> {
        validate_room_name(name)?;
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(room) = rooms.get(name) {
            return Ok(room.clone());
        }
        let room = Arc::new(Room::new(name, self.feed.clone(), self.presence.clone()));
        rooms.insert(room.name.clone(), room.clone());
        Ok(room)
    }

    /// How many rooms the table holds.
    pub(crate) fn room_count(&self) -> usize {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The one publish path, up to the queue: spends one publish of `quota_key`'s rate
    /// budget (RESOURCE_EXHAUSTED when spent), validates `input`, and queues it for the
    /// sequencer, waiting while its queue is full. The queue keeps submission order, so
    /// one session's publishes keep theirs. The caller has checked the right to write.
    pub(crate) async fn submit(
        &self,
        quota_key: &str,
        room: Arc<Room>,
        input: PublishInput,
    ) -> Result<PendingAck, HubError> {
        if let Some(limiter) = &self.limiter {
            limiter.take(quota_key)?;
        }
        self.validate_publish(&input)?;
        self.enqueue(room, input).await
    }

    /// [`Engine::submit`], then waits until the message is durable.
    pub(crate) async fn publish(
        &self,
        quota_key: &str,
        room: Arc<Room>,
        input: PublishInput,
    ) -> Result<PublishOutcome, HubError> {
        self.submit(quota_key, room, input).await?.outcome().await
    }

    fn validate_publish(&self, input: &PublishInput) -> Result<(), HubError> {
        let max = self.config.max_payload;
        if input.payload.is_empty() {
            return Err(HubError::InvalidArgument(
                "payload is empty: publish at least one byte".into(),
            ));
        }
        if input.payload.len() > max {
            return Err(HubError::ResourceExhausted(format!(
                "payload of {} bytes is over the limit of {max} bytes",
                input.payload.len()
            )));
        }
        for (what, value, limit) in [
            ("client message id", &input.client_id, MAX_ID_LEN),
            ("key", &input.key, MAX_ID_LEN),
            ("content type", &input.content_type, MAX_CONTENT_TYPE_LEN),
        ] {
            if value.len() > limit {
                return Err(HubError::InvalidArgument(format!(
                    "{what} is {} bytes, more than {limit}",
                    value.len()
                )));
            }
        }
        Ok(())
    }

    /// Queues a validated publish for the sequencer, waiting while its queue is full.
    /// Nothing is loaded for the room: the log assigns its offsets (see `room.rs` for where
    /// live delivery starts).
    async fn enqueue(&self, room: Arc<Room>, input: PublishInput) -> Result<PendingAck, HubError> {
        let (reply, ack) = oneshot::channel();
        self.sequencer
            .send(PublishCommand {
                room,
                input,
                reply,
                queued_at: std::time::Instant::now(),
            })
            .await
            .map_err(|_| HubError::ShuttingDown)?;
        Ok(PendingAck(ack))
    }

    /// Drops `name` from the room table once nothing but the table holds it (no session,
    /// publish or replay), so the table does not grow with every room ever named. The next
    /// use loads the room's position from the store again. New handles are only made under
    /// the table's lock, so the count check there cannot race with one being made.
    pub(crate) fn release_room(&self, name: &str) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if rooms
            .get(name)
            .is_some_and(|room| Arc::strong_count(room) == 1)
        {
            rooms.remove(name);
        }
    }

    /// Drops every room only the table holds (catches what `release_room` calls missed:
    /// cancelled calls, replays that ended after their leave).
    pub(crate) fn release_unused_rooms(&self) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.retain(|_, room| Arc::strong_count(room) > 1);
    }

    /// Registers a new session's queue; returns its id.
    pub(crate) fn register_session(&self, queue: &Arc<SubscriberQueue>) -> u64 {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.counters.session_opened();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::downgrade(queue));
        id
    }

    pub(crate) fn forget_session(&self, id: u64) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Sessions registered now (without upgrading each: O(1)).
    pub(crate) fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub(crate) fn live_sessions(&self) -> Vec<Arc<SubscriberQueue>> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.values().filter_map(Weak::upgrade).collect()
    }

    /// Keeps the first `shutdown` frame announced and returns the one kept.
    pub(crate) fn set_shutdown_frame(&self, frame: impl FnOnce() -> Bytes) -> Bytes {
        self.shutdown_frame.get_or_init(frame).clone()
    }

    /// The `shutdown` frame announced, if one was.
    pub(crate) fn shutdown_frame(&self) -> Option<Bytes> {
        self.shutdown_frame.get().cloned()
    }
}

pub(crate) fn now_unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

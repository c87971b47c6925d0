//! `Hub`: the handle to the engine. Owns the room table and the sequencer task.
//!
//! Publishing: every publish — from sessions and from unary calls — goes through one bounded
//! queue to the sequencer task. The sequencer drains what is waiting (up to `max_batch`),
//! dedupes client ids, assigns each room's next offsets, appends the whole batch to the
//! store in one durable commit (group commit: publishers that arrive during a commit share
//! the next one), and only then fans each message out, encoded once, and acks it. So a
//! message is acked and delivered only once it is durable, and each room has one total
//! order. While the store commits, new publishes wait in the queue; a full queue makes
//! submitters wait, which stops the server reading their streams. The sequencer reads
//! nothing from the store: a room's position is loaded before its publish is queued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use duplex_proto::hub::Member;
use duplex_store::{Offset, Store, StoredMessage};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::HubError;
use crate::budget::QueueBudgets;
use crate::config::HubConfig;
use crate::frames;
use crate::limiter::PublishLimiter;
use crate::queue::{Frame, MessageFrame, Outbound, SubscriberQueue, coalescing_key};
use crate::rights::Identity;
use crate::room::{Room, remember_id, validate_room_name};
use crate::session::Session;

/// Longest client message id and coalescing key, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE_LEN: usize = 256;

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct PublishInput {
    pub room: String,
    pub sender: String,
    pub payload: Bytes,
    pub content_type: String,
    pub client_id: String,
    pub key: String,
}

/// A durable publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    pub offset: Offset,
    /// The client id was seen before: `offset` is the original message's.
    pub duplicate: bool,
}

/// One page of a room's history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub messages: Vec<StoredMessage>,
    pub earliest: Offset,
    pub last: Offset,
    /// Where the next page starts (the `after` to ask for): the last offset in this page,
    /// or the `after` asked for when it is empty.
    pub next_after: Offset,
    /// Whether messages exist after `next_after`.
    pub more: bool,
}

/// Who is present in a room: the listed members, and how many more are counted.
#[derive(Debug, Clone, Default)]
pub struct RoomPresence {
    pub members: Vec<Member>,
    pub unlisted: u64,
}

/// Counts for dashboards and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    pub rooms: usize,
    pub sessions: usize,
    /// Frames queued for all sessions, and their bytes.
    pub queued_frames: usize,
    pub queued_bytes: usize,
}

pub(crate) struct PublishCommand {
    pub room: Arc<Room>,
    pub input: PublishInput,
    pub reply: oneshot::Sender<Result<PublishOutcome, HubError>>,
}

pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub config: HubConfig,
    rooms: Mutex<HashMap<Arc<str>, Arc<Room>>>,
    sequencer: mpsc::Sender<PublishCommand>,
    /// The publish rate limit per identity; `None` when the rate is unlimited.
    limiter: Option<PublishLimiter>,
    sessions: Mutex<HashMap<u64, Weak<SubscriberQueue>>>,
    next_session: AtomicU64,
    /// The `shutdown` frame the server announced, once it has: sessions opened later get it.
    shutdown_frame: OnceLock<Bytes>,
}

/// The engine handle. Cheap to clone; the sequencer stops when the last clone is dropped.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("stats", &self.stats()).finish()
    }
}

impl Hub {
    /// Starts a hub over `store`. Spawns the sequencer and the retention sweeper on the
    /// current tokio runtime.
    pub fn new(store: Arc<dyn Store>, config: HubConfig) -> Self {
        let (sequencer, commands) = mpsc::channel(config.sequencer_queue.max(1));
        tokio::spawn(run_sequencer(commands, store.clone(), config.clone()));
        tokio::spawn(sweep_retention(
            Arc::downgrade(&store),
            config.retention_sweep,
        ));
        let limiter = config.publish_rate.map(|rate| {
            PublishLimiter::new(rate, config.publish_burst, config.rate_limited_identities)
        });
        let shared = Arc::new(Shared {
            store,
            limiter,
            config,
            rooms: Mutex::new(HashMap::new()),
            sequencer,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            shutdown_frame: OnceLock::new(),
        });
        tokio::spawn(sweep_rooms(Arc::downgrade(&shared)));
        if let Some(timeout) = shared.config.send_stall_timeout {
            tokio::spawn(sweep_stalled(Arc::downgrade(&shared), timeout));
        }
        Self { shared }
    }

    pub fn config(&self) -> &HubConfig {
        &self.shared.config
    }

    /// Opens a session for `identity` (its name is the sender and the presence name; its
    /// rights are checked on every command; it ends when the identity expires). The
    /// session takes commands; the [`Outbound`] stream carries everything it must send.
    pub fn open_session(&self, identity: Identity) -> (Session, Outbound) {
        self.open_session_within(identity, QueueBudgets::default())
    }

    /// Opens a session whose queue and replay pages are charged to `budgets` (its
    /// connection's and client address's), besides its own queue bound.
    pub fn open_session_within(
        &self,
        identity: Identity,
        budgets: QueueBudgets,
    ) -> (Session, Outbound) {
        let config = &self.shared.config;
        let queue = SubscriberQueue::with_budgets(
            config.lag_policy,
            config.queue_frames,
            config.queue_bytes,
            budgets,
        );
        let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::downgrade(&queue));
        if let Some(frame) = self.shared.shutdown_frame.get() {
            queue.push_control(frame.clone());
        }
        let session = Session::new(self.shared.clone(), id, identity, queue.clone());
        (session, Outbound::new(queue))
    }

    /// Publishes without a session (unary calls) for `identity`, whose publish rate budget
    /// it spends like its sessions do. Returns once the message is durable.
    pub async fn publish_as(
        &self,
        identity: &Identity,
        input: PublishInput,
    ) -> Result<PublishOutcome, HubError> {
        self.shared.check_rate(&identity.quota_key)?;
        self.publish(input).await
    }

    /// Publishes without a session and without any rate limit (tools and tests; calls on
    /// behalf of a client go through [`Hub::publish_as`]). Returns once it is durable.
    pub async fn publish(&self, input: PublishInput) -> Result<PublishOutcome, HubError> {
        let room = self.shared.room(&input.room)?;
        let name = room.name.clone();
        let outcome = self.shared.submit(room, input).await;
        self.shared.release_room(&name);
        outcome
    }

    /// Up to `limit` (capped by config) retained messages of `room` after `after`, and no
    /// more than `max_history_bytes` of them (a first message over that comes alone).
    pub async fn history(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
    ) -> Result<HistoryPage, HubError> {
        validate_room_name(room)?;
        let max = self.shared.config.max_history_page;
        let limit = if limit == 0 { max } else { limit.min(max) };
        let store = &self.shared.store;
        let max_bytes = self.shared.config.max_history_bytes.max(1);
        let messages = store.read_page(room, after, limit, max_bytes).await?;
        let bounds = store.bounds(room).await?;
        let (earliest, last) = match bounds {
            Some(bounds) => (bounds.earliest, bounds.last),
            None => (0, store.last_offset(room).await?),
        };
        let next_after = messages.last().map_or(after, |m| m.offset);
        Ok(HistoryPage {
            messages,
            earliest,
            last,
            next_after,
            // Bounds are read after the page: a publish in between shows as more to read.
            more: bounds.is_some_and(|b| next_after < b.last),
        })
    }

    /// Who is present in `room` now: its listed members (at most `max_presence_listed`)
    /// and the count of the others.
    pub fn presence(&self, room: &str) -> Result<RoomPresence, HubError> {
        validate_room_name(room)?;
        let rooms = self.shared.rooms.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rooms
            .get(room)
            .map(|room| {
                let state = room.lock();
                RoomPresence {
                    members: state.members.clone(),
                    unlisted: state.unlisted_members,
                }
            })
            .unwrap_or_default())
    }

    /// Tells every session the server is going away (a `shutdown` frame), so clients
    /// reconnect elsewhere and resume; sessions opened from now on get the same frame at
    /// once (the first announcement's reason and retry hint stand).
    pub fn announce_shutdown(&self, reason: &str, retry_after_ms: u32) {
        let frame = self
            .shared
            .shutdown_frame
            .get_or_init(|| frames::shutdown(reason, retry_after_ms))
            .clone();
        for queue in self.shared.live_sessions() {
            queue.push_control(frame.clone());
        }
    }

    pub fn stats(&self) -> HubStats {
        let sessions = self.shared.live_sessions();
        let (queued_frames, queued_bytes) = sessions
            .iter()
            .map(|q| q.depth())
            .fold((0, 0), |(f, b), (df, db)| (f + df, b + db));
        HubStats {
            rooms: self
                .shared
                .rooms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
            sessions: sessions.len(),
            queued_frames,
            queued_bytes,
        }
    }
}

impl Shared {
    /// The room named `name`, created on first use.
    pub fn room(&self, name: &str) -> Result<Arc<Room>, HubError> {
        validate_room_name(name)?;
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(room) = rooms.get(name) {
            return Ok(room.clone());
        }
        let room = Arc::new(Room::new(name));
        rooms.insert(room.name.clone(), room.clone());
        Ok(room)
    }

    /// Spends one publish of `quota_key`'s rate budget, or RESOURCE_EXHAUSTED.
    pub fn check_rate(&self, quota_key: &str) -> Result<(), HubError> {
        match &self.limiter {
            Some(limiter) => limiter.take(quota_key),
            None => Ok(()),
        }
    }

    pub fn validate_publish(&self, input: &PublishInput) -> Result<(), HubError> {
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

    /// Validates and queues a publish for the sequencer, then waits for its durable ack.
    pub async fn submit(
        &self,
        room: Arc<Room>,
        input: PublishInput,
    ) -> Result<PublishOutcome, HubError> {
        self.validate_publish(&input)?;
        let ack = self.enqueue(room, input).await?;
        ack.await.map_err(|_| HubError::ShuttingDown)?
    }

    /// Queues a validated publish for the sequencer, waiting while its queue is full. The
    /// queue keeps submission order, so one session's publishes keep theirs.
    ///
    /// A room not loaded yet (a unary publish into a room nobody holds) is loaded here, in
    /// the caller's task, so the sequencer never reads the store.
    pub async fn enqueue(
        &self,
        room: Arc<Room>,
        input: PublishInput,
    ) -> Result<oneshot::Receiver<Result<PublishOutcome, HubError>>, HubError> {
        room.ensure_loaded(&*self.store, self.config.dedupe_window)
            .await?;
        let (reply, ack) = oneshot::channel();
        self.sequencer
            .send(PublishCommand { room, input, reply })
            .await
            .map_err(|_| HubError::ShuttingDown)?;
        Ok(ack)
    }

    /// Drops `name` from the room table once nothing but the table holds it (no session,
    /// publish or replay), so the table does not grow with every room ever named. The next
    /// use loads the room's position from the store again. New handles are only made under
    /// the table's lock, so the count check there cannot race with one being made.
    pub fn release_room(&self, name: &str) {
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
    fn release_unused_rooms(&self) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.retain(|_, room| Arc::strong_count(room) > 1);
    }

    pub fn forget_session(&self, id: u64) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn live_sessions(&self) -> Vec<Arc<SubscriberQueue>> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.values().filter_map(Weak::upgrade).collect()
    }
}

pub(crate) fn now_unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A publish that got an offset and waits for its batch to be durable.
struct Accepted {
    command: PublishCommand,
    offset: Offset,
    frame: Bytes,
}

async fn run_sequencer(
    mut commands: mpsc::Receiver<PublishCommand>,
    store: Arc<dyn Store>,
    config: HubConfig,
) {
    let mut batch = Vec::with_capacity(config.max_batch);
    while commands
        .recv_many(&mut batch, config.max_batch.max(1))
        .await
        > 0
    {
        commit_batch(&mut batch, &*store, &config).await;
    }
    debug!("sequencer stopped");
}

async fn commit_batch(batch: &mut Vec<PublishCommand>, store: &dyn Store, config: &HubConfig) {
    let now = now_unix_micros();
    let mut accepted = Vec::with_capacity(batch.len());
    let mut records = Vec::with_capacity(batch.len());
    // Repeated client ids are acked with their original offset, but only after this batch
    // is durable: the original may be in it.
    let mut duplicates = Vec::new();
    for command in batch.drain(..) {
        // `enqueue` loads every room before queueing: no store read runs here, where it
        // would hold up every room's publishes.
        if !command.room.is_loaded() {
            let error = HubError::Store(format!(
                "room {} was queued before its position was loaded",
                command.room.name
            ));
            let _ = command.reply.send(Err(error));
            continue;
        }
        let offset = {
            let mut state = command.room.lock();
            let id = &command.input.client_id;
            if let Some(&original) = (!id.is_empty()).then(|| state.recent_ids.get(id)).flatten() {
                duplicates.push((command.reply, original));
                continue;
            }
            let offset = state.next_offset;
            state.next_offset += 1;
            if !id.is_empty() {
                remember_id(&mut state, id.clone(), offset, config.dedupe_window);
            }
            offset
        };
        let input = &command.input;
        let record = StoredMessage {
            room: input.room.clone(),
            offset,
            time_unix_micros: now,
            sender: input.sender.clone(),
            content_type: input.content_type.clone(),
            client_id: input.client_id.clone(),
            key: input.key.clone(),
            payload: input.payload.clone(),
        };
        let frame = frames::message_frame(&record);
        records.push(record);
        accepted.push(Accepted {
            command,
            offset,
            frame,
        });
    }
    let appended = if records.is_empty() {
        Ok(())
    } else {
        store.append(records).await
    };
    match &appended {
        Ok(()) => {
            for Accepted {
                command,
                offset,
                frame,
            } in accepted
            {
                let PublishCommand { room, input, reply } = command;
                let queued = Frame::message(MessageFrame {
                    bytes: frame,
                    room: room.name.clone(),
                    offset,
                    key: coalescing_key(&input.key),
                });
                {
                    let mut state = room.lock();
                    state.delivered = offset;
                    Room::broadcast(&mut state, &queued, None);
                }
                // Let go of the room before waking the publisher, so its release of the
                // room finds nobody else holding it.
                drop(room);
                let _ = reply.send(Ok(PublishOutcome {
                    offset,
                    duplicate: false,
                }));
            }
        }
        Err(error) => {
            warn!(%error, messages = accepted.len(), "append failed; publishes get UNAVAILABLE");
            // Nothing of the batch is stored: give the offsets and client ids back, newest
            // first, so each room's next offset ends at its first one from this batch.
            for Accepted {
                command, offset, ..
            } in accepted.into_iter().rev()
            {
                let mut state = command.room.lock();
                state.next_offset = offset;
                if state.recent_ids.get(&command.input.client_id) == Some(&offset) {
                    state.recent_ids.remove(&command.input.client_id);
                    state
                        .recent_order
                        .retain(|id| id != &command.input.client_id);
                }
                drop(state);
                let PublishCommand { room, reply, .. } = command;
                drop(room);
                let _ = reply.send(Err(HubError::from(error.clone())));
            }
        }
    }
    // Repeats are answered last: their original is durable and, if it was in this batch,
    // fanned out by now, so a client that resumes after the acked offset finds it.
    for (reply, offset) in duplicates {
        let _ = reply.send(match &appended {
            Ok(()) => Ok(PublishOutcome {
                offset,
                duplicate: true,
            }),
            Err(error) => Err(HubError::from(error.clone())),
        });
    }
}

/// How often rooms nobody holds are dropped from the table.
const ROOM_SWEEP: std::time::Duration = std::time::Duration::from_secs(10);

async fn sweep_rooms(shared: Weak<Shared>) {
    let mut ticker = tokio::time::interval(ROOM_SWEEP);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match shared.upgrade() {
            Some(shared) => shared.release_unused_rooms(),
            None => return,
        }
    }
}

/// Ends every stream whose client stopped reading for `timeout` (see
/// [`SubscriberQueue::end_if_stalled`]). Checks four times per timeout (at most once a
/// second, at least every 10 ms), so a stall ends within 1¼ timeouts.
async fn sweep_stalled(shared: Weak<Shared>, timeout: std::time::Duration) {
    let every = (timeout / 4).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    );
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = std::time::Instant::now();
        for queue in shared.live_sessions() {
            if queue.end_if_stalled(now, timeout) {
                debug!(?timeout, "stream ended: the client read nothing");
            }
        }
    }
}

async fn sweep_retention(store: Weak<dyn Store>, every: std::time::Duration) {
    let mut ticker = tokio::time::interval(every.max(std::time::Duration::from_millis(10)));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        match store.enforce_retention(now_unix_micros()).await {
            Ok(0) => {}
            Ok(removed) => debug!(removed, "retention removed old messages"),
            Err(error) => warn!(%error, "retention sweep failed"),
        }
    }
}

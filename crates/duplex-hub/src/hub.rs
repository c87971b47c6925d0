//! `Hub`: the handle to the engine — the calls a transport makes for a caller, each taking
//! its `Identity` and checking rights and the room name — and the sequencer task. The
//! shared state (room table, publish path, sessions) is `engine.rs`'s `Engine`.
//!
//! Publishing: every publish — from sessions and from unary calls — is checked and
//! validated by the engine and queued for the sequencer task (`sequencer.rs`), which
//! appends batches to the log (the log assigns offsets and dedupes) and then delivers and
//! acks them. While the store commits, new publishes wait in the queue; a full queue makes
//! submitters wait, which stops the server reading their streams.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use duplex_proto::hub::{Join, Member};
use duplex_store::{Offset, Store, StoredMessage};
use futures::stream;
use tokio::sync::mpsc;
use tracing::{Instrument as _, debug, warn};

use crate::HubError;
use crate::budget::QueueBudgets;
use crate::config::HubConfig;
use crate::counters::HubCounters;
use crate::engine::Engine;
pub(crate) use crate::engine::now_unix_micros;
use crate::engine::{PublishInput, PublishOutcome};
use crate::feed::{LiveFeed, LocalFeed};
use crate::frames;
use crate::presence::{LocalPresence, Presence};
use crate::queue::{Outbound, SubscriberQueue};
use crate::rights::Identity;
use crate::room::validate_room_name;
use crate::sequencer::run_sequencer;
use crate::session::Session;

/// One page of a room's history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The messages, in offset order.
    pub messages: Vec<StoredMessage>,
    /// The room's earliest retained offset (0 when it retains none).
    pub earliest: Offset,
    /// The room's newest offset.
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
    /// The listed members, at most `max_presence_listed`, in join order.
    pub members: Vec<Member>,
    /// Visible members present beyond the list.
    pub unlisted: u64,
}

/// Counts for dashboards and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Rooms in the room table (someone holds them).
    pub rooms: usize,
    /// Open sessions, server-streaming subscriptions included.
    pub sessions: usize,
    /// Frames queued for all sessions.
    pub queued_frames: usize,
    /// The bytes of those frames.
    pub queued_bytes: usize,
}

/// What the transport knows about where a session comes from.
#[derive(Debug, Clone, Default)]
pub struct SessionOrigin {
    /// The byte budgets of its connection and client address, which its queue and replay
    /// pages are charged to besides its own queue bound.
    pub budgets: QueueBudgets,
    /// The client's address, shown on every log line of the session.
    pub peer: Option<SocketAddr>,
}

/// A server-streaming subscription: one room, live, optionally resumed.
#[derive(Debug, Clone, Default)]
pub struct Subscription {
    /// The room to follow; the caller needs the right to read it.
    pub room: String,
    /// Resume after this offset (replay, then live); `None`: live from now.
    pub after: Option<Offset>,
    /// The presence name the caller asks for; empty subscribes hidden. A verified identity
    /// shows as itself whatever it asks (see [`Identity::name_for_call`]).
    pub name: String,
}

/// The engine handle. Cheap to clone; the sequencer stops when the last clone is dropped.
///
/// Every method that acts for a caller takes its [`Identity`] and checks its rights and
/// the room name itself, so a transport cannot forget a check.
#[derive(Clone)]
pub struct Hub {
    engine: Arc<Engine>,
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
        Self::with_feed(store, Arc::new(LocalFeed), config)
    }

    /// Starts a hub over `store` whose rooms also deliver what `feed` reports: messages
    /// other processes appended to a shared log (see [`LiveFeed`]).
    pub fn with_feed(store: Arc<dyn Store>, feed: Arc<dyn LiveFeed>, config: HubConfig) -> Self {
        Self::with_seams(store, feed, Arc::new(LocalPresence::new()), config)
    }

    /// Starts a hub over `store` whose rooms also deliver what `feed` reports and whose
    /// members are kept by `presence` (see [`Presence`]): what a cluster plugs in.
    pub fn with_seams(
        store: Arc<dyn Store>,
        feed: Arc<dyn LiveFeed>,
        presence: Arc<dyn Presence>,
        config: HubConfig,
    ) -> Self {
        let (sequencer, commands) = mpsc::channel(config.sequencer_queue.max(1));
        let counters = Arc::new(HubCounters::default());
        tokio::spawn(run_sequencer(
            commands,
            store.clone(),
            !feed.delivers_own_appends(),
            config.clone(),
            counters.clone(),
        ));
        tokio::spawn(sweep_retention(
            Arc::downgrade(&store),
            config.retention_sweep,
        ));
        let stall_timeout = config.send_stall_timeout;
        let engine = Arc::new(Engine::new(
            store, feed, presence, config, sequencer, counters,
        ));
        tokio::spawn(sweep_rooms(Arc::downgrade(&engine)));
        if let Some(timeout) = stall_timeout {
            tokio::spawn(sweep_stalled(Arc::downgrade(&engine), timeout));
        }
        Self { engine }
    }

    /// Opens a session for `identity` (its name is the sender and the presence name; its
    /// rights are checked on every command; it ends when the identity expires). The
    /// session takes commands; the [`Outbound`] stream carries everything it must send.
    pub fn open_session(&self, identity: Identity) -> (Session, Outbound) {
        self.open_session_from(identity, SessionOrigin::default())
    }

    /// Opens a session coming from `origin`: its queue and replay pages are charged to
    /// the origin's budgets, and its log lines carry the peer address.
    pub fn open_session_from(
        &self,
        identity: Identity,
        origin: SessionOrigin,
    ) -> (Session, Outbound) {
        let config = self.engine.config();
        let queue = SubscriberQueue::with_budgets(
            config.lag_policy,
            config.queue_frames,
            config.queue_bytes,
            origin.budgets,
            self.engine.counters().clone(),
        );
        let id = self.engine.register_session(&queue);
        if let Some(frame) = self.engine.shutdown_frame() {
            queue.push_control(frame);
        }
        let session = Session::new(
            self.engine.clone(),
            id,
            identity,
            origin.peer,
            queue.clone(),
        );
        (session, Outbound::new(queue))
    }

    /// Subscribes `identity` to one room for a client that cannot send (server-streaming
    /// `Subscribe`): checks the name and the right to read, joins (replaying after
    /// `subscription.after` first), and runs the session until the client goes away.
    /// A join that fails (resume older than retention, …) fails the call itself.
    pub async fn subscribe(
        &self,
        mut identity: Identity,
        subscription: Subscription,
        origin: SessionOrigin,
    ) -> Result<Outbound, HubError> {
        validate_room_name(&subscription.room)?;
        identity.rights.check_read(&subscription.room)?;
        let hidden = subscription.name.is_empty();
        if !hidden {
            identity.name = identity.name_for_call(&subscription.name)?;
        }
        let (mut session, outbound) = self.open_session_from(identity, origin);
        let join = Join {
            room: subscription.room,
            after_offset: subscription.after,
            hidden,
            replay_last: 0,
        };
        let span = session.span().clone();
        let replay = session.join(0, join).instrument(span).await?;
        // The session then lives until the client goes away.
        tokio::spawn(session.drive_listener(stream::pending(), replay));
        Ok(outbound)
    }

    /// Publishes for `identity` (unary calls): checks the room name and the right to
    /// write, names the sender (`input.sender` is what the caller asks for; see
    /// [`Identity::name_for_call`]), spends the identity's publish rate budget like its
    /// sessions do, and returns once the message is durable.
    pub async fn publish(
        &self,
        identity: &Identity,
        mut input: PublishInput,
    ) -> Result<PublishOutcome, HubError> {
        validate_room_name(&input.room)?;
        identity.rights.check_write(&input.room)?;
        input.sender = identity.name_for_call(&input.sender)?;
        let room = self.engine.room(&input.room)?;
        let name = room.name.clone();
        let outcome = self.engine.publish(&identity.quota_key, room, input).await;
        self.engine.release_room(&name);
        outcome
    }

    /// Up to `limit` (capped by config) retained messages of `room` after `after`, and no
    /// more than `max_history_bytes` of them (a first message over that comes alone), if
    /// `identity` may read `room`.
    pub async fn history(
        &self,
        identity: &Identity,
        room: &str,
        after: Offset,
        limit: usize,
    ) -> Result<HistoryPage, HubError> {
        validate_room_name(room)?;
        identity.rights.check_read(room)?;
        let config = self.engine.config();
        let max = config.max_history_page;
        let limit = if limit == 0 { max } else { limit.min(max) };
        let store = self.engine.store();
        let max_bytes = config.max_history_bytes.max(1);
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

    /// Who is present in `room` now, if `identity` may read it: its listed members (at
    /// most `max_presence_listed`) and the count of the others.
    pub async fn presence(
        &self,
        identity: &Identity,
        room: &str,
    ) -> Result<RoomPresence, HubError> {
        validate_room_name(room)?;
        identity.rights.check_read(room)?;
        // Loaded here, the room follows its presence (a cluster's returns once the members
        // are known), so a node where nobody joined the room still lists who is in it
        // elsewhere; the room table lets go of it after the call, like any unused room.
        let room = self.engine.room(room)?;
        room.ensure_loaded(&**self.engine.store()).await?;
        Ok(self.engine.presence().members(&room.name))
    }

    /// Tells every session the server is going away (a `shutdown` frame), so clients
    /// reconnect elsewhere and resume; sessions opened from now on get the same frame at
    /// once (the first announcement's reason and retry hint stand).
    pub fn announce_shutdown(&self, reason: &str, retry_after_ms: u32) {
        let frame = self
            .engine
            .set_shutdown_frame(|| frames::shutdown(reason, retry_after_ms));
        for queue in self.engine.live_sessions() {
            queue.push_control(frame.clone());
        }
    }

    /// Tells every session that publishing fails for now, and why: a `CommandError` that
    /// answers no command (`command_id` 0) with code UNAVAILABLE. Sessions stay open; each
    /// publish fails the same way until the log is back. What a cluster node sends when it
    /// loses NATS.
    pub fn announce_unavailable(&self, reason: &str) {
        let frame = frames::error(0, "", &HubError::Store(reason.to_owned()));
        for queue in self.engine.live_sessions() {
            queue.push_control(frame.clone());
        }
    }

    /// Rooms, sessions and what is queued for them now: gauges kept up to date as frames
    /// are queued and sent, and the lengths of the room and session tables (no scan).
    pub fn stats(&self) -> HubStats {
        let counters = self.engine.counters();
        HubStats {
            rooms: self.engine.room_count(),
            sessions: self.engine.session_count(),
            queued_frames: usize::try_from(counters.queued_frames()).unwrap_or(0),
            queued_bytes: usize::try_from(counters.queued_bytes()).unwrap_or(0),
        }
    }

    /// What the engine counts (publishes, acks, fan-out, queues, lag, resumes), for
    /// exporters.
    pub fn counters(&self) -> &Arc<HubCounters> {
        self.engine.counters()
    }

    /// What the store counts (fsync latency, failures, availability), if it counts.
    pub fn store_counters(&self) -> Option<&duplex_store::StoreCounters> {
        self.engine.store().counters()
    }
}

/// How often rooms nobody holds are dropped from the table.
const ROOM_SWEEP: std::time::Duration = std::time::Duration::from_secs(10);

async fn sweep_rooms(engine: Weak<Engine>) {
    let mut ticker = tokio::time::interval(ROOM_SWEEP);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match engine.upgrade() {
            Some(engine) => engine.release_unused_rooms(),
            None => return,
        }
    }
}

/// Ends every stream whose client stopped reading for `timeout` (see
/// [`SubscriberQueue::end_if_stalled`]). Checks four times per timeout (at most once a
/// second, at least every 10 ms), so a stall ends within 1½ timeouts: the wait counts from
/// the first check that sees it.
async fn sweep_stalled(engine: Weak<Engine>, timeout: std::time::Duration) {
    let every = (timeout / 4).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    );
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let now = std::time::Instant::now();
        for queue in engine.live_sessions() {
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

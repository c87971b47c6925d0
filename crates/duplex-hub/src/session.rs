//! `Session`: one client's commands — join (with resume), leave, publish, ping — and the
//! driver that reads a session's inbound frames and keeps its outbound queue fed.
//!
//! One task per session runs [`Session::drive`]; it never spawns per message. Publishes go
//! through the engine's one publish path (`Engine::submit`) and are pipelined up to
//! `publish_window` waiting for durability; beyond that the driver stops reading the
//! inbound stream, so HTTP/2 flow control pushes back on the publisher. A resume replays
//! history in pages paced by the client, then switches to live (`resume.rs`); the
//! session's deadlines share one timer (`deadlines.rs`). Everything the session does runs
//! inside its tracing span (session id, name, peer address).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use duplex_proto::hub::client_frame::Command;
use duplex_proto::hub::{ClientFrame, Join, Member, Publish};
use duplex_store::{Offset, Store};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt as _};
use tracing::{Instrument as _, info};

use crate::HubError;
use crate::deadlines::{Deadlines, Due};
use crate::engine::{Engine, PublishInput, now_unix_micros};
use crate::frames;
use crate::presence::Listing;
use crate::queue::{Frame, SubscriberQueue};
use crate::resume::{Page, PresenceSeen, check_resume, replay_then_live};
use crate::rights::{Identity, Rights};
use crate::room::{Room, Subscriber, validate_room_name};

struct JoinedRoom {
    room: Arc<Room>,
    /// Set on leave, so a replay still running stops and never registers.
    cancelled: Arc<AtomicBool>,
    /// How the session shows in the room's presence (`None`: joined hidden, not at all),
    /// so leaving undoes just that.
    presence: Option<Listing>,
}

/// One client session. Dropping it leaves every room it joined.
pub struct Session {
    engine: Arc<Engine>,
    id: u64,
    member: Member,
    rights: Rights,
    /// When the session's credentials expire; it ends with UNAUTHENTICATED then.
    expires_at: Option<SystemTime>,
    /// When to tell the client its connection is about to be rotated (max age).
    rotate_at: Option<tokio::time::Instant>,
    queue: Arc<SubscriberQueue>,
    /// Looked up per publish; at most `max_rooms_per_session` entries, so a fast hash.
    joined: HashMap<Arc<str>, JoinedRoom, foldhash::fast::RandomState>,
    /// Whose publish budget this session spends (shared with the identity's other
    /// sessions and unary calls; see `limiter.rs`).
    quota_key: String,
    /// The session's tracing span (id, name, peer): every log line of the session carries
    /// it, since its driver runs inside it. Enabled with `debug` logging for `duplex_hub`.
    span: tracing::Span,
    /// The session's `session ended` line, logged when the session is dropped.
    end: EndLine,
}

/// A session's `session ended` info line, logged once, when the session is dropped, with
/// its id, peer, age and why it ended. The driver sets the reason where it returns; a
/// session dropped before that was stopped by the server (the end of the shutdown grace,
/// a `Subscribe` whose join failed).
struct EndLine {
    /// The session's id, as in its `session started` line.
    id: u64,
    /// The client's address, when the transport knows it.
    peer: Option<SocketAddr>,
    /// When the session opened.
    started: std::time::Instant,
    /// Why it ended: a fixed phrase, so log queries can match it.
    reason: &'static str,
    /// The inbound stream's error, when that is the reason (a status, never a payload).
    error: Option<String>,
}

impl Drop for EndLine {
    fn drop(&mut self) {
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        info!(
            session = self.id,
            peer = self.peer.map(tracing::field::display),
            duration_ms,
            reason = self.reason,
            error = self.error.as_deref(),
            "session ended"
        );
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("name", &self.member.name)
            .field("rooms", &self.joined.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Session {
    pub(crate) fn new(
        engine: Arc<Engine>,
        id: u64,
        identity: Identity,
        peer: Option<SocketAddr>,
        queue: Arc<SubscriberQueue>,
    ) -> Self {
        // At debug level, where the session's own lines are: with the default `info`
        // filter the span is disabled and costs nothing. Enabled, it costs about 1 KiB per
        // session in the fmt subscriber's registry, +8% RSS per idle session (`duplex
        // bench idle`, 5000 sessions), which the default should not pay.
        let span = tracing::debug_span!(
            "session",
            session = id,
            name = %identity.name,
            peer = tracing::field::Empty,
        );
        if let Some(peer) = peer {
            span.record("peer", tracing::field::display(peer));
        }
        // Once per session (never per message), at info: sessions are what an operator
        // counts and looks for. The name is a token's subject or a chosen name, not a secret.
        info!(
            session = id,
            peer = peer.map(tracing::field::display),
            name = %identity.name,
            "session started"
        );
        Self {
            span,
            end: EndLine {
                id,
                peer,
                started: std::time::Instant::now(),
                reason: "stopped by the server",
                error: None,
            },
            id,
            member: Member {
                name: identity.name,
                session_id: format!("s{id}"),
            },
            rights: identity.rights,
            expires_at: identity.expires_at,
            rotate_at: None,
            quota_key: identity.quota_key,
            queue,
            joined: HashMap::default(),
            engine,
        }
    }

    /// The session's tracing span.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Sends the client a `shutdown` frame at `at` (its connection reaches its maximum age
    /// soon after), so it reconnects and resumes before the connection is closed.
    pub fn rotate_at(&mut self, at: tokio::time::Instant) {
        self.rotate_at = Some(at);
    }

    /// Reads commands from `inbound` until it ends (then finishes the outbound stream OK
    /// once every pending publish is acked), fails (the outbound stream fails with that
    /// error), or the client goes away.
    ///
    /// A session that sends nothing for the configured idle timeout is ended with
    /// DEADLINE_EXCEEDED (clients ping to stay).
    pub fn drive<S>(self, inbound: S) -> impl Future<Output = ()> + Send
    where
        S: Stream<Item = Result<ClientFrame, HubError>> + Unpin + Send,
    {
        let idle_timeout = self.engine.config().idle_timeout;
        let span = self.span.clone();
        self.run(inbound, None, idle_timeout).instrument(span)
    }

    /// Drives a session whose client cannot send (server-streaming `Subscribe`), with the
    /// replay of the join made before it was handed over. No idle timeout applies.
    pub(crate) fn drive_listener<S>(
        self,
        inbound: S,
        started: Option<BoxFuture<'static, ()>>,
    ) -> impl Future<Output = ()> + Send
    where
        S: Stream<Item = Result<ClientFrame, HubError>> + Unpin + Send,
    {
        let span = self.span.clone();
        self.run(inbound, started, None).instrument(span)
    }

    // Not `async fn drive` calling this: the wrapper's future would hold `self` and the
    // stream a second time, in every session's task.
    async fn run<S>(
        mut self,
        mut inbound: S,
        started: Option<BoxFuture<'static, ()>>,
        idle_timeout: Option<Duration>,
    ) where
        S: Stream<Item = Result<ClientFrame, HubError>> + Unpin,
    {
        let window = self.engine.config().publish_window.max(1);
        let mut pending: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
        pending.extend(started);
        let mut inbound_open = true;
        let mut deadlines = Deadlines::new(self.expires_at, self.rotate_at, idle_timeout);
        // One timer for every deadline, armed for the nearest; it sits in every idle
        // session's task, so there is one, and a frame only moves the idle deadline
        // without touching the timer (a timer that fires early is armed again).
        let timer = tokio::time::sleep_until(deadlines.next(inbound_open));
        tokio::pin!(timer);
        loop {
            if !inbound_open && pending.is_empty() {
                self.end.reason = "client closed its side";
                self.queue.finish(None);
                return;
            }
            tokio::select! {
                frame = inbound.next(), if inbound_open && pending.len() < window => match frame {
                    None => inbound_open = false,
                    Some(Ok(frame)) => {
                        deadlines.active();
                        // Boxed: a command's future is large (join, replay, publish) and
                        // would otherwise sit in every idle session's task.
                        if let Some(task) = Box::pin(self.handle(frame)).await {
                            pending.push(task);
                        }
                    }
                    Some(Err(error)) => {
                        self.end.reason = "inbound stream failed";
                        self.end.error = Some(error.to_string());
                        self.queue.finish(Some(error));
                        return;
                    }
                },
                Some(()) = pending.next(), if !pending.is_empty() => {}
                () = self.queue.closed() => {
                    self.end.reason = "client went away or fell behind";
                    return;
                }
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    match deadlines.due(now, inbound_open) {
                        Some(Due::Expiry) => {
                            let error = HubError::Unauthenticated(
                                "token expired: reconnect with a fresh token and resume".into(),
                            );
                            self.end.reason = "token expired";
                            self.queue.finish(Some(error));
                            return;
                        }
                        Some(Due::Idle(timeout)) => {
                            self.end.reason = "idle";
                            self.queue.finish(Some(HubError::IdleTimeout(timeout)));
                            return;
                        }
                        Some(Due::Rotation) => self.queue.push_control(frames::shutdown(
                            "connection reached its maximum age: reconnect and resume",
                            0,
                        )),
                        None => {}
                    }
                    timer.as_mut().reset(deadlines.next(inbound_open));
                }
            }
        }
    }

    /// Carries out one command. Returns work that continues in the background of the
    /// session (a publish waiting for its ack, a replay).
    pub async fn handle(&mut self, frame: ClientFrame) -> Option<BoxFuture<'static, ()>> {
        let command_id = frame.command_id;
        let Some(command) = frame.command else {
            let error = HubError::InvalidArgument("frame carries no command".into());
            self.reply(frames::error(command_id, "", &error)).await;
            return None;
        };
        match command {
            Command::Join(join) => {
                let room = join.room.clone();
                match self.join(command_id, join).await {
                    Ok(replay) => replay,
                    Err(error) => {
                        self.engine.release_room(&room);
                        self.reply(frames::error(command_id, &room, &error)).await;
                        None
                    }
                }
            }
            Command::Leave(leave) => {
                let reply = match self.leave(&leave.room) {
                    Ok(()) => frames::left(command_id, &leave.room),
                    Err(error) => frames::error(command_id, &leave.room, &error),
                };
                self.reply(reply).await;
                None
            }
            Command::Publish(publish) => match self.publish(command_id, publish).await {
                Ok(task) => Some(task),
                Err((room, error)) => {
                    self.reply(frames::error(command_id, &room, &error)).await;
                    None
                }
            },
            Command::Ping(ping) => {
                let pong = duplex_proto::hub::Pong {
                    command_id,
                    client_time_unix_micros: ping.client_time_unix_micros,
                    server_time_unix_micros: now_unix_micros(),
                };
                self.reply(frames::encode(
                    duplex_proto::hub::server_frame::Frame::Pong(pong),
                ))
                .await;
                None
            }
        }
    }

    async fn reply(&self, bytes: bytes::Bytes) {
        // Fails only when the client is gone or lagged out; the driver notices that.
        let _ = self.queue.push_reliable(Frame::own(bytes)).await;
    }

    /// Joins a room: sends `joined`, announces presence, and returns the replay to run when
    /// a resume offset was given (live delivery starts when it ends).
    pub async fn join(
        &mut self,
        command_id: u64,
        join: Join,
    ) -> Result<Option<BoxFuture<'static, ()>>, HubError> {
        validate_room_name(&join.room)?;
        self.rights.check_read(&join.room)?;
        let room = self.engine.room(&join.room)?;
        if self.joined.contains_key(join.room.as_str()) {
            return Err(HubError::AlreadyJoined(join.room));
        }
        let config = self.engine.config();
        let max = config.max_rooms_per_session;
        if self.joined.len() >= max {
            return Err(HubError::ResourceExhausted(format!(
                "a session may join at most {max} rooms"
            )));
        }
        let store = self.engine.store().clone();
        room.ensure_loaded(&*store).await?;
        let bounds = store.bounds(&room.name).await?;
        let mut last = room.lock().delivered;
        if let Some(after) = join.after_offset
            && after > last
        {
            last = wait_for_delivery(&room, &*store, after).await?;
        }
        let earliest = bounds.map_or(0, |b| b.earliest);
        let after = match (join.after_offset, join.replay_last) {
            (Some(after), _) => {
                check_resume(
                    &room.name,
                    after,
                    bounds.map(|b| b.earliest),
                    last,
                    store.offsets_are_dense(),
                )?;
                self.engine.counters().resumed();
                Some(after)
            }
            (None, 0) => None,
            // The latest `n` retained: never before the earliest one still there.
            (None, n) => Some(
                last.saturating_sub(n.into())
                    .max(earliest.saturating_sub(1)),
            ),
        };

        let max_listed = config.max_presence_listed;
        // Under the room lock: the list the joiner gets is the presence just before its
        // join, and the event goes out in the same critical section (see `presence.rs`).
        let (before, presence) = {
            let mut state = room.lock();
            let before = room.presence().members(&room.name);
            let presence = if join.hidden {
                None
            } else {
                let listing = room.presence().join(&room.name, &self.member, max_listed);
                if listing == Listing::Listed {
                    let event = Frame::own(frames::presence(&room.name, self.member.clone(), true));
                    Room::broadcast(&mut state, &event, Some(self.id));
                }
                Some(listing)
            };
            (before, presence)
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        self.joined.insert(
            room.name.clone(),
            JoinedRoom {
                room: room.clone(),
                cancelled: cancelled.clone(),
                presence,
            },
        );
        // Kept until the switch to live, which announces what changed since (`resume.rs`).
        let seen = PresenceSeen {
            members: before.members.clone(),
            own_session: self.member.session_id.clone(),
        };
        self.reply(frames::joined(
            command_id,
            &room.name,
            earliest,
            last,
            before.members,
            before.unlisted,
        ))
        .await;

        let subscriber = Subscriber {
            session_id: self.id,
            queue: self.queue.clone(),
        };
        // A live join goes through the same switch as a resume, from the `last_offset` it
        // announced: whatever was fanned out while `joined` waited for room in the queue
        // is replayed from the store instead of missed.
        let page = Page {
            messages: config.replay_page.max(1),
            bytes: config.replay_page_bytes.max(1),
        };
        Ok(Some(Box::pin(replay_then_live(
            store,
            room,
            subscriber,
            cancelled,
            after.unwrap_or(last),
            page,
            seen,
        ))))
    }

    /// Leaves a room: no more of its messages, and presence says so.
    pub fn leave(&mut self, room: &str) -> Result<(), HubError> {
        let joined = self
            .joined
            .remove(room)
            .ok_or_else(|| HubError::NotJoined(room.to_owned()))?;
        self.detach(&joined);
        drop(joined);
        self.queue.forget_room(room);
        self.engine.release_room(room);
        Ok(())
    }

    fn detach(&self, joined: &JoinedRoom) {
        joined.cancelled.store(true, Ordering::Relaxed);
        let mut state = joined.room.lock();
        state.subscribers.retain(|s| s.session_id != self.id);
        let Some(listing) = joined.presence else {
            return;
        };
        let room = &joined.room;
        if room.presence().leave(&room.name, &self.member, listing) {
            let event = Frame::own(frames::presence(&room.name, self.member.clone(), false));
            Room::broadcast(&mut state, &event, Some(self.id));
        }
    }

    /// Checks the right to write and that the room is joined, then submits the publish
    /// through the engine's publish path (in command order), and returns the task that
    /// waits for its durable ack and replies.
    async fn publish(
        &mut self,
        command_id: u64,
        publish: Publish,
    ) -> Result<BoxFuture<'static, ()>, (String, HubError)> {
        if let Err(error) = self.rights.check_write(&publish.room) {
            return Err((publish.room, error));
        }
        let Some(joined) = self.joined.get(publish.room.as_str()) else {
            let error = match validate_room_name(&publish.room) {
                Err(error) => error,
                Ok(()) => HubError::FailedPrecondition(format!(
                    "join room {} before publishing to it",
                    publish.room
                )),
            };
            return Err((publish.room, error));
        };
        let input = PublishInput {
            room: publish.room,
            sender: self.member.name.clone(),
            payload: publish.payload,
            content_type: publish.content_type,
            client_id: publish.client_message_id,
            key: publish.key,
        };
        let name = input.room.clone();
        let room = joined.room.clone();
        let ack = match self.engine.submit(&self.quota_key, room, input).await {
            Ok(ack) => ack,
            Err(error) => return Err((name, error)),
        };
        let queue = self.queue.clone();
        Ok(Box::pin(async move {
            let outcome = ack.outcome().await;
            let reply = match outcome {
                Ok(outcome) => {
                    frames::publish_ack(command_id, &name, outcome.offset, outcome.duplicate)
                }
                Err(error) => frames::error(command_id, &name, &error),
            };
            let _ = queue.push_reliable(Frame::own(reply)).await;
        }))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for (name, joined) in std::mem::take(&mut self.joined) {
            self.detach(&joined);
            drop(joined);
            self.engine.release_room(&name);
        }
        self.engine.forget_session(self.id);
    }
}

/// How long a resume waits for this node's live feed to deliver an offset the log already
/// has (see [`wait_for_delivery`]).
const FEED_CATCH_UP: Duration = Duration::from_secs(2);

/// A resume from `after`, beyond what `room` has delivered here. Over a shared log (a
/// cluster) that is expected: the client saw `after` on another node, and this node's feed
/// has not brought it yet. When the log has it, wait (at most [`FEED_CATCH_UP`]) for the
/// feed to deliver it, so the resume replays nothing twice and skips nothing; when the log
/// does not, the offset is beyond the room's end. Returns the room's delivered offset then:
/// still below `after` means `check_resume` refuses the resume as beyond the end.
async fn wait_for_delivery(
    room: &Room,
    store: &dyn Store,
    after: Offset,
) -> Result<Offset, HubError> {
    if store.last_offset(&room.name).await? < after {
        return Ok(room.lock().delivered);
    }
    let deadline = tokio::time::Instant::now() + FEED_CATCH_UP;
    loop {
        let delivered = room.lock().delivered;
        if delivered >= after || tokio::time::Instant::now() >= deadline {
            return Ok(delivered);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

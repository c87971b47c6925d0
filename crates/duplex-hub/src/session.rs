//! `Session`: one client's commands — join (with resume), leave, publish, ping — and the
//! driver that reads a session's inbound frames and keeps its outbound queue fed.
//!
//! One task per session runs [`Session::drive`]; it never spawns per message. Publishes are
//! pipelined up to `publish_window` waiting for durability; beyond that the driver stops
//! reading the inbound stream, so HTTP/2 flow control pushes back on the publisher. A
//! resume replays history in pages paced by the client, then switches to live under the
//! room lock (see `room.rs`), so there is no gap and no duplicate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use duplex_proto::hub::client_frame::Command;
use duplex_proto::hub::{ClientFrame, Join, Member, Publish};
use duplex_store::Offset;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt as _};
use tokio::time::Instant;

use crate::HubError;
use crate::frames;
use crate::hub::{PublishInput, Shared, now_unix_micros};
use crate::queue::{Frame, MessageFrame, SubscriberQueue, coalescing_key};
use crate::rights::{Identity, Rights};
use crate::room::{Room, Subscriber};

struct JoinedRoom {
    room: Arc<Room>,
    /// Set on leave, so a replay still running stops and never registers.
    cancelled: Arc<AtomicBool>,
    /// How the session shows in the room's presence, so leaving undoes just that.
    presence: Shown,
}

/// How a session shows in a room's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// Joined hidden: not at all.
    Hidden,
    /// In the room's member list; its join and leave are presence events.
    Listed,
    /// Past the list's bound: counted in `unlisted_members`, no events.
    Counted,
}

/// One client session. Dropping it leaves every room it joined.
pub struct Session {
    shared: Arc<Shared>,
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
        shared: Arc<Shared>,
        id: u64,
        identity: Identity,
        queue: Arc<SubscriberQueue>,
    ) -> Self {
        Self {
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
            shared,
        }
    }

    /// Sends the client a `shutdown` frame at `at` (its connection reaches its maximum age
    /// soon after), so it reconnects and resumes before the connection is closed.
    pub fn rotate_at(&mut self, at: tokio::time::Instant) {
        self.rotate_at = Some(at);
    }

    /// The session's name: the `sender` of what it publishes.
    pub fn name(&self) -> &str {
        &self.member.name
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
        let idle_timeout = self.shared.config.idle_timeout;
        self.run(inbound, None, idle_timeout)
    }

    /// Drives a session whose client cannot send (server-streaming `Subscribe`), with the
    /// replay of the join made before it was handed over. No idle timeout applies.
    pub fn drive_listener<S>(
        self,
        inbound: S,
        started: Option<BoxFuture<'static, ()>>,
    ) -> impl Future<Output = ()> + Send
    where
        S: Stream<Item = Result<ClientFrame, HubError>> + Unpin + Send,
    {
        self.run(inbound, started, None)
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
        let window = self.shared.config.publish_window.max(1);
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
                        self.queue.finish(Some(error));
                        return;
                    }
                },
                Some(()) = pending.next(), if !pending.is_empty() => {}
                () = self.queue.closed() => return,
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    match deadlines.due(now, inbound_open) {
                        Some(Due::Expiry) => {
                            let error = HubError::Unauthenticated(
                                "token expired: reconnect with a fresh token and resume".into(),
                            );
                            self.queue.finish(Some(error));
                            return;
                        }
                        Some(Due::Idle(timeout)) => {
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
                        self.shared.release_room(&room);
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
        crate::room::validate_room_name(&join.room)?;
        self.rights.check_read(&join.room)?;
        let room = self.shared.room(&join.room)?;
        if self.joined.contains_key(join.room.as_str()) {
            return Err(HubError::AlreadyJoined(join.room));
        }
        let max = self.shared.config.max_rooms_per_session;
        if self.joined.len() >= max {
            return Err(HubError::ResourceExhausted(format!(
                "a session may join at most {max} rooms"
            )));
        }
        let store = self.shared.store.clone();
        room.ensure_loaded(&*store).await?;
        let bounds = store.bounds(&room.name).await?;
        let last = room.lock().delivered;
        let earliest = bounds.map_or(0, |b| b.earliest);
        let after = match (join.after_offset, join.replay_last) {
            (Some(after), _) => {
                check_resume(&room.name, after, bounds.map(|b| b.earliest), last)?;
                Some(after)
            }
            (None, 0) => None,
            // The latest `n` retained: never before the earliest one still there.
            (None, n) => Some(
                last.saturating_sub(n.into())
                    .max(earliest.saturating_sub(1)),
            ),
        };

        let max_listed = self.shared.config.max_presence_listed;
        let (members, unlisted, presence) = {
            let mut state = room.lock();
            let members = state.members.clone();
            let unlisted = state.unlisted_members;
            let presence = if join.hidden {
                Shown::Hidden
            } else if state.members.len() < max_listed {
                state.members.push(self.member.clone());
                let event = Frame::own(frames::presence(&room.name, self.member.clone(), true));
                Room::broadcast(&mut state, &event, Some(self.id));
                Shown::Listed
            } else {
                state.unlisted_members += 1;
                Shown::Counted
            };
            (members, unlisted, presence)
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
        self.reply(frames::joined(
            command_id, &room.name, earliest, last, members, unlisted,
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
            messages: self.shared.config.replay_page.max(1),
            bytes: self.shared.config.replay_page_bytes.max(1),
        };
        Ok(Some(Box::pin(replay_then_live(
            store,
            room,
            subscriber,
            cancelled,
            after.unwrap_or(last),
            page,
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
        self.shared.release_room(room);
        Ok(())
    }

    fn detach(&self, joined: &JoinedRoom) {
        joined.cancelled.store(true, Ordering::Relaxed);
        let mut state = joined.room.lock();
        state.subscribers.retain(|s| s.session_id != self.id);
        match joined.presence {
            Shown::Hidden => return,
            Shown::Counted => {
                state.unlisted_members = state.unlisted_members.saturating_sub(1);
                return;
            }
            Shown::Listed => {}
        }
        let before = state.members.len();
        state
            .members
            .retain(|m| m.session_id != self.member.session_id);
        if state.members.len() != before {
            let event = Frame::own(frames::presence(
                &joined.room.name,
                self.member.clone(),
                false,
            ));
            Room::broadcast(&mut state, &event, Some(self.id));
        }
    }

    /// Validates a publish and queues it for the sequencer (in command order), and returns
    /// the task that waits for its durable ack and replies.
    pub async fn publish(
        &mut self,
        command_id: u64,
        publish: Publish,
    ) -> Result<BoxFuture<'static, ()>, (String, HubError)> {
        if let Err(error) = self.rights.check_write(&publish.room) {
            return Err((publish.room, error));
        }
        if let Err(error) = self.shared.check_rate(&self.quota_key) {
            return Err((publish.room, error));
        }
        let Some(joined) = self.joined.get(publish.room.as_str()) else {
            let error = match crate::room::validate_room_name(&publish.room) {
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
        if let Err(error) = self.shared.validate_publish(&input) {
            return Err((input.room, error));
        }
        let name = input.room.clone();
        let ack = match self.shared.enqueue(joined.room.clone(), input).await {
            Ok(ack) => ack,
            Err(error) => return Err((name, error)),
        };
        let queue = self.queue.clone();
        Ok(Box::pin(async move {
            let outcome = ack.await.unwrap_or(Err(HubError::ShuttingDown));
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
            self.shared.release_room(&name);
        }
        self.shared.forget_session(self.id);
    }
}

/// A session's deadlines: credentials expiry, the idle timeout (while the client can send)
/// and the connection-rotation notice.
struct Deadlines {
    expiry: Option<Instant>,
    rotation: Option<Instant>,
    idle_timeout: Option<Duration>,
    last_frame: Instant,
}

/// Which deadline passed.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    Expiry,
    Idle(Duration),
    Rotation,
}

impl Deadlines {
    fn new(
        expires_at: Option<SystemTime>,
        rotation: Option<Instant>,
        idle_timeout: Option<Duration>,
    ) -> Self {
        let now = Instant::now();
        Self {
            expiry: expires_at
                .map(|at| now + at.duration_since(SystemTime::now()).unwrap_or_default()),
            rotation,
            idle_timeout,
            last_frame: now,
        }
    }

    /// The client sent a frame: the idle deadline moves.
    fn active(&mut self) {
        if self.idle_timeout.is_some() {
            self.last_frame = Instant::now();
        }
    }

    fn idle(&self, inbound_open: bool) -> Option<Instant> {
        let timeout = self.idle_timeout.filter(|_| inbound_open)?;
        Some(self.last_frame + timeout)
    }

    /// The nearest deadline, or one far enough away to mean never.
    fn next(&self, inbound_open: bool) -> Instant {
        [self.expiry, self.rotation, self.idle(inbound_open)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + NEVER)
    }

    /// The deadline that passed by `now`, if one did; a rotation is due once.
    fn due(&mut self, now: Instant, inbound_open: bool) -> Option<Due> {
        if self.expiry.is_some_and(|at| at <= now) {
            return Some(Due::Expiry);
        }
        if let Some(at) = self.idle(inbound_open)
            && at <= now
        {
            return self.idle_timeout.map(Due::Idle);
        }
        if self.rotation.is_some_and(|at| at <= now) {
            self.rotation = None;
            return Some(Due::Rotation);
        }
        None
    }
}

/// Far enough to mean never, near enough not to overflow an `Instant`.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Fails a resume that cannot be served without a gap.
fn check_resume(
    room: &str,
    after: Offset,
    earliest: Option<Offset>,
    last: Offset,
) -> Result<(), HubError> {
    if after > last {
        return Err(HubError::InvalidArgument(format!(
            "room {room}: offset {after} is beyond the last offset {last}"
        )));
    }
    // Messages after `after` exist (after < last) but the first of them is gone.
    let first_needed = after + 1;
    let available_from = earliest.unwrap_or(last + 1);
    if after < last && first_needed < available_from {
        return Err(HubError::ResumeTooOld {
            room: room.to_owned(),
            after,
            earliest: available_from.min(last),
        });
    }
    Ok(())
}

/// How much of a room's history a replay reads and holds at once.
#[derive(Debug, Clone, Copy)]
struct Page {
    messages: usize,
    bytes: usize,
}

/// Replays `(after, delivered]` from the store, page by page at the client's pace, then
/// registers the subscriber for live delivery under the room lock. Only offsets up to the
/// room's delivered mark are replayed: anything later is fanned out live after registration.
async fn replay_then_live(
    store: Arc<dyn duplex_store::Store>,
    room: Arc<Room>,
    subscriber: Subscriber,
    cancelled: Arc<AtomicBool>,
    after: Offset,
    page: Page,
) {
    let queue = subscriber.queue.clone();
    if let Err(error) = replay(&*store, &room, subscriber, &cancelled, after, page).await {
        // The room cannot be served without a gap (retention removed what was needed
        // meanwhile) or the store failed: end the session with that error, so the client
        // reconnects and learns where it can resume, rather than wait on a dead room.
        queue.finish(Some(error));
    }
}

async fn replay(
    store: &dyn duplex_store::Store,
    room: &Room,
    subscriber: Subscriber,
    cancelled: &AtomicBool,
    after: Offset,
    page: Page,
) -> Result<(), HubError> {
    let mut cursor = after;
    loop {
        let limit = {
            let mut state = room.lock();
            if cancelled.load(Ordering::Relaxed) {
                return Ok(());
            }
            if cursor >= state.delivered {
                state.subscribers.push(subscriber);
                return Ok(());
            }
            state.delivered
        };
        // The page is charged to the connection's and address's budgets before it is
        // read, and given back once it is queued: many streams replaying at once wait
        // for each other instead of each pinning a page. A client gone meanwhile stops it.
        let queue = subscriber.queue.clone();
        let mut page_hold = tokio::select! {
            hold = queue.budgets().hold(page.bytes) => hold,
            () = queue.closed() => return Ok(()),
        };
        // Paged by bytes as well as count: the page is held while the client drains the
        // queue, and a page of big messages must not pin more than the queue does.
        let messages = store
            .read_page(&room.name, cursor, page.messages, page.bytes)
            .await?;
        if let Some(first) = messages.first()
            && first.offset > cursor + 1
        {
            // Offsets may skip; a skip is a loss only if retention removed cursor + 1.
            let earliest = store
                .bounds(&room.name)
                .await?
                .map_or(first.offset, |b| b.earliest);
            if earliest > cursor + 1 {
                return Err(HubError::ResumeTooOld {
                    room: room.name.to_string(),
                    after: cursor,
                    earliest,
                });
            }
        }
        let before = cursor;
        let read_nothing = messages.is_empty();
        for message in messages.into_iter().take_while(|m| m.offset <= limit) {
            let frame = Frame::message(MessageFrame {
                bytes: frames::message_frame(&message),
                room: room.name.clone(),
                offset: message.offset,
                key: coalescing_key(&message.key),
            });
            // An error here means the client left, lagged out or the join was cancelled.
            let size = frame.len();
            if subscriber
                .queue
                .push_reliable_unless(frame, Some(cancelled))
                .await
                .is_err()
            {
                return Ok(());
            }
            // Queued, and charged there: the page holds that much less.
            page_hold.give_back(size);
            cursor = message.offset;
        }
        if cursor == before {
            if read_nothing {
                // Nothing after the cursor is left: retention emptied the room meanwhile.
                return Err(HubError::ResumeTooOld {
                    room: room.name.to_string(),
                    after: cursor,
                    earliest: limit + 1,
                });
            }
            // The next stored offset is past the mark: nothing exists up to it.
            cursor = limit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_bounds() {
        // Empty room: only 0 is a valid resume point.
        assert!(check_resume("r", 0, None, 0).is_ok());
        assert!(check_resume("r", 1, None, 0).is_err());
        // Messages 1..=10 retained.
        assert!(check_resume("r", 0, Some(1), 10).is_ok());
        assert!(check_resume("r", 10, Some(1), 10).is_ok());
        assert!(check_resume("r", 11, Some(1), 10).is_err());
        // Retention kept 6..=10: resuming after 4 would skip 5.
        let error = check_resume("r", 4, Some(6), 10).unwrap_err();
        assert_eq!(error.earliest_offset(), Some(6));
        assert_eq!(error.code(), 9);
        assert!(check_resume("r", 5, Some(6), 10).is_ok());
        // Everything trimmed (last 10, none retained): only 10 itself is fine.
        assert!(check_resume("r", 10, None, 10).is_ok());
        assert!(check_resume("r", 3, None, 10).is_err());
    }

    #[test]
    fn one_timer_serves_every_deadline() {
        let idle = Duration::from_secs(30);
        let mut deadlines = Deadlines::new(None, None, Some(idle));
        let start = deadlines.last_frame;
        assert_eq!(deadlines.next(true), start + idle);
        assert_eq!(deadlines.due(start + idle / 2, true), None);
        // A frame moves the idle deadline; the timer armed for the old one finds nothing due.
        deadlines.last_frame = start + idle / 2;
        assert_eq!(deadlines.due(start + idle, true), None);
        assert_eq!(deadlines.next(true), start + idle / 2 + idle);
        assert_eq!(deadlines.due(start + 2 * idle, true), Some(Due::Idle(idle)));
        // A client that can no longer send is not idle.
        assert_eq!(deadlines.due(start + 2 * idle, false), None);
    }

    #[test]
    fn rotation_is_due_once_and_expiry_first() {
        let now = Instant::now();
        let rotation = now + Duration::from_secs(5);
        let mut deadlines = Deadlines::new(None, Some(rotation), None);
        assert_eq!(deadlines.next(true), rotation);
        assert_eq!(deadlines.due(rotation, true), Some(Due::Rotation));
        assert_eq!(deadlines.due(rotation, true), None);
        assert!(deadlines.next(true) > rotation + Duration::from_secs(3600));

        let expires = SystemTime::now() + Duration::from_secs(60);
        let mut deadlines = Deadlines::new(Some(expires), Some(rotation), None);
        assert_eq!(deadlines.next(true), rotation);
        let later = now + Duration::from_secs(120);
        assert_eq!(deadlines.due(later, true), Some(Due::Expiry));
    }
}

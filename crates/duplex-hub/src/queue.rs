//! `SubscriberQueue`: one session's ordered outbound queue of encoded frames.
//!
//! Two kinds of producers share it, in one order:
//! - *live* frames (messages fanned out by the sequencer, presence events) are pushed
//!   without waiting; when the session already holds its bound of live frames or bytes,
//!   the session's [`LagPolicy`] decides what gives;
//! - *reliable* frames (command replies, replayed history) wait for room below the bound,
//!   so a replay of a million messages is paced by the client, not buffered.
//!
//! The consumer is the session's [`Outbound`] stream, polled by the transport only when it
//! can send, so a stalled reader holds at most the bound: memory stays bounded whatever
//! the reader does. A reader that takes nothing for the send-stall timeout is ended
//! ([`SubscriberQueue::end_if_stalled`], run by the hub's sweeper), so it does not hold
//! even that for long. The queue never holds a lock across an await.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use duplex_store::Offset;
use futures::Stream;
use tokio::sync::Notify;

use crate::HubError;
use crate::budget::QueueBudgets;
use crate::config::LagPolicy;
use crate::counters::{HubCounters, Tally};
use crate::frames;

/// A room message as fanned out: its encoded frame and where it belongs (for lag accounting
/// and coalescing), shared by every subscriber it goes to.
#[derive(Debug)]
pub(crate) struct MessageFrame {
    pub bytes: Bytes,
    pub room: Arc<str>,
    pub offset: Offset,
    /// Coalescing key for `latest-per-key`.
    pub key: Option<Arc<str>>,
}

/// A message's coalescing key: none when it has none (most), without allocating.
pub(crate) fn coalescing_key(key: &str) -> Option<Arc<str>> {
    (!key.is_empty()).then(|| key.into())
}

/// One encoded `ServerFrame` to send. A copy of a fanned-out message is one reference
/// count, taken by the publishing thread and dropped by the sending one.
#[derive(Debug, Clone)]
pub struct Frame(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Message(Arc<MessageFrame>),
    /// A reply, a presence event, a report: bytes of one session's own.
    Own(Bytes),
}

impl Frame {
    pub(crate) fn message(message: MessageFrame) -> Self {
        Self(Repr::Message(Arc::new(message)))
    }

    pub(crate) fn own(bytes: Bytes) -> Self {
        Self(Repr::Own(bytes))
    }

    /// The room message this frame carries, if it is one.
    fn meta(&self) -> Option<&MessageFrame> {
        match &self.0 {
            Repr::Message(message) => Some(message),
            Repr::Own(_) => None,
        }
    }
}

impl std::ops::Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Message(message) => &message.bytes,
            Repr::Own(bytes) => bytes,
        }
    }
}

/// What a session's stream has done in one room.
#[derive(Debug, Default, Clone, Copy)]
struct RoomMarks {
    /// Last offset handed to the transport.
    delivered: Offset,
    /// Messages dropped by policy and not yet reported.
    dropped: u64,
}

#[derive(Debug)]
enum Ending {
    /// Send what is queued, then end OK.
    Finish,
    /// Send what is queued, then fail with this error.
    Fail(HubError),
    /// Lagged under `disconnect`, or stalled: the queue was cleared; send `lagged` per
    /// room, then fail with this error.
    Lagged(HubError),
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Entry>,
    live_frames: usize,
    live_bytes: usize,
    /// Replies and replayed frames queued, and their bytes (bounded apart from live ones,
    /// so a busy room cannot starve a session's acks).
    reliable_frames: usize,
    reliable_bytes: usize,
    /// Per room the session gets messages from. Looked up once per frame sent, so with a
    /// fast hash: the keys are room names the server accepted, not a flooding vector.
    rooms: HashMap<Arc<str>, RoomMarks, foldhash::fast::RandomState>,
    ending: Option<Ending>,
    /// Lagged frames still to send before the `Lagged` failure.
    lag_reports: VecDeque<Bytes>,
    /// Set when the `disconnect` policy fired.
    lagged: bool,
    /// Set the first time a live frame found the queue full, so the subscriber is counted
    /// as lagged once.
    ever_full: bool,
    consumer_gone: bool,
    consumer: Option<Waker>,
    /// A reliable push is waiting for room: the next reliable frame sent wakes it.
    reliable_waiting: bool,
    /// Since when frames have waited with none taken by the transport, as seen by the
    /// stall sweeps ([`SubscriberQueue::end_if_stalled`]): set by the first sweep that
    /// finds frames queued and nothing sent since the sweep before, cleared by any send.
    /// A stream that sends nothing for the send-stall timeout is ended, so a reader that
    /// stopped cannot pin its queue (and its replay) for ever. Sampled by the sweeps
    /// rather than stamped per frame: reading the clock on every push and send cost a
    /// few percent of a replay's and a fan-out's CPU.
    waiting_since: Option<Instant>,
    /// A frame went to the transport since the last stall sweep.
    sent_since_sweep: bool,
}

#[derive(Debug)]
struct Entry {
    frame: Frame,
    live: bool,
}

/// What became of a reliable push that does not wait.
enum TryPush {
    /// Queued, or failed for good.
    Done(Result<(), HubError>),
    /// No room: the frame, back.
    Full(Frame),
}

/// What became of a live push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LivePush {
    /// Queued (possibly after the policy dropped or replaced an older frame).
    Queued,
    /// The subscriber is gone or lagged out: stop fanning out to it.
    Detach,
}

/// A session's outbound queue. Shared by the session (reliable frames), the rooms it joined
/// (live frames) and its [`Outbound`] stream.
#[derive(Debug)]
pub(crate) struct SubscriberQueue {
    state: Mutex<State>,
    room_freed: Notify,
    /// Notified when the client goes away or the queue lags out.
    closed: Notify,
    policy: LagPolicy,
    max_frames: usize,
    max_bytes: usize,
    /// The byte budgets of the stream's connection and client address, shared with their
    /// other streams: every byte counted in `live_bytes` and `reliable_bytes` is charged
    /// to them, and given back when it leaves the queue, so the sum over many streams is
    /// bounded, not only each stream.
    budgets: QueueBudgets,
    /// The hub's counters: every frame in and out of the queue moves its depth gauges.
    counters: Arc<HubCounters>,
}

impl SubscriberQueue {
    #[cfg(test)]
    pub(crate) fn new(policy: LagPolicy, max_frames: usize, max_bytes: usize) -> Arc<Self> {
        Self::with_budgets(
            policy,
            max_frames,
            max_bytes,
            QueueBudgets::default(),
            Arc::default(),
        )
    }

    pub(crate) fn with_budgets(
        policy: LagPolicy,
        max_frames: usize,
        max_bytes: usize,
        budgets: QueueBudgets,
        counters: Arc<HubCounters>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            room_freed: Notify::new(),
            closed: Notify::new(),
            policy,
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
            budgets,
            counters,
        })
    }

    /// The hub's counters, which this queue reports to.
    pub(crate) fn counters(&self) -> &HubCounters {
        &self.counters
    }

    pub(crate) fn budgets(&self) -> &QueueBudgets {
        &self.budgets
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a fanned-out frame without waiting; applies the lag policy when full.
    pub(crate) fn push_live(&self, frame: Frame, tally: &mut Tally) -> LivePush {
        let mut state = self.lock();
        if state.consumer_gone || state.ending.is_some() {
            return LivePush::Detach;
        }
        let size = frame.len();
        let full = |state: &State| {
            state.live_frames >= self.max_frames
                || (state.live_frames > 0 && state.live_bytes + size > self.max_bytes)
        };
        // The stream's own bound first, then the budgets its connection and address share:
        // either way full, the policy decides, as one.
        let mut charged = !full(&state) && self.budgets.try_charge(size);
        if !charged {
            if !std::mem::replace(&mut state.ever_full, true) {
                self.counters.subscriber_lagged();
            }
            match self.policy {
                LagPolicy::Disconnect => {
                    self.counters.lagged_out();
                    self.lag_out(&mut state, HubError::Lagged);
                    return LivePush::Detach;
                }
                LagPolicy::DropOldest | LagPolicy::LatestPerKey => {
                    // A newer frame replaces one of the same key first; then the oldest go
                    // until the new frame fits both bounds (a big frame may evict several)
                    // and the shared budgets.
                    if self.policy == LagPolicy::LatestPerKey {
                        self.drop_same_key(&mut state, &frame);
                    }
                    loop {
                        if !full(&state) && self.budgets.try_charge(size) {
                            charged = true;
                            break;
                        }
                        if !self.drop_oldest_live(&mut state) {
                            break;
                        }
                    }
                }
            }
        }
        if !charged {
            // The budgets are held by other streams: this frame is the one dropped.
            if let Some(meta) = frame.meta() {
                state.rooms.entry(meta.room.clone()).or_default().dropped += 1;
                self.counters.message_dropped();
            }
            return LivePush::Queued;
        }
        tally.queued(size, frame.meta().is_some());
        state.live_frames += 1;
        state.live_bytes += size;
        state.frames.push_back(Entry { frame, live: true });
        wake(&mut state);
        LivePush::Queued
    }

    /// Queues a reply or replayed frame, waiting while the session already holds its bound
    /// of such frames (frames or bytes; one frame always fits in an empty queue). With
    /// `cancelled`, gives up without queuing once that flag is set (checked under the
    /// queue's lock, so a replay that was left cannot slip a frame in afterwards).
    pub(crate) async fn push_reliable(&self, frame: Frame) -> Result<(), HubError> {
        self.push_reliable_unless(frame, None).await
    }

    pub(crate) async fn push_reliable_unless(
        &self,
        mut frame: Frame,
        cancelled: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<(), HubError> {
        loop {
            // Most pushes find room: no waiter is registered for them.
            frame = match self.try_push_reliable(frame, cancelled) {
                TryPush::Done(done) => return done,
                TryPush::Full(frame) => frame,
            };
            let freed = self.room_freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            // Room freed between the try and the registration is seen here.
            frame = match self.try_push_reliable(frame, cancelled) {
                TryPush::Done(done) => return done,
                TryPush::Full(frame) => frame,
            };
            freed.await;
        }
    }

    /// Queues `frame` if it fits, or fails; hands it back when the queue is full (and then
    /// the consumer is told to wake reliable pushers).
    fn try_push_reliable(
        &self,
        frame: Frame,
        cancelled: Option<&std::sync::atomic::AtomicBool>,
    ) -> TryPush {
        let mut state = self.lock();
        if state.lagged {
            return TryPush::Done(Err(HubError::Lagged));
        }
        if state.consumer_gone || state.ending.is_some() {
            return TryPush::Done(Err(HubError::ShuttingDown));
        }
        if cancelled.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            return TryPush::Done(Err(HubError::ShuttingDown));
        }
        let size = frame.len();
        // One reliable frame always gets in, so every stream makes progress; past it the
        // frame waits for room in the queue and in the shared budgets. The stream's own
        // sends wake it (it holds a reliable frame), so no other stream need.
        let fits = if state.reliable_frames == 0 {
            self.budgets.force_charge(size);
            true
        } else {
            state.reliable_frames < self.max_frames
                && state.reliable_bytes + size <= self.max_bytes
                && self.budgets.try_charge(size)
        };
        if !fits {
            state.reliable_waiting = true;
            return TryPush::Full(frame);
        }
        self.counters.queued(1, size);
        state.reliable_frames += 1;
        state.reliable_bytes += size;
        state.frames.push_back(Entry { frame, live: false });
        wake(&mut state);
        TryPush::Done(Ok(()))
    }

    /// Queues a frame now, whatever the bound (rare control frames: shutdown).
    pub(crate) fn push_control(&self, bytes: Bytes) {
        let mut state = self.lock();
        if state.ending.is_none() && !state.consumer_gone {
            self.budgets.force_charge(bytes.len());
            self.counters.queued(1, bytes.len());
            state.reliable_frames += 1;
            state.reliable_bytes += bytes.len();
            state.frames.push_back(Entry {
                frame: Frame::own(bytes),
                live: false,
            });
            wake(&mut state);
        }
    }

    /// Ends the stream after what is queued: OK, or with `error`.
    pub(crate) fn finish(&self, error: Option<HubError>) {
        let mut state = self.lock();
        if state.ending.is_none() {
            state.ending = Some(match error {
                None => Ending::Finish,
                Some(error) => Ending::Fail(error),
            });
            wake(&mut state);
        }
        drop(state);
        self.room_freed.notify_waiters();
    }

    /// True once the transport dropped the stream (client gone) or the queue lagged out.
    pub(crate) fn is_closed(&self) -> bool {
        let state = self.lock();
        state.consumer_gone || state.lagged
    }

    /// Forgets a room the session left: its delivery and drop counts.
    pub(crate) fn forget_room(&self, room: &str) {
        let mut state = self.lock();
        state.rooms.remove(room);
    }

    /// Resolves once the client is gone or the queue lagged out.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.closed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Frames and bytes queued now.
    #[cfg(test)]
    pub(crate) fn depth(&self) -> (usize, usize) {
        let state = self.lock();
        let bytes = state.frames.iter().map(|e| e.frame.len()).sum();
        (state.frames.len(), bytes)
    }

    /// One stall sweep at `now`: ends the stream if frames have waited for the transport,
    /// with none taken, since a sweep at least `timeout` ago (the client stopped reading):
    /// like a lag under `disconnect`, whatever the policy — the queue is cleared, a
    /// `lagged` frame per room says where to resume, then the call fails with
    /// RESOURCE_EXHAUSTED. Returns whether it did. The wait is counted from the first sweep
    /// that saw it, never from before it began, so with sweeps every `timeout / 4` a
    /// stream ends between `timeout` and `1.5 × timeout` after its reader stopped.
    pub(crate) fn end_if_stalled(&self, now: Instant, timeout: Duration) -> bool {
        let mut state = self.lock();
        if state.frames.is_empty() || std::mem::take(&mut state.sent_since_sweep) {
            state.waiting_since = (!state.frames.is_empty()).then_some(now);
            return false;
        }
        let since = *state.waiting_since.get_or_insert(now);
        let stalled = state.ending.is_none()
            && !state.consumer_gone
            && now.saturating_duration_since(since) >= timeout;
        if stalled {
            self.counters.stalled_out();
            self.lag_out(&mut state, HubError::SendStalled(timeout));
        }
        stalled
    }

    /// Empties the queue and gives its bytes back to the budgets.
    fn clear(&self, state: &mut State) {
        state.frames.clear();
        self.budgets
            .release(state.live_bytes + state.reliable_bytes);
        self.counters.discarded(
            state.live_frames + state.reliable_frames,
            state.live_bytes + state.reliable_bytes,
        );
        state.live_frames = 0;
        state.live_bytes = 0;
        state.reliable_frames = 0;
        state.reliable_bytes = 0;
    }

    fn lag_out(&self, state: &mut State, error: HubError) {
        self.clear(state);
        let mut rooms: Vec<_> = state.rooms.drain().collect();
        rooms.sort_by(|a, b| a.0.cmp(&b.0));
        state.lag_reports = rooms
            .into_iter()
            .map(|(room, marks)| frames::lagged(&room, marks.delivered, marks.dropped))
            .collect();
        state.ending = Some(Ending::Lagged(error));
        state.waiting_since = None;
        state.lagged = true;
        wake(state);
        self.room_freed.notify_waiters();
        self.closed.notify_waiters();
    }

    /// Drops the oldest live frame; false when there is none.
    fn drop_oldest_live(&self, state: &mut State) -> bool {
        match state.frames.iter().position(|e| e.live) {
            Some(index) => {
                self.remove_live(state, index);
                true
            }
            None => false,
        }
    }

    fn drop_same_key(&self, state: &mut State, incoming: &Frame) -> bool {
        let Some(meta) = incoming.meta() else {
            return false;
        };
        if meta.key.is_none() {
            return false;
        }
        let same = state.frames.iter().position(|e| {
            e.live
                && e.frame
                    .meta()
                    .is_some_and(|m| m.room == meta.room && m.key == meta.key)
        });
        match same {
            Some(index) => {
                self.remove_live(state, index);
                true
            }
            None => false,
        }
    }

    fn remove_live(&self, state: &mut State, index: usize) {
        if let Some(entry) = state.frames.remove(index) {
            state.live_frames -= 1;
            state.live_bytes -= entry.frame.len();
            self.budgets.release(entry.frame.len());
            self.counters.discarded(1, entry.frame.len());
            if let Some(meta) = entry.frame.meta() {
                state.rooms.entry(meta.room.clone()).or_default().dropped += 1;
                self.counters.message_dropped();
            }
        }
    }
}

impl Drop for SubscriberQueue {
    /// Whatever is still counted goes back to the budgets, however the stream ended.
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.budgets
            .release(state.live_bytes + state.reliable_bytes);
        self.counters.discarded(
            state.live_frames + state.reliable_frames,
            state.live_bytes + state.reliable_bytes,
        );
    }
}

fn wake(state: &mut State) {
    if let Some(waker) = state.consumer.take() {
        waker.wake();
    }
}

/// The session's outbound stream of encoded `ServerFrame`s, in queue order. Dropping it
/// (the client went away) detaches the session from every room.
#[derive(Debug)]
pub struct Outbound {
    queue: Arc<SubscriberQueue>,
}

impl Outbound {
    pub(crate) fn new(queue: Arc<SubscriberQueue>) -> Self {
        Self { queue }
    }
}

impl Stream for Outbound {
    type Item = Result<Frame, HubError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let queue = &self.queue;
        let mut guard = queue.lock();
        let state = &mut *guard;
        if let Some(report) = state.lag_reports.pop_front() {
            queue.counters.passed_through(report.len());
            return Poll::Ready(Some(Ok(Frame::own(report))));
        }
        if let Some(entry) = state.frames.pop_front() {
            // The transport took a frame: the stall sweep starts counting again.
            state.sent_since_sweep = true;
            if let Some(meta) = entry.frame.meta() {
                let marks = match state.rooms.get_mut(&*meta.room) {
                    Some(marks) => marks,
                    None => state.rooms.entry(meta.room.clone()).or_default(),
                };
                // Messages the policy dropped in a room are reported before its next one.
                if marks.dropped > 0 {
                    let dropped = std::mem::take(&mut marks.dropped);
                    let report = frames::lagged(&meta.room, marks.delivered, dropped);
                    state.frames.push_front(entry);
                    queue.counters.passed_through(report.len());
                    return Poll::Ready(Some(Ok(Frame::own(report))));
                }
                marks.delivered = marks.delivered.max(meta.offset);
            }
            let size = entry.frame.len();
            queue.budgets.release(size);
            queue.counters.sent(size);
            if entry.live {
                state.live_frames -= 1;
                state.live_bytes -= size;
                return Poll::Ready(Some(Ok(entry.frame)));
            }
            state.reliable_frames -= 1;
            state.reliable_bytes -= size;
            // Only reliable pushes wait for room, and seldom: wake them only if one does.
            if std::mem::take(&mut state.reliable_waiting) {
                drop(guard);
                queue.room_freed.notify_waiters();
            }
            return Poll::Ready(Some(Ok(entry.frame)));
        }
        let state = &mut *guard;
        match &state.ending {
            Some(Ending::Finish) => Poll::Ready(None),
            Some(Ending::Fail(error)) => {
                let error = error.clone();
                state.ending = Some(Ending::Finish);
                Poll::Ready(Some(Err(error)))
            }
            Some(Ending::Lagged(error)) => {
                let error = error.clone();
                state.ending = Some(Ending::Finish);
                Poll::Ready(Some(Err(error)))
            }
            None => {
                state.consumer = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.consumer_gone = true;
        self.queue.clear(&mut state);
        drop(state);
        self.queue.room_freed.notify_waiters();
        self.queue.closed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(room: &str, offset: Offset, size: usize, key: &str) -> Frame {
        Frame::message(MessageFrame {
            bytes: Bytes::from(vec![b'x'; size]),
            room: room.into(),
            offset,
            key: coalescing_key(key),
        })
    }

    #[test]
    fn lossy_policies_hold_the_byte_bound_too() {
        for policy in [LagPolicy::DropOldest, LagPolicy::LatestPerKey] {
            let queue = SubscriberQueue::new(policy, 8, 1000);
            for offset in 1..=8 {
                assert_eq!(
                    queue.push_live(live("r", offset, 1, ""), &mut Tally::default()),
                    LivePush::Queued
                );
            }
            for offset in 9..=16 {
                assert_eq!(
                    queue.push_live(live("r", offset, 900, ""), &mut Tally::default()),
                    LivePush::Queued
                );
            }
            let (frames, bytes) = queue.depth();
            assert!(
                bytes <= 1000,
                "{policy:?}: {frames} frames, {bytes} bytes queued"
            );
        }
    }

    #[tokio::test]
    async fn replies_get_in_while_a_busy_room_fills_the_live_bound() {
        let queue = SubscriberQueue::new(LagPolicy::DropOldest, 4, 1 << 20);
        for offset in 1..=100 {
            queue.push_live(live("busy", offset, 10, ""), &mut Tally::default());
        }
        let ack = Frame::own(Bytes::from_static(b"ack"));
        let pushed = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            queue.push_reliable(ack),
        )
        .await;
        assert!(
            pushed.is_ok(),
            "the ack does not wait for the live frames to drain"
        );
    }

    #[tokio::test]
    async fn a_stream_whose_reader_stopped_ends_after_the_stall_timeout() {
        use futures::StreamExt as _;
        let timeout = Duration::from_secs(30);
        let queue = SubscriberQueue::new(LagPolicy::DropOldest, 16, 1 << 20);
        let mut outbound = Outbound::new(queue.clone());
        let start = Instant::now();
        // Nothing waits: never stalled, however long.
        assert!(!queue.end_if_stalled(start + timeout * 10, timeout));
        queue.push_live(live("r", 1, 10, ""), &mut Tally::default());
        queue.push_live(live("r", 2, 10, ""), &mut Tally::default());
        // The first sweep that sees frames waiting starts the count.
        let seen = start + timeout * 11;
        assert!(!queue.end_if_stalled(seen, timeout));
        assert!(!queue.end_if_stalled(seen + timeout / 2, timeout));
        // The reader takes one: the next sweep starts counting again.
        assert!(outbound.next().await.unwrap().is_ok());
        let swept = seen + timeout * 3 / 4;
        assert!(!queue.end_if_stalled(swept, timeout));
        assert!(!queue.end_if_stalled(swept + timeout / 2, timeout));
        assert!(queue.end_if_stalled(swept + timeout, timeout));
        assert!(queue.is_closed());
        // Where to resume, then the error; the queued frame is gone.
        let lagged = outbound.next().await.unwrap().unwrap();
        assert!(!lagged.is_empty());
        match outbound.next().await {
            Some(Err(HubError::SendStalled(after))) => assert_eq!(after, timeout),
            other => panic!("expected SendStalled, got {other:?}"),
        }
        assert!(outbound.next().await.is_none());
    }

    #[tokio::test]
    async fn a_full_connection_budget_fires_the_lag_policy_and_sends_give_bytes_back() {
        use crate::budget::{ByteBudget, QueueBudgets};
        use futures::StreamExt as _;
        let connection = ByteBudget::new(1000);
        let budgets = QueueBudgets::new(Some(connection.clone()), None);
        let queue = |policy| {
            SubscriberQueue::with_budgets(policy, 64, 1 << 20, budgets.clone(), Arc::default())
        };
        // A stalled stream holds most of the budget.
        let stalled = queue(LagPolicy::Disconnect);
        let stalled_out = Outbound::new(stalled.clone());
        assert_eq!(
            stalled.push_live(live("r", 1, 900, ""), &mut Tally::default()),
            LivePush::Queued
        );
        // A lossy stream beside it: the frame that does not fit is dropped, its own
        // older frames first.
        let lossy = queue(LagPolicy::DropOldest);
        let mut lossy_out = Outbound::new(lossy.clone());
        assert_eq!(
            lossy.push_live(live("r", 1, 60, ""), &mut Tally::default()),
            LivePush::Queued
        );
        assert_eq!(
            lossy.push_live(live("r", 2, 60, ""), &mut Tally::default()),
            LivePush::Queued
        );
        assert_eq!(lossy.depth(), (1, 60), "the older frame made room");
        assert!(connection.used() <= 1000);
        // A `disconnect` stream whose push does not fit lags out, as with a full queue.
        let strict = queue(LagPolicy::Disconnect);
        let strict_out = Outbound::new(strict.clone());
        assert_eq!(
            strict.push_live(live("r", 1, 200, ""), &mut Tally::default()),
            LivePush::Detach
        );
        assert!(strict.is_closed());
        // Sending gives the bytes back (after the report of the frame dropped); a dropped
        // stream gives back what it held.
        assert!(lossy_out.next().await.unwrap().is_ok());
        assert_eq!(connection.used(), 960);
        assert!(lossy_out.next().await.unwrap().is_ok());
        assert_eq!(connection.used(), 900);
        drop(stalled_out);
        assert_eq!(connection.used(), 0);
        assert_eq!(
            strict.push_live(live("r", 2, 200, ""), &mut Tally::default()),
            LivePush::Detach
        );
        drop(strict_out);
    }

    #[tokio::test]
    async fn a_cancelled_replay_pushes_nothing() {
        let queue = SubscriberQueue::new(LagPolicy::Disconnect, 4, 1 << 20);
        let cancelled = std::sync::atomic::AtomicBool::new(true);
        let pushed = queue
            .push_reliable_unless(live("r", 1, 1, ""), Some(&cancelled))
            .await;
        assert!(pushed.is_err());
        assert_eq!(queue.depth(), (0, 0));
    }
}

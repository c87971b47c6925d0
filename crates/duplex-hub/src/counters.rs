//! [`HubCounters`]: what the engine counts for operators — publishes, acks and their
//! latency, fan-out, queue depth, lag and resume — as plain atomics, read at scrape time by
//! the server's `/metrics` and `WatchStats`. No metrics library and no label maps here.
//!
//! Who writes what, and so what each costs:
//! - the sequencer task (one per hub) counts publishes, commits, ack latency and fan-out
//!   deliveries per batch or per message, alone: uncontended atomics on lines no other
//!   thread writes;
//! - subscriber queues are pushed by the sequencer and popped by every worker thread, so
//!   frames queued, sent and discarded are [`ShardedCounter`]s: each thread adds to its own
//!   cache line and a scrape sums the lines. Queue depth is not a gauge moved per frame but
//!   queued − sent − discarded, read at scrape time; a fan-out counts what it queued once
//!   per message ([`Tally`]), not once per subscriber, and a sent frame costs two adds;
//! - rare events (lag, disconnects, resumes) are one shared atomic each; replayed
//!   messages, counted per message on the workers, are sharded too.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use duplex_store::{Histogram, HistogramSnapshot};

/// How many cache lines a [`ShardedCounter`] spreads over: more than the threads that
/// touch it on most machines (workers + the main runtime's), so threads seldom share one.
const SHARDS: usize = 16;

/// One shard on its own cache line (128 bytes: adjacent-line prefetch pairs lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(AtomicU64);

/// The next shard a thread gets, round-robin.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, chosen on its first add.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// A counter many threads add to per message: each thread adds to its own shard (one
/// relaxed add on a line it alone writes, mostly), a reader sums the shards. Also a gauge:
/// [`sub`](ShardedCounter::sub) wraps, and [`value`](ShardedCounter::value) reads the sum
/// as signed.
#[derive(Debug, Default)]
pub struct ShardedCounter {
    shards: [Shard; SHARDS],
}

impl ShardedCounter {
    /// Adds `n` on this thread's shard.
    #[inline]
    pub fn add(&self, n: u64) {
        let shard = SHARD.with(|shard| *shard);
        self.shards[shard].0.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes `n` off (as a gauge); the shards wrap, their sum does not.
    #[inline]
    pub fn sub(&self, n: u64) {
        let shard = SHARD.with(|shard| *shard);
        self.shards[shard].0.fetch_sub(n, Ordering::Relaxed);
    }

    /// The sum of the shards, as a counter.
    pub fn total(&self) -> u64 {
        self.shards.iter().fold(0u64, |sum, shard| {
            sum.wrapping_add(shard.0.load(Ordering::Relaxed))
        })
    }

    /// The sum of the shards, as a gauge (adds less subs; not negative in a quiet moment,
    /// though a read racing an add and its sub may see one without the other).
    pub fn value(&self) -> i64 {
        self.total() as i64
    }
}

/// What one fan-out queued, counted as it goes and reported once ([`Tally::report`]):
/// per message, not per subscriber.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Frames queued.
    frames: usize,
    /// Their bytes.
    bytes: usize,
    /// Of them, room messages (deliveries); the rest are events such as presence.
    deliveries: u64,
}

impl Tally {
    /// One frame of `bytes` queued; a delivery if it carries a room message.
    #[inline]
    pub(crate) fn queued(&mut self, bytes: usize, delivery: bool) {
        self.frames += 1;
        self.bytes += bytes;
        self.deliveries += u64::from(delivery);
    }

    /// Adds what was counted to `counters`.
    pub(crate) fn report(self, counters: &HubCounters) {
        counters.queued(self.frames, self.bytes);
        counters.delivered(self.deliveries);
    }
}

/// The engine's counters; see the module docs. One per hub, shared by its sequencer,
/// rooms and subscriber queues.
#[derive(Debug)]
pub struct HubCounters {
    /// Messages stored and acked (new, not duplicates).
    published: AtomicU64,
    /// Their payload bytes.
    published_bytes: AtomicU64,
    /// Publishes acked as repeats of a client message id (stored once before).
    duplicates: AtomicU64,
    /// Publishes that failed in the store (UNAVAILABLE to the publisher).
    publish_failures: AtomicU64,
    /// From queueing a publish for the sequencer to its ack, nanoseconds.
    publish_ack: Histogram,
    /// One store append of the sequencer (a group commit), nanoseconds.
    commit: Histogram,
    /// Messages per store append.
    commit_messages: Histogram,
    /// Room messages put into subscriber queues.
    deliveries: AtomicU64,
    /// Frames put into subscriber queues since start.
    queued_frames: ShardedCounter,
    /// Their bytes.
    queued_bytes: ShardedCounter,
    /// Frames that left subscriber queues unsent (dropped by a lag policy, cleared when a
    /// session ended).
    discarded_frames: ShardedCounter,
    /// Their bytes.
    discarded_bytes: ShardedCounter,
    /// Frames handed to transports (every service and transport of the hub).
    frames_sent: ShardedCounter,
    /// Their bytes.
    bytes_sent: ShardedCounter,
    /// Subscribers whose queue was ever full when a live message came (counted once each).
    lagged_subscribers: AtomicU64,
    /// Live messages dropped for a lagging subscriber (`drop-oldest`, `latest-per-key`, or a
    /// shared byte budget held by other streams).
    dropped_messages: AtomicU64,
    /// Subscribers ended because they lagged under `disconnect`.
    disconnected_lagged: AtomicU64,
    /// Subscribers ended because they read nothing for the send-stall timeout.
    disconnected_stalled: AtomicU64,
    /// Joins that resumed from an offset (a replay from history).
    resumes: AtomicU64,
    /// Messages replayed from history to resuming subscribers (sharded: replays run on
    /// every worker thread, per message).
    replayed_messages: ShardedCounter,
    /// Sessions opened since start.
    sessions_opened: AtomicU64,
}

/// Messages per commit: bucket bounds.
const COMMIT_MESSAGES_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

impl Default for HubCounters {
    fn default() -> Self {
        Self {
            published: AtomicU64::new(0),
            published_bytes: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            publish_ack: Histogram::latency(),
            commit: Histogram::latency(),
            commit_messages: Histogram::new(COMMIT_MESSAGES_BOUNDS),
            deliveries: AtomicU64::new(0),
            queued_frames: ShardedCounter::default(),
            queued_bytes: ShardedCounter::default(),
            discarded_frames: ShardedCounter::default(),
            discarded_bytes: ShardedCounter::default(),
            frames_sent: ShardedCounter::default(),
            bytes_sent: ShardedCounter::default(),
            lagged_subscribers: AtomicU64::new(0),
            dropped_messages: AtomicU64::new(0),
            disconnected_lagged: AtomicU64::new(0),
            disconnected_stalled: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            replayed_messages: ShardedCounter::default(),
            sessions_opened: AtomicU64::new(0),
        }
    }
}

/// Adds `n` to a counter only its one writer adds to.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Reads a counter.
fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl HubCounters {
    // Writers (the engine's own).

    /// The sequencer appended `messages` messages in one commit that took `took`.
    pub(crate) fn committed(&self, messages: usize, took: Duration) {
        self.commit.observe_duration(took);
        self.commit_messages.observe(messages as u64);
    }

    /// A new message of `bytes` payload bytes was acked `latency` after it was queued.
    pub(crate) fn acked(&self, bytes: usize, latency: Duration) {
        bump(&self.published, 1);
        bump(&self.published_bytes, bytes as u64);
        self.publish_ack.observe_duration(latency);
    }

    /// A repeat of a client message id was acked `latency` after it was queued.
    pub(crate) fn acked_duplicate(&self, latency: Duration) {
        bump(&self.duplicates, 1);
        self.publish_ack.observe_duration(latency);
    }

    /// `n` publishes failed in the store.
    pub(crate) fn publishes_failed(&self, n: usize) {
        bump(&self.publish_failures, n as u64);
    }

    /// A message went into `n` subscriber queues.
    pub(crate) fn delivered(&self, n: u64) {
        if n > 0 {
            bump(&self.deliveries, n);
        }
    }

    /// `frames` frames of `bytes` in all were put into subscriber queues.
    #[inline]
    pub(crate) fn queued(&self, frames: usize, bytes: usize) {
        if frames > 0 {
            self.queued_frames.add(frames as u64);
            self.queued_bytes.add(bytes as u64);
        }
    }

    /// `frames` frames of `bytes` in all left subscriber queues unsent (dropped, cleared).
    #[inline]
    pub(crate) fn discarded(&self, frames: usize, bytes: usize) {
        if frames > 0 {
            self.discarded_frames.add(frames as u64);
            self.discarded_bytes.add(bytes as u64);
        }
    }

    /// A frame of `bytes` made and handed to a transport at once (a `lagged` report): it
    /// passes through the counts, queued and sent.
    #[inline]
    pub(crate) fn passed_through(&self, bytes: usize) {
        self.queued(1, bytes);
        self.sent(bytes);
    }

    /// A queued frame of `bytes` was handed to a transport (it left its queue).
    #[inline]
    pub(crate) fn sent(&self, bytes: usize) {
        self.frames_sent.add(1);
        self.bytes_sent.add(bytes as u64);
    }

    /// A subscriber's queue was full for the first time.
    pub(crate) fn subscriber_lagged(&self) {
        bump(&self.lagged_subscribers, 1);
    }

    /// A live message was dropped for a lagging subscriber.
    pub(crate) fn message_dropped(&self) {
        bump(&self.dropped_messages, 1);
    }

    /// A subscriber was ended for lagging (`disconnect`).
    pub(crate) fn lagged_out(&self) {
        bump(&self.disconnected_lagged, 1);
    }

    /// A subscriber was ended for reading nothing for the send-stall timeout.
    pub(crate) fn stalled_out(&self) {
        bump(&self.disconnected_stalled, 1);
    }

    /// A join resumed from an offset.
    pub(crate) fn resumed(&self) {
        bump(&self.resumes, 1);
    }

    /// `n` history messages were replayed to a resuming subscriber.
    pub(crate) fn replayed(&self, n: usize) {
        self.replayed_messages.add(n as u64);
    }

    /// A session opened.
    pub(crate) fn session_opened(&self) {
        bump(&self.sessions_opened, 1);
    }

    // Readers (exporters).

    /// Messages stored and acked since start (not duplicates).
    pub fn published(&self) -> u64 {
        read(&self.published)
    }

    /// Payload bytes of those messages.
    pub fn published_bytes(&self) -> u64 {
        read(&self.published_bytes)
    }

    /// Publishes acked as repeats of a client message id.
    pub fn duplicates(&self) -> u64 {
        read(&self.duplicates)
    }

    /// Publishes that failed in the store.
    pub fn publish_failures(&self) -> u64 {
        read(&self.publish_failures)
    }

    /// Publish → ack latencies, in nanoseconds.
    pub fn publish_ack_nanos(&self) -> HistogramSnapshot {
        self.publish_ack.snapshot()
    }

    /// The sequencer's store appends (group commits), in nanoseconds.
    pub fn commit_nanos(&self) -> HistogramSnapshot {
        self.commit.snapshot()
    }

    /// Messages per store append.
    pub fn commit_messages(&self) -> HistogramSnapshot {
        self.commit_messages.snapshot()
    }

    /// Room messages put into subscriber queues since start.
    pub fn deliveries(&self) -> u64 {
        read(&self.deliveries)
    }

    /// Frames queued for every subscriber now: queued − sent − discarded, each summed
    /// over its shards (a read racing a frame's way through may see it twice or not at all
    /// for that moment).
    pub fn queued_frames(&self) -> i64 {
        self.queued_frames
            .value()
            .wrapping_sub(self.frames_sent.value())
            .wrapping_sub(self.discarded_frames.value())
    }

    /// Their bytes.
    pub fn queued_bytes(&self) -> i64 {
        self.queued_bytes
            .value()
            .wrapping_sub(self.bytes_sent.value())
            .wrapping_sub(self.discarded_bytes.value())
    }

    /// Frames handed to transports since start.
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent.total()
    }

    /// Their bytes.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.total()
    }

    /// Subscribers that fell behind (their queue was full when a live message came).
    pub fn lagged_subscribers(&self) -> u64 {
        read(&self.lagged_subscribers)
    }

    /// Live messages dropped for lagging subscribers.
    pub fn dropped_messages(&self) -> u64 {
        read(&self.dropped_messages)
    }

    /// Subscribers ended for lagging under `disconnect`.
    pub fn disconnected_lagged(&self) -> u64 {
        read(&self.disconnected_lagged)
    }

    /// Subscribers ended for reading nothing for the send-stall timeout.
    pub fn disconnected_stalled(&self) -> u64 {
        read(&self.disconnected_stalled)
    }

    /// Joins that resumed from an offset.
    pub fn resumes(&self) -> u64 {
        read(&self.resumes)
    }

    /// Messages replayed from history.
    pub fn replayed_messages(&self) -> u64 {
        self.replayed_messages.total()
    }

    /// Sessions opened since start.
    pub fn sessions_opened(&self) -> u64 {
        read(&self.sessions_opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_counter_sums_adds_and_subs_from_many_threads() {
        let counter = std::sync::Arc::new(ShardedCounter::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counter.add(3);
                    }
                    counter.sub(1000);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(counter.value(), 8 * 2000);
        // A gauge taken down on another thread than the one that raised it.
        let counter2 = std::sync::Arc::new(ShardedCounter::default());
        counter2.add(5);
        let down = counter2.clone();
        std::thread::spawn(move || down.sub(5)).join().unwrap();
        assert_eq!(counter2.value(), 0);
    }
}

//! Counters the store keeps for operators: plain atomics, written by the one writer thread
//! and read at scrape time by whoever exports them (the server's `/metrics`). No metrics
//! library here: the names, help texts and format belong to the exporter.
//!
//! [`Histogram`] is a fixed-bucket histogram of atomics, shared with the hub crate, for
//! values observed by a single writer (the store's writer thread, the hub's sequencer):
//! an observation is a short scan of the bounds and three relaxed adds on a cache line no
//! other thread writes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds for latencies, in nanoseconds: 50 µs to 10 s, roughly ×2.5 apart
/// (fsyncs take 50 µs on tmpfs to tens of milliseconds on disks).
pub const LATENCY_BOUNDS_NANOS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// A fixed-bucket histogram of `u64` observations; see the module docs. The buckets are
/// not cumulative: `counts[i]` counts observations in `(bounds[i-1], bounds[i]]`, and the
/// last one those above every bound.
#[derive(Debug)]
pub struct Histogram {
    /// Inclusive upper bounds, ascending, in the unit observed.
    bounds: &'static [u64],
    /// One count per bound, plus one for the values above the last.
    counts: Box<[AtomicU64]>,
    /// Sum of every observation, in the unit observed.
    sum: AtomicU64,
}

/// What a [`Histogram`] held at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// The bounds, as in the histogram.
    pub bounds: &'static [u64],
    /// Non-cumulative counts, one per bound plus the overflow bucket.
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// An empty latency histogram ([`LATENCY_BOUNDS_NANOS`]); observe with
    /// [`observe_duration`](Histogram::observe_duration).
    pub fn latency() -> Self {
        Self::new(LATENCY_BOUNDS_NANOS)
    }

    /// Counts one observation of `value`.
    pub fn observe(&self, value: u64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Counts one duration, in nanoseconds (saturating at `u64::MAX`).
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The counts now. Not one atomic read: an observation made meanwhile may be in the
    /// counts and not yet in the sum, which a scrape tolerates.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

impl HistogramSnapshot {
    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was observed between `earlier` and `self` (same histogram).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
            sum: self.sum.saturating_sub(earlier.sum),
        }
    }

    /// The upper bound of the bucket holding the `q` quantile (0 < q ≤ 1): an upper bound
    /// on it, not an estimate. `None` when nothing was observed; `u64::MAX` when it falls
    /// above the last bound.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based: the smallest n with n / total ≥ q.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(self.bounds.get(index).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

/// What the store counts: durable commits' fsync time, failures, and whether the last
/// write failed (the store is then unavailable for publishing until a commit succeeds).
#[derive(Debug)]
pub struct StoreCounters {
    /// Time in the durable commit call (redb's commit: page writes and fsync), nanoseconds.
    fsync: Histogram,
    /// Group commits that failed (every append in them got the error).
    failed_commits: AtomicU64,
    /// Set by a failed write, cleared by the next successful commit: the store cannot
    /// take writes now (disk full, I/O error, database being reopened).
    failing: AtomicBool,
}

impl Default for StoreCounters {
    fn default() -> Self {
        Self {
            fsync: Histogram::latency(),
            failed_commits: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }
}

impl StoreCounters {
    /// A durable commit call took `took` and succeeded: the store is available.
    pub fn committed(&self, took: Duration) {
        self.fsync.observe_duration(took);
        self.failing.store(false, Ordering::Relaxed);
    }

    /// A group commit failed: the store is unavailable until a commit succeeds.
    pub(crate) fn commit_failed(&self) {
        self.failed_commits.fetch_add(1, Ordering::Relaxed);
        self.failing.store(true, Ordering::Relaxed);
    }

    /// An append failed without making the store unavailable by itself: counted only. For
    /// a store whose availability something else decides (see
    /// [`set_available`](StoreCounters::set_available)).
    pub fn append_failed(&self) {
        self.failed_commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets whether the store takes writes, for a store whose availability is a connection
    /// rather than its last commit (a cluster log: connected to NATS or not).
    pub fn set_available(&self, available: bool) {
        self.failing.store(!available, Ordering::Relaxed);
    }

    /// Whether the store takes writes: false from a failed commit until one succeeds.
    pub fn available(&self) -> bool {
        !self.failing.load(Ordering::Relaxed)
    }

    /// The durable commit calls' latencies, in nanoseconds.
    pub fn fsync_nanos(&self) -> HistogramSnapshot {
        self.fsync.snapshot()
    }

    /// Group commits that failed since start.
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_upper_bound_is_the_bound_of_the_bucket_holding_the_rank() {
        static BOUNDS: &[u64] = &[10, 20, 30];
        let histogram = Histogram::new(BOUNDS);
        assert_eq!(histogram.snapshot().quantile_upper_bound(0.99), None);
        for _ in 0..98 {
            histogram.observe(5);
        }
        histogram.observe(15);
        histogram.observe(25);
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 100);
        assert_eq!(snapshot.quantile_upper_bound(0.5), Some(10));
        assert_eq!(snapshot.quantile_upper_bound(0.99), Some(20));
        assert_eq!(snapshot.quantile_upper_bound(1.0), Some(30));
        histogram.observe(1000);
        let later = histogram.snapshot().since(&snapshot);
        assert_eq!(later.count(), 1);
        assert_eq!(later.quantile_upper_bound(0.99), Some(u64::MAX));
        assert_eq!(later.sum, 1000);
    }
}

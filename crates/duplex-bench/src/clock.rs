//! One monotonic clock for the whole run, in nanoseconds since the run started.
//!
//! Send times, schedules and the publish time carried in fan-out payloads all use it, so
//! publisher and subscriber (both in this process) agree on time without wall clocks.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static BASE: OnceLock<Instant> = OnceLock::new();

/// Fixes the clock's origin (idempotent).
pub(crate) fn start() {
    BASE.get_or_init(Instant::now);
}

/// Nanoseconds since the origin.
pub(crate) fn now() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The tokio [`tokio::time::Instant`] of a clock reading, for timers.
pub(crate) fn instant(nanos: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(*BASE.get_or_init(Instant::now) + Duration::from_nanos(nanos))
}

/// A duration in clock units.
pub(crate) fn nanos(duration: Duration) -> u64 {
    duration.as_nanos().min(u64::MAX as u128) as u64
}

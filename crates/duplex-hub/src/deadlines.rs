//! `Deadlines`: a session's deadlines — credentials expiry, the idle timeout (while the
//! client can send) and the connection-rotation notice — served by one timer.
//!
//! The session's task keeps one `sleep` armed for the nearest deadline ([`Deadlines::next`])
//! and asks which one passed when it fires ([`Deadlines::due`]). A frame from the client
//! only moves the idle deadline; a timer that fires early finds nothing due and is armed
//! again, so an idle session costs one timer, not one per deadline.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// A session's deadlines: credentials expiry, the idle timeout (while the client can send)
/// and the connection-rotation notice.
pub(crate) struct Deadlines {
    expiry: Option<Instant>,
    rotation: Option<Instant>,
    idle_timeout: Option<Duration>,
    last_frame: Instant,
}

/// Which deadline passed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    Expiry,
    Idle(Duration),
    Rotation,
}

impl Deadlines {
    pub(crate) fn new(
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
    pub(crate) fn active(&mut self) {
        if self.idle_timeout.is_some() {
            self.last_frame = Instant::now();
        }
    }

    fn idle(&self, inbound_open: bool) -> Option<Instant> {
        let timeout = self.idle_timeout.filter(|_| inbound_open)?;
        Some(self.last_frame + timeout)
    }

    /// The nearest deadline, or one far enough away to mean never.
    pub(crate) fn next(&self, inbound_open: bool) -> Instant {
        [self.expiry, self.rotation, self.idle(inbound_open)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + NEVER)
    }

    /// The deadline that passed by `now`, if one did; a rotation is due once.
    pub(crate) fn due(&mut self, now: Instant, inbound_open: bool) -> Option<Due> {
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

#[cfg(test)]
mod tests {
    use super::*;

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

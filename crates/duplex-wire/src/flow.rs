//! The flow-control view: each side's *send* window, per stream and for the connection,
//! as the frames seen on the wire move it (RFC 9113 §6.9).
//!
//! A side's stream windows start at the SETTINGS_INITIAL_WINDOW_SIZE its peer announced
//! (65,535 until then) and its connection window at 65,535; DATA it sends takes its whole
//! payload length from both; a WINDOW_UPDATE from its peer adds to one of them; a new
//! initial window shifts every open stream window by the difference. A side whose window
//! is at or below zero is *blocked*: it may not send DATA on that stream (or, for the
//! connection window, on any stream) until the peer opens the window again. The time
//! spent blocked is summed per window.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Direction;

/// The window size every stream and connection starts with (RFC 9113 §6.9.2).
pub const DEFAULT_WINDOW: i64 = 65_535;

/// Which window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The connection-level window (stream 0).
    Connection,
    /// The window of one stream.
    Stream(u32),
}

/// A change in a send window caused by one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowNote {
    /// `side`'s send window in `scope` is now `window` bytes.
    Window {
        /// The side whose send window moved.
        side: Direction,
        /// The window that moved.
        scope: Scope,
        /// Its size now, in bytes (negative after a SETTINGS shrink).
        window: i64,
    },
    /// `side` can send no more DATA in `scope` until its peer sends WINDOW_UPDATE.
    Blocked {
        /// The side that is blocked.
        side: Direction,
        /// The window that ran out.
        scope: Scope,
        /// Its size now, in bytes (zero or below).
        window: i64,
    },
    /// `side`'s window in `scope` opened again after being blocked for `after`.
    Unblocked {
        /// The side that may send again.
        side: Direction,
        /// The window that opened.
        scope: Scope,
        /// Its size now, in bytes.
        window: i64,
        /// How long it was blocked.
        after: Duration,
    },
}

#[derive(Clone, Copy, Debug)]
struct Window {
    size: i64,
    blocked_since: Option<Instant>,
    blocked_total: Duration,
}

impl Window {
    fn new(size: i64) -> Self {
        Self {
            size,
            blocked_since: None,
            blocked_total: Duration::ZERO,
        }
    }

    /// Moves the window by `delta`, noting a blocked/unblocked transition.
    fn shift(&mut self, delta: i64, now: Instant, side: Direction, scope: Scope) -> FlowNote {
        self.size = self.size.saturating_add(delta);
        let window = self.size;
        match self.blocked_since {
            None if window <= 0 => {
                self.blocked_since = Some(now);
                FlowNote::Blocked {
                    side,
                    scope,
                    window,
                }
            }
            Some(since) if window > 0 => {
                self.blocked_since = None;
                let after = now.saturating_duration_since(since);
                self.blocked_total += after;
                FlowNote::Unblocked {
                    side,
                    scope,
                    window,
                    after,
                }
            }
            _ => FlowNote::Window {
                side,
                scope,
                window,
            },
        }
    }

    fn blocked_until(&self, now: Instant) -> Duration {
        self.blocked_total
            + self
                .blocked_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }
}

/// Both sides' send windows for one connection and its open streams.
#[derive(Debug)]
pub struct FlowControl {
    connection: [Window; 2],
    /// Initial window for new streams, per sending side.
    initial: [i64; 2],
    streams: HashMap<u32, [Window; 2]>,
}

impl Default for FlowControl {
    fn default() -> Self {
        Self {
            connection: [Window::new(DEFAULT_WINDOW); 2],
            initial: [DEFAULT_WINDOW; 2],
            streams: HashMap::new(),
        }
    }
}

impl FlowControl {
    /// Starts tracking a stream (on its first HEADERS or PUSH_PROMISE).
    pub fn open_stream(&mut self, id: u32) {
        let initial = self.initial;
        self.streams
            .entry(id)
            .or_insert([Window::new(initial[0]), Window::new(initial[1])]);
    }

    /// Stops tracking a stream; returns the time each side spent blocked on it.
    pub fn close_stream(&mut self, id: u32, now: Instant) -> Option<[Duration; 2]> {
        let windows = self.streams.remove(&id)?;
        Some(windows.map(|w| w.blocked_until(now)))
    }

    /// `sender` sent a DATA frame taking `len` bytes of flow control on `stream`.
    pub fn data(
        &mut self,
        sender: Direction,
        stream: u32,
        len: u32,
        now: Instant,
    ) -> Vec<FlowNote> {
        let delta = -i64::from(len);
        let mut notes = Vec::with_capacity(2);
        if let Some(windows) = self.streams.get_mut(&stream) {
            notes.push(windows[sender.index()].shift(delta, now, sender, Scope::Stream(stream)));
        }
        notes.push(self.connection[sender.index()].shift(delta, now, sender, Scope::Connection));
        notes
    }

    /// `sender` sent WINDOW_UPDATE: its peer's window grows by `increment`.
    /// `None` when the stream is not tracked (closed or never opened).
    pub fn window_update(
        &mut self,
        sender: Direction,
        stream: u32,
        increment: u32,
        now: Instant,
    ) -> Option<FlowNote> {
        let side = sender.opposite();
        let delta = i64::from(increment);
        if stream == 0 {
            return Some(self.connection[side.index()].shift(delta, now, side, Scope::Connection));
        }
        let windows = self.streams.get_mut(&stream)?;
        Some(windows[side.index()].shift(delta, now, side, Scope::Stream(stream)))
    }

    /// `sender`'s SETTINGS_INITIAL_WINDOW_SIZE took effect (its peer acknowledged it):
    /// the peer's stream windows all move by the difference from the previous value.
    pub fn initial_window(&mut self, sender: Direction, value: u32, now: Instant) -> Vec<FlowNote> {
        let side = sender.opposite();
        let delta = i64::from(value) - self.initial[side.index()];
        self.initial[side.index()] = i64::from(value);
        if delta == 0 {
            return Vec::new();
        }
        let mut ids: Vec<u32> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| {
                let windows = self.streams.get_mut(&id)?;
                Some(windows[side.index()].shift(delta, now, side, Scope::Stream(id)))
            })
            .collect()
    }

    /// `side`'s current send window in `scope` (`None` for an untracked stream).
    pub fn window(&self, side: Direction, scope: Scope) -> Option<i64> {
        match scope {
            Scope::Connection => Some(self.connection[side.index()].size),
            Scope::Stream(id) => self.streams.get(&id).map(|w| w[side.index()].size),
        }
    }

    /// The initial stream window `side` currently sends under.
    pub fn initial_stream_window(&self, side: Direction) -> i64 {
        self.initial[side.index()]
    }

    /// Time `side` has spent blocked in `scope` up to `now` (`None` for an untracked stream).
    pub fn blocked_time(&self, side: Direction, scope: Scope, now: Instant) -> Option<Duration> {
        match scope {
            Scope::Connection => Some(self.connection[side.index()].blocked_until(now)),
            Scope::Stream(id) => self
                .streams
                .get(&id)
                .map(|w| w[side.index()].blocked_until(now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{ClientToServer as C2S, ServerToClient as S2C};

    #[test]
    fn data_takes_from_stream_and_connection_and_window_update_gives_back() {
        let t0 = Instant::now();
        let mut flow = FlowControl::default();
        flow.open_stream(1);
        let notes = flow.data(C2S, 1, 1000, t0);
        assert_eq!(
            notes,
            [
                FlowNote::Window {
                    side: C2S,
                    scope: Scope::Stream(1),
                    window: 64_535
                },
                FlowNote::Window {
                    side: C2S,
                    scope: Scope::Connection,
                    window: 64_535
                },
            ]
        );
        // The server's WINDOW_UPDATE grows the client's windows.
        assert_eq!(
            flow.window_update(S2C, 0, 1000, t0),
            Some(FlowNote::Window {
                side: C2S,
                scope: Scope::Connection,
                window: 65_535
            })
        );
        flow.window_update(S2C, 1, 10, t0);
        assert_eq!(flow.window(C2S, Scope::Stream(1)), Some(64_545));
        assert_eq!(flow.window(S2C, Scope::Stream(1)), Some(65_535));
        assert_eq!(flow.window_update(S2C, 9, 10, t0), None);
    }

    #[test]
    fn blocked_time_is_measured_between_zero_and_reopening() {
        let t0 = Instant::now();
        let mut flow = FlowControl::default();
        flow.initial_window(S2C, 100, t0); // the server allows 100 bytes per stream
        flow.open_stream(1);
        let notes = flow.data(C2S, 1, 100, t0);
        assert_eq!(
            notes[0],
            FlowNote::Blocked {
                side: C2S,
                scope: Scope::Stream(1),
                window: 0
            }
        );
        let t1 = t0 + Duration::from_millis(40);
        assert_eq!(
            flow.blocked_time(C2S, Scope::Stream(1), t1),
            Some(Duration::from_millis(40))
        );
        let note = flow.window_update(S2C, 1, 50, t1).unwrap();
        assert_eq!(
            note,
            FlowNote::Unblocked {
                side: C2S,
                scope: Scope::Stream(1),
                window: 50,
                after: Duration::from_millis(40)
            }
        );
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(
            flow.close_stream(1, t2),
            Some([Duration::from_millis(40), Duration::ZERO])
        );
    }

    #[test]
    fn a_new_initial_window_shifts_open_streams_and_may_go_negative() {
        let t0 = Instant::now();
        let mut flow = FlowControl::default();
        flow.open_stream(1);
        flow.data(C2S, 1, 60_000, t0);
        let notes = flow.initial_window(S2C, 1024, t0);
        assert_eq!(
            notes,
            [FlowNote::Blocked {
                side: C2S,
                scope: Scope::Stream(1),
                window: 5_535 + 1024 - 65_535
            }]
        );
        assert_eq!(flow.initial_stream_window(C2S), 1024);
        flow.open_stream(3);
        assert_eq!(flow.window(C2S, Scope::Stream(3)), Some(1024));
        assert_eq!(flow.window(S2C, Scope::Stream(3)), Some(65_535));
    }
}

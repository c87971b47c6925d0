//! `HubConfig`: the hub's bounds and policies. Every queue and count here has a bound and
//! a name; the server fills this from its flags.

use std::time::Duration;

/// What happens when a subscriber's outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LagPolicy {
    /// Send `lagged` with the last offset delivered per room, then end the session with
    /// RESOURCE_EXHAUSTED. The client resumes from history and loses nothing.
    #[default]
    Disconnect,
    /// Drop the oldest queued message and report the count in a `lagged` frame.
    DropOldest,
    /// Replace a queued message of the same room and key with the newer one (game state,
    /// dashboards); messages without a key fall back to drop-oldest.
    LatestPerKey,
}

impl std::str::FromStr for LagPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "disconnect" => Ok(LagPolicy::Disconnect),
            "drop-oldest" => Ok(LagPolicy::DropOldest),
            "latest-per-key" => Ok(LagPolicy::LatestPerKey),
            other => Err(format!(
                "unknown lag policy `{other}`: use disconnect, drop-oldest or latest-per-key"
            )),
        }
    }
}

/// Bounds and policies of a [`crate::Hub`].
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Live frames one subscriber may have queued before its lag policy fires.
    pub queue_frames: usize,
    /// Bytes of live frames one subscriber may have queued before its lag policy fires.
    pub queue_bytes: usize,
    /// What to do when a subscriber's queue is full.
    pub lag_policy: LagPolicy,
    /// Largest payload a publish may carry.
    pub max_payload: usize,
    /// Rooms one session may have joined at once.
    pub max_rooms_per_session: usize,
    /// Publishes one session may have waiting for durability; past it, the session's
    /// inbound stream is not read, so HTTP/2 flow control pushes back on the publisher.
    pub publish_window: usize,
    /// Publishes queued for the sequencer across all sessions.
    pub sequencer_queue: usize,
    /// Most publishes the sequencer appends in one store commit.
    pub max_batch: usize,
    /// Messages read from the store per page while replaying history.
    pub replay_page: usize,
    /// Bytes read from the store per page while replaying history (a first message over it
    /// comes alone). A replay holds one page while the client drains its queue, so a reader
    /// that stops pins at most this plus `queue_bytes` of replayed frames.
    pub replay_page_bytes: usize,
    /// Members a room lists (in `joined`, `Presence` and presence events). Past it, members
    /// are counted, not listed, and their joins and leaves send no event: what one join
    /// costs (its `joined` reply, the events it fans out) stays bounded however big the
    /// crowd.
    pub max_presence_listed: usize,
    /// Most messages one `History` call returns.
    pub max_history_page: usize,
    /// Most bytes of messages one `History` call returns (a first message over it comes
    /// alone): the response is built whole and held until the client reads it, and it must
    /// fit the client's message limit (4 MiB in most gRPC clients).
    pub max_history_bytes: usize,
    /// How often retention by age is enforced.
    pub retention_sweep: Duration,
    /// Publishes per second one identity ([`crate::Identity::quota_key`]) may sustain
    /// across all its sessions and unary calls (token bucket); `None` = no limit.
    pub publish_rate: Option<u32>,
    /// Publishes one identity may make in a burst above the rate.
    pub publish_burst: u32,
    /// Most identities the publish rate limiter tracks at once (bounds its memory, about
    /// 200 bytes each); see `limiter.rs` for what happens when they are all busy.
    pub rate_limited_identities: usize,
    /// A `Connect` session that sends nothing (not even a ping) for this long is ended.
    pub idle_timeout: Option<Duration>,
    /// A stream (session or `Subscribe`) whose oldest queued frame waits this long for the
    /// client to read is ended: `lagged` per room, then RESOURCE_EXHAUSTED. `None` = never.
    pub send_stall_timeout: Option<Duration>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            queue_frames: 4096,
            queue_bytes: 8 << 20,
            lag_policy: LagPolicy::Disconnect,
            max_payload: 1 << 20,
            max_rooms_per_session: 100,
            publish_window: 256,
            sequencer_queue: 16 * 1024,
            // Below `queue_frames`: one batch fans out at once, and a burst must not look
            // like a lagging subscriber.
            max_batch: 1024,
            replay_page: 1024,
            replay_page_bytes: 2 << 20,
            max_presence_listed: 1000,
            max_history_page: 1000,
            max_history_bytes: 2 << 20,
            retention_sweep: Duration::from_secs(60),
            publish_rate: None,
            publish_burst: 0,
            rate_limited_identities: 100_000,
            idle_timeout: None,
            send_stall_timeout: Some(Duration::from_secs(30)),
        }
    }
}

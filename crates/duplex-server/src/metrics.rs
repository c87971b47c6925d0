//! `/metrics`: the Prometheus registry, every metric's name, type, labels and help, and
//! the one [`Collector`] that reads the counters where they are kept at scrape time.
//!
//! Counts are made where the events happen, as plain atomics: the engine's in
//! [`HubCounters`] (publishes, acks, fan-out, queues, lag, resume), the store's in
//! [`StoreCounters`](duplex_store::StoreCounters) (fsync, failures), the server's in
//! [`ServerCounters`] (connections, streams, messages, auth, GOAWAYs). Nothing on a
//! message's path looks up a label or takes a lock: labels are fixed arrays indexed by an
//! enum, and what every worker thread counts per message is a [`ShardedCounter`] (one
//! relaxed add on the thread's own cache line), summed here. Labels are bounded: methods,
//! services, reasons and the lag policy, never a room, peer or identity.
//!
//! The `process_*` metrics (CPU, memory, descriptors, start time) are read from
//! `/proc/self` at scrape time (Linux; elsewhere they are left out).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use duplex_hub::{Hub, HubCounters, LagPolicy, ShardedCounter};
use duplex_store::HistogramSnapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The content type of the classic Prometheus text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The gRPC methods streams are counted by (`service`, `method` labels); anything else
/// counts as `other`. Fixed, so a client naming made-up methods adds no series.
const METHODS: &[(&str, &str, &str)] = &[
    // The article's package-less `/Chat/Chat` counts here too (`edge::names_path`).
    ("/chat.Chat/Chat", "chat.Chat", "Chat"),
    ("/duplex.v1.Hub/Connect", "duplex.v1.Hub", "Connect"),
    ("/duplex.v1.Hub/Subscribe", "duplex.v1.Hub", "Subscribe"),
    ("/duplex.v1.Hub/Publish", "duplex.v1.Hub", "Publish"),
    ("/duplex.v1.Hub/History", "duplex.v1.Hub", "History"),
    ("/duplex.v1.Hub/Presence", "duplex.v1.Hub", "Presence"),
    ("/duplex.v1.Hub/WatchStats", "duplex.v1.Hub", "WatchStats"),
    (
        "/grpc.health.v1.Health/Check",
        "grpc.health.v1.Health",
        "Check",
    ),
    (
        "/grpc.health.v1.Health/Watch",
        "grpc.health.v1.Health",
        "Watch",
    ),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
    ),
];

/// A service whose messages the server counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Service {
    /// `chat.Chat`.
    Chat = 0,
    /// `duplex.v1.Hub` (streamed messages: `Connect` frames; frames sent are the hub's).
    Hub = 1,
}

/// The `service` label of each [`Service`].
const SERVICES: [&str; 2] = ["chat.Chat", "duplex.v1.Hub"];

/// Why a connection was refused, as the `reason` label.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    /// `--max-connections` reached.
    MaxConnections = 0,
    /// `--max-connections-per-ip` reached.
    MaxConnectionsPerIp = 1,
    /// The worker it was handed to had a full backlog.
    WorkerBacklog = 2,
}

const REFUSALS: [&str; 3] = [
    "max_connections",
    "max_connections_per_ip",
    "worker_backlog",
];

/// Why a caller was not identified, as the `reason` label.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AuthFailure {
    /// Tokens are required and none was sent.
    MissingToken = 0,
    /// The `authorization` header is not `Bearer <token>`.
    MalformedHeader = 1,
    /// The token does not verify, has expired or its claims are unusable.
    InvalidToken = 2,
}

const AUTH_FAILURES: [&str; 3] = ["missing_token", "malformed_header", "invalid_token"];

impl From<&crate::auth::AuthError> for AuthFailure {
    fn from(error: &crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match error {
            AuthError::MissingToken => AuthFailure::MissingToken,
            AuthError::MalformedHeader(_) => AuthFailure::MalformedHeader,
            AuthError::InvalidToken(_) => AuthFailure::InvalidToken,
        }
    }
}

/// Why the server sent GOAWAY, as the `reason` label.
#[derive(Debug, Clone, Copy)]
pub(crate) enum GoAway {
    /// The client pinged too often (ENHANCE_YOUR_CALM "too_many_pings", from the guard).
    TooManyPings = 0,
    /// The connection reached `--max-connection-age`.
    MaxConnectionAge = 1,
    /// The server is shutting down.
    Shutdown = 2,
}

const GOAWAYS: [&str; 3] = ["too_many_pings", "max_connection_age", "shutdown"];

/// What the server counts: connections, streams, messages of the services it decodes
/// itself, auth failures, GOAWAYs and keepalive timeouts. One per [`App`](crate::App),
/// shared by every listener and worker.
#[derive(Debug, Default)]
pub(crate) struct ServerCounters {
    /// Connections open now on every listener (gauge): admitted and not yet closed.
    open: AtomicI64,
    /// Connections admitted since start.
    accepted: AtomicU64,
    /// Connections refused, by [`Refusal`].
    refused: [AtomicU64; REFUSALS.len()],
    /// gRPC streams (calls) started, by [`METHODS`] index, `other` last.
    streams: [ShardedCounter; METHODS.len() + 1],
    /// Messages received, by [`Service`].
    received: [ShardedCounter; SERVICES.len()],
    /// Their bytes (the protobuf message, without the 5-byte gRPC prefix).
    received_bytes: [ShardedCounter; SERVICES.len()],
    /// Messages sent by `chat.Chat` (the hub's are in [`HubCounters`]).
    chat_sent: ShardedCounter,
    /// Their bytes.
    chat_sent_bytes: ShardedCounter,
    /// Callers refused for their credentials, by [`AuthFailure`].
    auth_failures: [AtomicU64; AUTH_FAILURES.len()],
    /// GOAWAYs sent, by [`GoAway`].
    goaways: [AtomicU64; GOAWAYS.len()],
    /// Connections closed because a keepalive PING went unanswered.
    keepalive_timeouts: AtomicU64,
}

impl ServerCounters {
    /// A connection was admitted.
    pub(crate) fn connection_opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// An admitted connection is gone.
    pub(crate) fn connection_closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection was refused.
    pub(crate) fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A gRPC call to `path` started.
    pub(crate) fn stream_started(&self, path: &str) {
        let index = METHODS
            .iter()
            .position(|(known, _, _)| crate::edge::names_path(path, known))
            .unwrap_or(METHODS.len());
        self.streams[index].add(1);
    }

    /// A message of `bytes` was received by `service`.
    #[inline]
    pub(crate) fn received(&self, service: Service, bytes: usize) {
        self.received[service as usize].add(1);
        self.received_bytes[service as usize].add(bytes as u64);
    }

    /// `chat.Chat` sent a message of `bytes`.
    #[inline]
    pub(crate) fn chat_sent(&self, bytes: usize) {
        self.chat_sent.add(1);
        self.chat_sent_bytes.add(bytes as u64);
    }

    /// A caller was refused for its credentials.
    pub(crate) fn auth_failed(&self, why: AuthFailure) {
        self.auth_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A GOAWAY was sent.
    pub(crate) fn goaway(&self, why: GoAway) {
        self.goaways[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ended because its keepalive PING went unanswered.
    pub(crate) fn keepalive_timeout(&self) {
        self.keepalive_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages `chat.Chat` sent since start.
    pub(crate) fn chat_messages_sent(&self) -> u64 {
        self.chat_sent.total()
    }

    /// Connections open now.
    pub(crate) fn open_connections(&self) -> u64 {
        u64::try_from(self.open.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// The registry and what it reads; built once per [`App`](crate::App).
pub(crate) struct Metrics {
    /// Holds the one [`DuplexCollector`].
    registry: Registry,
    /// The server's own counters, handed to listeners and services.
    counters: Arc<ServerCounters>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The registry over `hub` (its engine's and store's counters) and new server counters.
    pub(crate) fn new(hub: Hub, lag_policy: LagPolicy) -> Self {
        let counters = Arc::new(ServerCounters::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(DuplexCollector {
            hub,
            server: counters.clone(),
            policy: lag_policy_label(lag_policy),
        }));
        Self { registry, counters }
    }

    /// The server's counters, for listeners and services to count into.
    pub(crate) fn counters(&self) -> &Arc<ServerCounters> {
        &self.counters
    }

    /// Every metric, in the classic Prometheus text format ([`CONTENT_TYPE`]).
    pub(crate) fn render(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String fails only if a collector fails, and ours do not.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::warn!(%error, "encoding /metrics failed");
        }
        text
    }
}

/// The `policy` label: the configured lag policy, as `--lag-policy` names it.
fn lag_policy_label(policy: LagPolicy) -> &'static str {
    match policy {
        LagPolicy::Disconnect => "disconnect",
        LagPolicy::DropOldest => "drop-oldest",
        LagPolicy::LatestPerKey => "latest-per-key",
    }
}

/// Reads every counter at scrape time; see the module docs.
#[derive(Debug)]
struct DuplexCollector {
    hub: Hub,
    server: Arc<ServerCounters>,
    /// The lag policy's label (one policy per server).
    policy: &'static str,
}

/// Seconds per nanosecond, for histograms kept in nanoseconds.
const NANOS: f64 = 1e-9;

/// Writes `name` as a counter with one value.
fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Writes `name` as a gauge with one value.
fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Writes `name` as a counter with one series per `(label value, value)`.
fn counter_family<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value_label, value) in series {
        let labels = [(label, value_label)];
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

/// Writes `name` as a histogram from a snapshot, its values times `scale`.
fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    snapshot: &HistogramSnapshot,
    scale: f64,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = snapshot
        .counts
        .iter()
        .enumerate()
        .map(|(index, count)| {
            let bound = snapshot
                .bounds
                .get(index)
                .map_or(f64::INFINITY, |bound| *bound as f64 * scale);
            (bound, *count)
        })
        .collect();
    encoder
        .encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(
            snapshot.sum as f64 * scale,
            snapshot.count(),
            &buckets,
            None,
        )
}

impl Collector for DuplexCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        let server = &*self.server;
        let hub: &HubCounters = self.hub.counters();
        let stats = self.hub.stats();

        // Connections.
        gauge(
            e,
            "duplex_connections_open",
            "Connections open now, on the gRPC and web listeners.",
            server.open_connections() as i64,
        )?;
        counter(
            e,
            "duplex_connections_accepted",
            "Connections admitted since start, on the gRPC and web listeners.",
            server.accepted.load(Ordering::Relaxed),
        )?;
        counter_family(
            e,
            "duplex_connections_refused",
            "Connections refused since start, by reason.",
            "reason",
            REFUSALS
                .iter()
                .zip(&server.refused)
                .map(|(reason, count)| (*reason, count.load(Ordering::Relaxed))),
        )?;
        counter_family(
            e,
            "duplex_goaways",
            "GOAWAY frames the server sent, by reason.",
            "reason",
            GOAWAYS
                .iter()
                .zip(&server.goaways)
                .map(|(reason, count)| (*reason, count.load(Ordering::Relaxed))),
        )?;
        counter(
            e,
            "duplex_keepalive_timeouts",
            "Connections closed because a keepalive PING went unanswered.",
            server.keepalive_timeouts.load(Ordering::Relaxed),
        )?;

        // Streams and messages.
        {
            let mut metric = e.encode_descriptor(
                "duplex_streams_started",
                "gRPC calls started, by service and method (unknown methods as `other`).",
                None,
                MetricType::Counter,
            )?;
            for (index, count) in server.streams.iter().enumerate() {
                let value = count.total();
                let (service, method) = METHODS
                    .get(index)
                    .map_or(("other", "other"), |(_, service, method)| {
                        (*service, *method)
                    });
                let labels = [("service", service), ("method", method)];
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
        }
        let hub_received = server.received[Service::Hub as usize].total();
        let chat_received = server.received[Service::Chat as usize].total();
        counter_family(
            e,
            "duplex_messages_received",
            "Streamed messages received, by service (Hub: Connect frames and Subscribe \
             requests).",
            "service",
            [(SERVICES[0], chat_received), (SERVICES[1], hub_received)],
        )?;
        counter_family(
            e,
            "duplex_received_bytes",
            "Bytes of streamed messages received (without the gRPC prefix), by service.",
            "service",
            [
                (SERVICES[0], server.received_bytes[0].total()),
                (SERVICES[1], server.received_bytes[1].total()),
            ],
        )?;
        counter_family(
            e,
            "duplex_messages_sent",
            "Streamed messages sent, by service (Hub: frames of Connect and Subscribe \
             streams, over gRPC, gRPC-Web and WebSocket).",
            "service",
            [
                (SERVICES[0], server.chat_sent.total()),
                (SERVICES[1], hub.frames_sent()),
            ],
        )?;
        counter_family(
            e,
            "duplex_sent_bytes",
            "Bytes of streamed messages sent (without the gRPC prefix), by service.",
            "service",
            [
                (SERVICES[0], server.chat_sent_bytes.total()),
                (SERVICES[1], hub.bytes_sent()),
            ],
        )?;
        counter_family(
            e,
            "duplex_auth_failures",
            "Calls refused for their credentials (UNAUTHENTICATED), by reason.",
            "reason",
            AUTH_FAILURES
                .iter()
                .zip(&server.auth_failures)
                .map(|(reason, count)| (*reason, count.load(Ordering::Relaxed))),
        )?;

        // The hub.
        gauge(
            e,
            "duplex_rooms",
            "Rooms loaded now (held by a subscriber, a publish or a replay).",
            stats.rooms as i64,
        )?;
        gauge(
            e,
            "duplex_sessions",
            "Hub sessions open now (Connect and Subscribe streams, WebSockets).",
            stats.sessions as i64,
        )?;
        counter(
            e,
            "duplex_sessions_opened",
            "Hub sessions opened since start.",
            hub.sessions_opened(),
        )?;
        counter(
            e,
            "duplex_messages_published",
            "Room messages stored and acked (not counting repeats of a client message id).",
            hub.published(),
        )?;
        counter(
            e,
            "duplex_published_bytes",
            "Payload bytes of the room messages stored and acked.",
            hub.published_bytes(),
        )?;
        counter(
            e,
            "duplex_publish_duplicates",
            "Publishes acked as repeats of a client message id, stored once before.",
            hub.duplicates(),
        )?;
        counter(
            e,
            "duplex_publish_failures",
            "Publishes that failed in the store (UNAVAILABLE).",
            hub.publish_failures(),
        )?;
        histogram(
            e,
            "duplex_publish_ack_seconds",
            "From a publish queued for the sequencer to its ack (durable and fanned out).",
            &hub.publish_ack_nanos(),
            NANOS,
        )?;
        histogram(
            e,
            "duplex_store_commit_seconds",
            "One group commit of the sequencer's batch to the store, as the hub waits for it.",
            &hub.commit_nanos(),
            NANOS,
        )?;
        histogram(
            e,
            "duplex_store_commit_messages",
            "Messages per group commit.",
            &hub.commit_messages(),
            1.0,
        )?;
        if let Some(store) = self.hub.store_counters() {
            histogram(
                e,
                "duplex_store_fsync_seconds",
                "The embedded store's durable commit call (page writes and fsync).",
                &store.fsync_nanos(),
                NANOS,
            )?;
            counter(
                e,
                "duplex_store_commit_failures",
                "Group commits that failed (every publish in them got UNAVAILABLE).",
                store.failed_commits(),
            )?;
            gauge(
                e,
                "duplex_store_available",
                "1 while the store takes writes, 0 from a failed commit until one succeeds.",
                i64::from(store.available()),
            )?;
        }
        counter(
            e,
            "duplex_fanout_deliveries",
            "Room messages put into subscriber queues (one per subscriber per message).",
            hub.deliveries(),
        )?;
        gauge(
            e,
            "duplex_subscriber_queued_frames",
            "Frames waiting in every subscriber queue now.",
            hub.queued_frames(),
        )?;
        gauge(
            e,
            "duplex_subscriber_queued_bytes",
            "Bytes of the frames waiting in every subscriber queue now.",
            hub.queued_bytes(),
        )?;
        counter_family(
            e,
            "duplex_subscribers_lagged",
            "Subscribers whose queue was full when a live message came (once each), by the \
             lag policy.",
            "policy",
            [(self.policy, hub.lagged_subscribers())],
        )?;
        counter_family(
            e,
            "duplex_subscriber_messages_dropped",
            "Live messages dropped for lagging subscribers, by the lag policy.",
            "policy",
            [(self.policy, hub.dropped_messages())],
        )?;
        {
            let mut metric = e.encode_descriptor(
                "duplex_subscribers_disconnected",
                "Subscribers ended by the server: lagged (policy disconnect) or stalled \
                 (read nothing for the send-stall timeout).",
                None,
                MetricType::Counter,
            )?;
            for (reason, value) in [
                ("lagged", hub.disconnected_lagged()),
                ("stalled", hub.disconnected_stalled()),
            ] {
                let labels = [("policy", self.policy), ("reason", reason)];
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
        }
        counter(
            e,
            "duplex_resumes",
            "Joins that resumed from an offset (replaying history, then live).",
            hub.resumes(),
        )?;
        counter(
            e,
            "duplex_resume_replayed_messages",
            "History messages replayed to resuming subscribers.",
            hub.replayed_messages(),
        )?;

        process::encode(e)
    }
}

/// The standard `process_*` metrics, from `/proc/self`.
mod process {
    use super::gauge;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
    use prometheus_client::metrics::counter::ConstCounter;

    /// What `/proc/self/stat` and friends say now; `None` where unreadable.
    #[derive(Debug, Default)]
    struct Sample {
        cpu_seconds: Option<f64>,
        resident_bytes: Option<u64>,
        virtual_bytes: Option<u64>,
        start_time_seconds: Option<f64>,
        open_fds: Option<u64>,
        max_fds: Option<u64>,
    }

    fn sample() -> Sample {
        let mut sample = Sample::default();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            // The command name may hold spaces and parentheses: fields start after the last ')'.
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            // rest starts at field 3 (state); utime is field 14.
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
            if ticks > 0 {
                let ticks = ticks as f64;
                if let (Some(user), Some(system)) = (field(14), field(15)) {
                    sample.cpu_seconds = Some((user + system) as f64 / ticks);
                }
                if let (Some(start), Some(boot)) = (field(22), boot_time()) {
                    sample.start_time_seconds = Some(boot as f64 + start as f64 / ticks);
                }
            }
            sample.virtual_bytes = field(23);
            if page > 0 {
                sample.resident_bytes = field(24).map(|pages| pages * page as u64);
            }
        }
        sample.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid rlimit to fill.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            sample.max_fds = Some(limit.rlim_cur);
        }
        sample
    }

    /// The boot time, seconds since the epoch (`btime` in `/proc/stat`).
    fn boot_time() -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|value| value.trim().parse().ok())
    }

    pub(super) fn encode(e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let sample = sample();
        if let Some(seconds) = sample.cpu_seconds {
            let metric = ConstCounter::new(seconds);
            metric.encode(e.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Some(bytes) = sample.resident_bytes {
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                bytes as i64,
            )?;
        }
        if let Some(bytes) = sample.virtual_bytes {
            gauge(
                e,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                bytes as i64,
            )?;
        }
        if let Some(fds) = sample.open_fds {
            // The read_dir itself holds one descriptor while counting.
            gauge(
                e,
                "process_open_fds",
                "Number of open file descriptors.",
                fds.saturating_sub(1) as i64,
            )?;
        }
        if let Some(fds) = sample.max_fds {
            gauge(
                e,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                i64::try_from(fds).unwrap_or(i64::MAX),
            )?;
        }
        if let Some(start) = sample.start_time_seconds {
            let metric = prometheus_client::metrics::gauge::ConstGauge::new(start);
            metric.encode(e.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                metric.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_less_chat_path_counts_as_chat_chat() {
        let counters = ServerCounters::default();
        counters.stream_started("/Chat/Chat");
        counters.stream_started("/chat.Chat/Chat");
        counters.stream_started("/made.Up/Method");
        assert_eq!(counters.streams[0].total(), 2, "chat.Chat/Chat");
        assert_eq!(counters.streams[METHODS.len()].total(), 1, "other");
    }
}

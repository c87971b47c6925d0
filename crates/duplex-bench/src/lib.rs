//! The load generator behind `duplex bench`.
//!
//! Scenarios ([`Scenario`]): `echo-pingpong` (one message in flight per stream),
//! `echo-stream` (N in flight per stream, M streams over C connections), `fanout`
//! (P publishers, S subscribers over C connections, R rooms), `resume` (one subscriber
//! catches up K stored messages) and `idle` (S joined sessions held; server RSS per session).
//! Two more measure NATS with the same shape, as the peer users would pick instead for rooms
//! (module `nats`): `nats-fanout` (core NATS) and `nats-publish` (JetStream).
//!
//! The client is built to cost less than the server it measures, so that on a small machine
//! the figures are the server's: it speaks HTTP/2 with the `h2` crate directly, sends
//! messages encoded once up front (a pipelined refill of k messages is one slice of one
//! buffer, one DATA frame), splits replies into gRPC messages without decoding protobuf
//! (a hand-written field walker reads the few hub fields it needs), and runs every stream of
//! a connection inside one task, so no message crosses a task or a channel. Connections are
//! spread over `--threads` single-threaded runtimes.
//!
//! Latency goes into HDR histograms ([`hdrhistogram`]). With `--rate`, each message has an
//! intended send time on a fixed schedule and latency is measured from that time, so a
//! stalled server is charged for every message it delayed, not just the one it stalled on
//! (coordinated-omission correction, as wrk2 does). Without `--rate` the load is closed-loop
//! and latency is service time. Throughput, errors by gRPC status code, and — with
//! `--server-pid` — the server's CPU time per message and its RSS, read from `/proc`,
//! complete the [`Report`]. Every run is bounded by `--duration` and, optionally, by
//! `--messages`.

mod clock;
mod echo;
mod grpc;
mod hub;
mod nats;
mod os;
mod progress;
mod report;
mod runner;
mod websocket;

use std::time::Duration;

pub use report::{LatencySummary, Report};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Chat echo, one message in flight per stream: round trips per second.
    EchoPingpong,
    /// Chat echo, `--in-flight` messages in flight per stream: messages per second.
    EchoStream,
    /// Rooms: publishers publish, every subscriber of the room receives; deliveries per second
    /// and latency from the publish time carried in each payload.
    Fanout,
    /// Rooms: store `--history` messages, then one subscriber joins from offset 0 and reads
    /// them all: replayed messages per second.
    Resume,
    /// Rooms: open `--sessions` sessions, join each to a room, hold them; server RSS per session.
    Idle,
    /// Core NATS at `--nats`: publishers publish to `--subjects` subjects, every subscriber
    /// of the subject receives; deliveries per second, latency from the publish time carried
    /// in each payload. Messages lost to slow-consumer cut-offs count as errors.
    NatsFanout,
    /// JetStream at `--nats`: publishers publish to a file-storage stream the run creates
    /// (and deletes), `--in-flight` each waiting for their PubAck; acked publishes per second.
    NatsPublish,
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::EchoPingpong => "echo-pingpong",
            Scenario::EchoStream => "echo-stream",
            Scenario::Fanout => "fanout",
            Scenario::Resume => "resume",
            Scenario::Idle => "idle",
            Scenario::NatsFanout => "nats-fanout",
            Scenario::NatsPublish => "nats-publish",
        }
    }
}

/// How `fanout` subscribers reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// `Hub.Connect` streams over HTTP/2 on the gRPC port.
    Grpc,
    /// WebSockets to `/ws` on the web listener, one binary message per frame.
    Ws,
}

/// Arguments of `duplex bench`. `duplex bench --help` is the reference.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// Server address: HOST:PORT, a host alone (port 50051) or a port alone (localhost).
    /// Fanout and resume also take several, comma-separated (the nodes of a cluster):
    /// fanout puts subscriber connection c on the c-th and publisher p on the p-th (modulo
    /// their count); resume stores through the first and replays from the last.
    #[arg(long, default_value = "localhost:50051", env = "DUPLEX_ADDR")]
    pub addr: String,

    /// Method path of the echo scenarios (`/Chat/Chat` for a server built from the
    /// package-less proto).
    #[arg(long, default_value = "/chat.Chat/Chat")]
    pub path: String,

    /// TCP connections. Echo: streams are spread over them. Fanout and idle: subscriber
    /// sessions are spread over them (publishers get their own).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,

    /// Echo: concurrent streams (calls), spread over `--connections`.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,

    /// Echo-stream: messages in flight per stream (default 64; echo-pingpong is always 1).
    /// Fanout, nats-publish and resume setup: publishes in flight per publisher, waiting for
    /// acks (default 64). Nats-fanout (core NATS has no acks): publishes written per batch.
    #[arg(long)]
    pub in_flight: Option<usize>,

    /// Stop after this long (measured after `--warmup`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Stop after sending this many messages (echo: requests; fanout: publishes), counted
    /// after `--warmup`. Whichever of this and `--duration` comes first ends the run.
    #[arg(long)]
    pub messages: Option<u64>,

    /// Open-loop load: this many messages per second in total (echo: requests; fanout:
    /// publishes), on a fixed schedule. Latency is then measured from each message's
    /// scheduled time (corrected for coordinated omission). Without it the load is closed-loop.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Run this long before measuring (not counted, not recorded).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Bytes of each message's text (echo) or payload (fanout, resume; at least 8: the publish
    /// time travels in the first 8 bytes).
    #[arg(long)]
    pub size: Option<usize>,

    /// Fanout and the NATS scenarios: publishing sessions (NATS: connections).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,

    /// Fanout and nats-fanout: subscribing sessions (NATS: subscriptions, spread over
    /// `--connections`).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,

    /// Fanout and idle: rooms; publishers and sessions are assigned round-robin.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,

    /// Fanout and nats-fanout: messages a room's (a subject's) publishers may be ahead of
    /// its subscribers (deliveries outstanding ≤ window × subscribers). Keeps a closed-loop
    /// run under the server's queue bound, so what is measured is throughput and not
    /// lag-outs (NATS: slow-consumer cut-offs).
    #[arg(long, default_value_t = 512)]
    pub window: u64,

    /// Fanout: give every publish a client message id, unique in its room, as
    /// `duplex-client` does; the server then checks and records each one in its dedupe
    /// index (`--dedupe-window`). Without it publishes carry none and skip dedupe.
    #[arg(long)]
    pub client_ids: bool,

    /// Resume: messages stored before the subscriber joins and replays them.
    #[arg(long, default_value_t = 100_000)]
    pub history: u64,

    /// Idle: sessions to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,

    /// The server's process id: report its CPU time per message and its RSS (from /proc).
    /// Several (comma-separated or repeated: a cluster's nodes and NATS servers): their sum,
    /// and each one's in `server.processes`.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// Client threads, each a single-threaded runtime owning some connections.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// After the load stops, wait at most this long for what is still in flight.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Give up connecting after this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Connect with TLS, trusting this CA certificate (PEM) for the server.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,

    /// Name the server's certificate must carry (default: the host in --addr).
    #[arg(long, requires = "ca")]
    pub tls_domain: Option<String>,

    /// JWT sent as `authorization: Bearer …` on every call (the `duplex bench` command
    /// fills it from `--token`, `--token-file` or `DUPLEX_TOKEN`).
    #[arg(skip)]
    pub token: Option<String>,

    /// `fanout`: how subscribers connect. `grpc`: `Hub.Connect` streams on `--addr`;
    /// `ws`: one WebSocket per subscriber to `/ws` on `--web-target` (publishers stay on
    /// gRPC). Each WebSocket is its own TCP connection: raise the server's
    /// `--max-connections-per-ip` above the subscriber count.
    #[arg(long, value_enum, default_value = "grpc")]
    pub transport: Transport,

    /// The server's web listener, HOST:PORT (what `duplex serve` prints as `web on URL`),
    /// for `--transport ws`.
    #[arg(long, default_value = "localhost:8080")]
    pub web_target: String,

    /// The NATS scenarios: the server, `nats://HOST:PORT`, or several comma-separated
    /// (a cluster: connection i goes to the i-th modulo their count).
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222",
        env = "DUPLEX_BENCH_NATS"
    )]
    pub nats: String,

    /// The NATS scenarios: subjects; publishers and subscribers are assigned round-robin
    /// (as `--rooms` for the room scenarios).
    #[arg(long, default_value_t = 1)]
    pub subjects: usize,

    /// Nats-publish: replicas of the stream the run creates (3 on a 3-node cluster).
    #[arg(long, default_value_t = 1)]
    pub nats_replicas: usize,

    /// Nats-publish: keep the stream after the run (its name is in the report) instead of
    /// deleting it.
    #[arg(long)]
    pub keep_stream: bool,

    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,

    /// No progress output on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    /// Defaults for `scenario` against `addr`, as `duplex bench SCENARIO --addr ADDR` gives.
    pub fn new(scenario: Scenario, addr: impl Into<String>) -> Self {
        use clap::Parser as _;

        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: BenchArgs,
        }
        let mut args = Defaults::parse_from(["bench", scenario.name()]).args;
        args.addr = addr.into();
        args
    }

    /// The servers in `--addr`, in order.
    pub(crate) fn addrs(&self) -> Vec<String> {
        self.addr
            .split(',')
            .map(str::trim)
            .filter(|addr| !addr.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Messages in flight per stream (echo) or per publisher (fanout).
    pub(crate) fn in_flight(&self) -> usize {
        match self.scenario {
            Scenario::EchoPingpong => 1,
            _ => self.in_flight.unwrap_or(64).max(1),
        }
    }

    /// Message text (echo) or payload (hub) size in bytes.
    pub(crate) fn size(&self) -> usize {
        match self.scenario {
            Scenario::EchoPingpong | Scenario::EchoStream => self.size.unwrap_or(16),
            _ => self.size.unwrap_or(64).max(8),
        }
    }
}

/// Errors that stop a run before it measures anything.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The server could not be reached.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// The arguments do not describe a run (a zero count, a size too small, …).
    #[error("invalid arguments: {0}")]
    Arguments(String),
    /// Preparing the run failed (joining rooms, storing history, …).
    #[error("setup failed: {0}")]
    Setup(String),
}

/// Runs one scenario to its end and returns the report. Blocking: it starts its own
/// runtimes on `--threads` threads (call it from `spawn_blocking` inside async code).
pub fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    if args.connections == 0 || args.streams == 0 || args.threads == 0 {
        return Err(BenchError::Arguments(
            "--connections, --streams and --threads must be at least 1".into(),
        ));
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(BenchError::Arguments(
            "--rate must be a positive number".into(),
        ));
    }
    let addrs = args.addrs();
    if addrs.is_empty() {
        return Err(BenchError::Arguments("--addr is empty".into()));
    }
    if addrs.len() > 1 && !matches!(args.scenario, Scenario::Fanout | Scenario::Resume) {
        return Err(BenchError::Arguments(format!(
            "several --addr are for fanout and resume; {} takes one",
            args.scenario.name()
        )));
    }
    if args.transport == Transport::Ws && args.scenario != Scenario::Fanout {
        return Err(BenchError::Arguments(
            "--transport ws is for fanout (its subscribers); the other scenarios speak gRPC".into(),
        ));
    }
    clock::start();
    match args.scenario {
        Scenario::EchoPingpong | Scenario::EchoStream => echo::run(args),
        Scenario::Fanout => hub::fanout(args),
        Scenario::Resume => hub::resume(args),
        Scenario::Idle => hub::idle(args),
        Scenario::NatsFanout => nats::fanout(args),
        Scenario::NatsPublish => nats::publish(args),
    }
}

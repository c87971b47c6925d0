//! `ServeConfig`: every knob of `duplex serve`, with its default and its `--help` text.
//!
//! The HTTP/2 knobs are the article's: flow-control windows, frame size, concurrent
//! streams, keepalive. Defaults are chosen for a real-time server that holds many
//! long-lived streams, not copied from tonic (whose stream limit and keepalive are off).

use std::time::Duration;

/// Configuration of `duplex serve`. `--help` is the reference for every field.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on, as HOST:PORT (a port alone means localhost:PORT). A host name
    /// listens on every address it resolves to (`localhost` = 127.0.0.1 and `[::1]` where
    /// both exist); `0.0.0.0` or `[::]` is every interface. Port 0 picks a free port; the
    /// chosen addresses are printed as `listening on ADDR`.
    #[arg(long, default_value = "localhost:50051", env = "DUPLEX_LISTEN", value_parser = parse_listen_address)]
    #[arg(help_heading = "Listen")]
    pub listen: String,

    /// Address of the web listener, as HOST:PORT, or `off`: HTTP/1.1 and HTTP/2 for
    /// browsers and operators (the page, WebSocket, gRPC-Web, health, metrics), beside the gRPC port. Same TLS, same
    /// connection limits. Printed at start as `web on URL`.
    #[arg(long, default_value = "localhost:8080", env = "DUPLEX_WEB_LISTEN", value_parser = parse_web_listen_address)]
    #[arg(help_heading = "Web/ops")]
    pub web_listen: String,

    /// Allow pages served by this origin (`https://app.example.com`) to call gRPC-Web and
    /// open `/ws` sessions, repeatable or comma-separated: CORS on the web listener's
    /// gRPC-Web routes, off by default; `/ws` refuses other sites' pages (403). A page
    /// served by the web listener itself is same-origin and needs none.
    #[arg(long = "cors-origin", value_name = "ORIGIN", value_parser = parse_cors_origin)]
    #[arg(
        env = "DUPLEX_CORS_ORIGIN",
        value_delimiter = ',',
        help_heading = "Web/ops"
    )]
    pub cors_origins: Vec<String>,

    /// Serve Prometheus metrics at `/metrics` on the web listener (`--metrics false` turns
    /// the route off; the counters are kept either way).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    #[arg(env = "DUPLEX_METRICS", help_heading = "Web/ops")]
    pub metrics: bool,

    /// HTTP/2 initial flow-control window of each stream, in bytes (SETTINGS_INITIAL_WINDOW_SIZE).
    /// How much a peer may send on one stream before it must wait for our WINDOW_UPDATE.
    /// Raise it for large messages on high-latency links. Accepts suffixes: 64KiB, 1MiB.
    #[arg(long, default_value = "1MiB", value_parser = parse_window)]
    #[arg(env = "DUPLEX_INITIAL_STREAM_WINDOW", help_heading = "HTTP/2")]
    pub initial_stream_window: u32,

    /// Bytes h2 may buffer for sending on one stream beyond what the socket takes. With a
    /// peer that grants huge windows but stops reading, this (not our queues) is what each
    /// stream holds in HTTP/2; past it the stream's queue backs up and its lag policy and
    /// the send-stall timeout apply. hyper's default is 400KiB.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    #[arg(env = "DUPLEX_MAX_SEND_BUFFER", help_heading = "HTTP/2")]
    pub max_send_buffer: usize,

    /// HTTP/2 initial flow-control window of the whole connection, in bytes: the budget
    /// all streams of one connection share before a connection-level WINDOW_UPDATE.
    /// 64KiB-1 (HTTP/2's own starting value, which can only grow) to 2GiB-1.
    #[arg(long, default_value = "2MiB", value_parser = parse_connection_window)]
    #[arg(env = "DUPLEX_INITIAL_CONNECTION_WINDOW", help_heading = "HTTP/2")]
    pub initial_connection_window: u32,

    /// Size both windows from the measured bandwidth-delay product (BDP pings) instead of
    /// the fixed values above, which it then overrides.
    #[arg(long)]
    #[arg(env = "DUPLEX_ADAPTIVE_WINDOW", help_heading = "HTTP/2")]
    pub adaptive_window: bool,

    /// Largest HTTP/2 frame payload we accept (SETTINGS_MAX_FRAME_SIZE), 16KiB to 16MiB-1.
    /// Bigger frames mean fewer frame headers for large messages.
    #[arg(long, default_value = "16KiB", value_parser = parse_frame_size)]
    #[arg(env = "DUPLEX_MAX_FRAME_SIZE", help_heading = "HTTP/2")]
    pub max_frame_size: u32,

    /// Most concurrent streams (calls) one connection may hold open
    /// (SETTINGS_MAX_CONCURRENT_STREAMS). Bounds the work one client can pin on the server.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    #[arg(env = "DUPLEX_MAX_CONCURRENT_STREAMS", help_heading = "HTTP/2")]
    pub max_concurrent_streams: u32,

    /// Send an HTTP/2 PING on a connection after this long without traffic from the peer, to
    /// find dead peers that TCP alone would keep for hours. `0s` turns it off.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    #[arg(env = "DUPLEX_KEEPALIVE_INTERVAL", help_heading = "HTTP/2")]
    pub keepalive_interval: Duration,

    /// Close the connection when a keepalive PING is not acknowledged within this time.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    #[arg(env = "DUPLEX_KEEPALIVE_TIMEOUT", help_heading = "HTTP/2")]
    pub keepalive_timeout: Duration,

    /// Largest header list (after HPACK decoding) a request may carry, in bytes
    /// (SETTINGS_MAX_HEADER_LIST_SIZE): bounds what an HPACK bomb can make us hold.
    #[arg(long, default_value = "16KiB", value_parser = parse_size)]
    #[arg(env = "DUPLEX_MAX_HEADER_LIST_SIZE", help_heading = "HTTP/2")]
    pub max_header_list_size: usize,

    /// Largest gRPC message accepted, in bytes. A bigger one fails its call with
    /// RESOURCE_EXHAUSTED; other calls go on. 4MiB is the gRPC-wide default; 1KiB to 1GiB.
    #[arg(long, default_value = "4MiB", value_parser = parse_message_size)]
    #[arg(env = "DUPLEX_MAX_MESSAGE_SIZE", help_heading = "HTTP/2")]
    pub max_message_size: usize,

    /// Disable Nagle's algorithm on accepted sockets, so small messages leave at once.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    #[arg(env = "DUPLEX_TCP_NODELAY", help_heading = "Listen")]
    pub tcp_nodelay: bool,

    /// Where room history lives: `redb` (embedded, durable: a publish is acked only after
    /// fsync) or `memory` (bounded, lost on exit; for tests and demos).
    #[arg(long, default_value = "redb")]
    #[arg(env = "DUPLEX_STORE", help_heading = "Store")]
    pub store: StoreKind,

    /// Directory of the embedded store.
    #[arg(long, default_value = "./duplex-data", env = "DUPLEX_DATA_DIR")]
    #[arg(help_heading = "Store")]
    pub data_dir: std::path::PathBuf,

    /// With `--store memory`: bytes the store may hold in all (messages with their strings,
    /// plus ~64 bytes each; room names plus ~128 bytes each). Past it the oldest messages of
    /// any room are evicted, as retention would; a publish is refused (RESOURCE_EXHAUSTED)
    /// only when room names alone fill it.
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    #[arg(env = "DUPLEX_MEMORY_STORE_BYTES", help_heading = "Store")]
    pub memory_store_bytes: usize,

    /// Keep at most this many messages per room (older ones are removed). 0 = no count limit
    /// (the memory store still caps each room).
    #[arg(long, default_value_t = 1_000_000)]
    #[arg(env = "DUPLEX_RETENTION_MESSAGES", help_heading = "Store")]
    pub retention_messages: u64,

    /// Remove messages older than this (e.g. 7d, 12h). 0s = no age limit.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    #[arg(env = "DUPLEX_RETENTION_AGE", help_heading = "Store")]
    pub retention_age: Duration,

    /// A publish that repeats a client message id already published to the same room less
    /// than this long ago is acked as a duplicate with the original's offset and not stored
    /// again (also across restarts with `--store redb`). 0s turns dedupe off.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    #[arg(env = "DUPLEX_DEDUPE_WINDOW", help_heading = "Store")]
    pub dedupe_window: Duration,

    /// Most client ids the dedupe index remembers per room; past it the room's oldest are
    /// forgotten early (its window shrinks: a retry of a forgotten id is stored again).
    #[arg(long, default_value_t = duplex_store::DEFAULT_DEDUPE_IDS_PER_ROOM)]
    #[arg(env = "DUPLEX_DEDUPE_MAX_IDS_PER_ROOM", help_heading = "Store")]
    pub dedupe_max_ids_per_room: u64,

    /// Most client ids the dedupe index remembers in all (with redb about 130 bytes of file
    /// and 50–90 bytes of memory each; with `--store memory` about 160 bytes of memory);
    /// past it the oldest of any room are forgotten early.
    #[arg(long, default_value_t = duplex_store::DEFAULT_DEDUPE_IDS)]
    #[arg(env = "DUPLEX_DEDUPE_MAX_IDS", help_heading = "Store")]
    pub dedupe_max_ids: u64,

    /// Start even when the store's database file exists but is empty (truncated) or cannot
    /// be opened: a file that cannot be opened is renamed aside (duplex.redb.damaged-TIME)
    /// and an empty store begins, whose offsets restart at 1. Without it the server refuses
    /// to start on such a file; a missing file (a fresh data directory) is created anyway.
    #[arg(long)]
    #[arg(env = "DUPLEX_RESET_STORE", help_heading = "Store")]
    pub reset_store: bool,

    /// Run as one node of a cluster: NATS server URLs (`nats://HOST:PORT`, `tls://…`),
    /// comma-separated or repeated. The rooms' log, live delivery and presence then live in
    /// NATS JetStream (one stream; offset = its sequence), shared by every node given the
    /// same servers, --nats-prefix and --nats-stream; --store and --data-dir are unused.
    /// --retention-messages and --retention-age become the stream's per-room limits and
    /// --dedupe-window its duplicate window (held in the NATS servers' memory per message
    /// id, at most --retention-age). Empty (the default): one node with its own store.
    #[arg(long = "cluster", value_name = "URL", value_delimiter = ',')]
    #[arg(env = "DUPLEX_CLUSTER", help_heading = "Cluster")]
    pub cluster: Vec<String>,

    /// With --cluster: a NATS credentials file (user JWT and nkey seed).
    #[arg(long)]
    #[arg(
        env = "DUPLEX_NATS_CREDS",
        value_name = "FILE",
        help_heading = "Cluster"
    )]
    pub nats_creds: Option<std::path::PathBuf>,

    /// With --cluster: verify the NATS servers' TLS certificates with these CA
    /// certificates (PEM), and require TLS.
    #[arg(long)]
    #[arg(env = "DUPLEX_NATS_CA", value_name = "FILE", help_heading = "Cluster")]
    pub nats_ca: Option<std::path::PathBuf>,

    /// With --cluster: a client certificate (PEM) for NATS servers that verify clients.
    /// Needs --nats-key.
    #[arg(long, requires = "nats_key")]
    #[arg(
        env = "DUPLEX_NATS_CERT",
        value_name = "FILE",
        help_heading = "Cluster"
    )]
    pub nats_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --nats-cert.
    #[arg(long, requires = "nats_cert")]
    #[arg(env = "DUPLEX_NATS_KEY", value_name = "FILE", help_heading = "Cluster")]
    pub nats_key: Option<std::path::PathBuf>,

    /// With --cluster: the subject prefix of this deployment (rooms are stored on
    /// `PREFIX.room.<room>` and delivered live on `PREFIX.live.<room>`), so several
    /// deployments can share one NATS account.
    #[arg(long, default_value = "duplex")]
    #[arg(env = "DUPLEX_NATS_PREFIX", help_heading = "Cluster")]
    pub nats_prefix: String,

    /// With --cluster: the JetStream stream holding every room. The first node creates it;
    /// each node updates it to its own settings at start, so give every node the same.
    #[arg(long, default_value = "DUPLEX")]
    #[arg(env = "DUPLEX_NATS_STREAM", help_heading = "Cluster")]
    pub nats_stream: String,

    /// With --cluster: copies JetStream keeps of the stream (1, 3 or 5; at most the number
    /// of NATS servers). With 3, a publish is acked once two servers have it, and one
    /// server may fail without losing an acked message; each publish costs a replication
    /// round trip.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    #[arg(env = "DUPLEX_NATS_REPLICAS", help_heading = "Cluster")]
    pub nats_replicas: u8,

    /// With --cluster: where the NATS servers keep the stream: `file` (survives their
    /// restarts) or `memory` (faster, lost when the servers holding it restart).
    #[arg(long, default_value = "file")]
    #[arg(env = "DUPLEX_NATS_STORAGE", help_heading = "Cluster")]
    pub nats_storage: NatsStorage,

    /// With --cluster: this node's name, shown to NATS and in presence; unique per running
    /// node. Default: HOSTNAME-PID.
    #[arg(long)]
    #[arg(
        env = "DUPLEX_NODE_NAME",
        value_name = "NAME",
        help_heading = "Cluster"
    )]
    pub node_name: Option<String>,

    /// With --cluster: how often this node refreshes its members' presence entries in the
    /// KV bucket. An entry not refreshed for three of these expires, so the members of a
    /// node that died leave everywhere within 3 × this; each refresh is one KV write per
    /// member and room, seen by every node following the room. At least 100ms; keep 3 × it
    /// well above a JetStream leader election (seconds), or members flap while a NATS
    /// server is lost.
    #[arg(long, default_value = "5s", value_parser = parse_presence_heartbeat)]
    #[arg(env = "DUPLEX_PRESENCE_HEARTBEAT", help_heading = "Cluster")]
    pub presence_heartbeat: Duration,

    /// What happens to a subscriber whose outbound queue is full: `disconnect` (a `lagged`
    /// frame with the last offset delivered, then RESOURCE_EXHAUSTED; the client resumes
    /// from history and loses nothing), `drop-oldest`, or `latest-per-key`.
    #[arg(long, default_value = "disconnect")]
    #[arg(env = "DUPLEX_LAG_POLICY", help_heading = "Hub")]
    pub lag_policy: duplex_hub::LagPolicy,

    /// Bytes all subscriber queues (and replay pages) of one connection may hold together.
    /// One connection may open --max-concurrent-streams streams, each bounded by
    /// --queue-bytes; this bounds their sum. Past it a stream's lag policy fires as when
    /// its own queue is full (a replay waits instead).
    #[arg(long, default_value = "32MiB", value_parser = parse_nonzero_size)]
    #[arg(env = "DUPLEX_CONNECTION_QUEUE_BYTES", help_heading = "Limits")]
    pub connection_queue_bytes: usize,

    /// Bytes all subscriber queues (and replay pages) of all connections from one client
    /// IP may hold together (--max-connections-per-ip connections share it).
    #[arg(long, default_value = "256MiB", value_parser = parse_nonzero_size)]
    #[arg(env = "DUPLEX_IP_QUEUE_BYTES", help_heading = "Limits")]
    pub ip_queue_bytes: usize,

    /// Live frames one subscriber may have queued before its lag policy fires.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one)]
    #[arg(env = "DUPLEX_QUEUE_FRAMES", help_heading = "Hub")]
    pub queue_frames: usize,

    /// Bytes one subscriber may have queued before its lag policy fires.
    #[arg(long, default_value = "8MiB", value_parser = parse_nonzero_size)]
    #[arg(env = "DUPLEX_QUEUE_BYTES", help_heading = "Hub")]
    pub queue_bytes: usize,

    /// Largest payload one publish may carry. Over it, that publish gets RESOURCE_EXHAUSTED
    /// and the session goes on (a whole gRPC message over --max-message-size ends the call).
    #[arg(long, default_value = "1MiB", value_parser = parse_nonzero_size)]
    #[arg(env = "DUPLEX_MAX_PAYLOAD", help_heading = "Limits")]
    pub max_payload: usize,

    /// Publishes per second one identity may sustain (token bucket), counted across all
    /// its sessions and unary calls: a token's subject, or the client's IP address (its
    /// /64 for IPv6) when anonymous. Over it a publish gets RESOURCE_EXHAUSTED and the
    /// session goes on. 0 = no limit.
    #[arg(long, default_value_t = 5000)]
    #[arg(env = "DUPLEX_PUBLISH_RATE", help_heading = "Limits")]
    pub publish_rate: u32,

    /// Publishes one identity may make at once above --publish-rate.
    #[arg(long, default_value_t = 10_000)]
    #[arg(env = "DUPLEX_PUBLISH_BURST", help_heading = "Limits")]
    pub publish_burst: u32,

    /// Identities the publish rate limiter tracks at once (about 200 bytes each). Idle
    /// ones are forgotten first; when all are busy, a new identity's publish gets
    /// RESOURCE_EXHAUSTED until one refills.
    #[arg(long, default_value_t = 100_000)]
    #[arg(env = "DUPLEX_PUBLISH_RATE_IDENTITIES", help_heading = "Limits")]
    pub publish_rate_identities: usize,

    /// End a `Hub.Connect` session that sends nothing (not even a ping) for this long,
    /// with DEADLINE_EXCEEDED. `duplex-client` pings every 30s. 0s = never.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    #[arg(env = "DUPLEX_IDLE_TIMEOUT", help_heading = "Hub")]
    pub idle_timeout: Duration,

    /// End a stream (a `Hub.Connect` session or a `Subscribe`) whose oldest queued frame has
    /// waited this long for the client to read (a zero flow-control window never opened, a
    /// socket never read): a `lagged` frame per room, then RESOURCE_EXHAUSTED, and its queue
    /// and replay are freed. 0s = never.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    #[arg(env = "DUPLEX_SEND_STALL_TIMEOUT", help_heading = "Hub")]
    pub send_stall_timeout: Duration,

    /// Members a room lists in `joined`, `Presence` and presence events. Past it members
    /// are counted (`unlisted_members`), not listed, and their joins and leaves send no
    /// event, so a crowd cannot make each join cost the whole crowd. At most 10000, so a
    /// list (names are at most 133 bytes) always fits one message well under a client's
    /// default 4 MiB receive limit: no list needs paging.
    #[arg(long, default_value_t = 1000, value_parser = parse_presence_listed)]
    #[arg(env = "DUPLEX_MAX_PRESENCE_LISTED", help_heading = "Hub")]
    pub max_presence_listed: usize,

    /// Rooms one session may have joined at once.
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    #[arg(env = "DUPLEX_MAX_ROOMS_PER_SESSION", help_heading = "Hub")]
    pub max_rooms_per_session: usize,

    /// Publishes one session may have waiting for durability. Past it the server stops
    /// reading that session's stream, so HTTP/2 flow control pushes back on the publisher.
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    #[arg(env = "DUPLEX_PUBLISH_WINDOW", help_heading = "Hub")]
    pub publish_window: usize,

    /// Connections open at once; more are closed on accept.
    #[arg(long, default_value_t = 10_000, value_parser = at_least_one)]
    #[arg(env = "DUPLEX_MAX_CONNECTIONS", help_heading = "Limits")]
    pub max_connections: usize,

    /// Connections open at once from one client IP address. Each connection may pin up to
    /// its connection window of unread request data (a client that never reads replies),
    /// so this times --initial-connection-window bounds what one address can make us hold.
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    #[arg(env = "DUPLEX_MAX_CONNECTIONS_PER_IP", help_heading = "Limits")]
    pub max_connections_per_ip: usize,

    /// Close a connection that has not sent the HTTP/2 preface within this time
    /// (slowloris). With TLS the handshake has its own 10s limit first.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[arg(env = "DUPLEX_PREFACE_TIMEOUT", help_heading = "Limits")]
    pub preface_timeout: Duration,

    /// PING policy, as grpc-go enforces it: a client sending PINGs closer together than
    /// this while the server sends no data collects strikes; past 2 it gets GOAWAY
    /// ENHANCE_YOUR_CALM "too_many_pings" (TLS connections too: the guard terminates TLS).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    #[arg(env = "DUPLEX_MIN_PING_INTERVAL", help_heading = "HTTP/2")]
    pub min_ping_interval: Duration,

    /// Close each connection after this long (GOAWAY, then --max-connection-age-grace), so
    /// long-lived streams rebalance across servers. Hub sessions get a `shutdown` frame
    /// just before, and duplex-client reconnects and resumes. 0s = never.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    #[arg(env = "DUPLEX_MAX_CONNECTION_AGE", help_heading = "HTTP/2")]
    pub max_connection_age: Duration,

    /// After --max-connection-age, how long calls may go on before the connection is cut.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    #[arg(env = "DUPLEX_MAX_CONNECTION_AGE_GRACE", help_heading = "HTTP/2")]
    pub max_connection_age_grace: Duration,

    /// Serve TLS with this certificate chain (PEM). Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    #[arg(env = "DUPLEX_TLS_CERT", help_heading = "TLS")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    #[arg(env = "DUPLEX_TLS_KEY", help_heading = "TLS")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Mutual TLS: require every client to present a certificate signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    #[arg(env = "DUPLEX_TLS_CLIENT_CA", help_heading = "TLS")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Serve plaintext on a non-loopback address. Without it, duplex refuses: anyone on the
    /// path could read and alter the traffic. Use it only behind a proxy that terminates TLS.
    #[arg(long)]
    #[arg(env = "DUPLEX_INSECURE", help_heading = "Listen")]
    pub insecure: bool,

    /// Require bearer tokens (JWT, HS256) on the Hub service, verified with the secret in
    /// this file (at least 32 bytes). Tokens carry `sub`, `exp` and room rights.
    #[arg(long)]
    #[arg(env = "DUPLEX_JWT_SECRET_FILE", help_heading = "Auth")]
    pub jwt_secret_file: Option<std::path::PathBuf>,

    /// Require bearer tokens verified with this PEM public key: an RSA key means RS256,
    /// an EC P-256 key ES256.
    #[arg(long)]
    #[arg(env = "DUPLEX_JWT_PUBLIC_KEY_FILE", help_heading = "Auth")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// Accept only tokens with this `iss` claim.
    #[arg(long)]
    #[arg(env = "DUPLEX_JWT_ISSUER", help_heading = "Auth")]
    pub jwt_issuer: Option<String>,

    /// Accept only tokens with this `aud` claim.
    #[arg(long)]
    #[arg(env = "DUPLEX_JWT_AUDIENCE", help_heading = "Auth")]
    pub jwt_audience: Option<String>,

    /// With a JWT key configured, still accept calls without a token. They get the
    /// anonymous rights (--anonymous-read, --anonymous-write: read-only by default), never
    /// a token's, and their `duplex-name` is prefixed `anon:` so it cannot pass for a
    /// token's subject.
    #[arg(long)]
    #[arg(env = "DUPLEX_ALLOW_ANONYMOUS", help_heading = "Auth")]
    pub allow_anonymous: bool,

    /// With --allow-anonymous: room patterns (`lobby`, `game.*`, `*`; comma-separated)
    /// callers without a token may read: join, subscribe, history, presence.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    #[arg(env = "DUPLEX_ANONYMOUS_READ", help_heading = "Auth")]
    pub anonymous_read: Vec<String>,

    /// With --allow-anonymous: room patterns (comma-separated) callers without a token may
    /// publish to. None by default: anonymous callers are read-only.
    #[arg(long, value_delimiter = ',')]
    #[arg(env = "DUPLEX_ANONYMOUS_WRITE", help_heading = "Auth")]
    pub anonymous_write: Vec<String>,

    /// Connection workers: threads that each run a single-threaded runtime and serve the
    /// connections handed to them (round-robin by the acceptor). A connection's reads,
    /// handlers and writes then stay on one thread: no wake-ups across threads per message.
    /// 0 = one per core; 1 = serve every connection on the main runtime (see --runtime).
    #[arg(long, default_value_t = 0)]
    #[arg(env = "DUPLEX_WORKERS", help_heading = "Runtime")]
    pub workers: usize,

    /// The main runtime (acceptor, hub sequencer, store): `multi-thread` (tokio's
    /// work-stealing pool, one thread per core) or `current-thread` (one thread). With
    /// `--workers 1` it also runs every connection.
    #[arg(long, default_value = "multi-thread")]
    #[arg(env = "DUPLEX_RUNTIME", help_heading = "Runtime")]
    pub runtime: RuntimeKind,

    /// On SIGINT/SIGTERM: stop accepting, then give open calls this long to finish before
    /// closing them and exiting 0.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[arg(env = "DUPLEX_SHUTDOWN_GRACE", help_heading = "Runtime")]
    pub shutdown_grace: Duration,
}

/// The store behind the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// Embedded redb database in `--data-dir`: durable, group-committed.
    Redb,
    /// In memory, bounded; lost when the server stops.
    Memory,
}

/// Where the NATS servers keep the room stream (`--nats-storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NatsStorage {
    /// On disk in each server's JetStream directory: survives restarts.
    File,
    /// In memory: lost when the servers holding it restart.
    Memory,
}

/// The tokio runtime `duplex serve` runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Work-stealing pool, one worker thread per core.
    MultiThread,
    /// Everything on the thread that runs the server.
    CurrentThread,
}

impl RuntimeKind {
    /// Builds the runtime (I/O and timers enabled).
    pub fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            RuntimeKind::MultiThread => tokio::runtime::Runtime::new(),
            RuntimeKind::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        }
    }
}

impl ServeConfig {
    /// Checks what clap checks only for flags and env variables, not for values from a
    /// config file (they reach clap as defaults): TLS settings that need one another.
    pub fn check(&self) -> Result<(), String> {
        match (&self.nats_cert, &self.nats_key) {
            (Some(_), None) => return Err("nats-cert needs nats-key (its private key)".into()),
            (None, Some(_)) => return Err("nats-key needs nats-cert".into()),
            _ => {}
        }
        match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (Some(_), None, _) => Err("tls-cert needs tls-key (its private key)".into()),
            (None, Some(_), _) => Err("tls-key needs tls-cert".into()),
            (None, None, Some(_)) => Err("tls-client-ca needs tls-cert and tls-key".into()),
            _ => Ok(()),
        }
    }

    /// The hub's bounds and policies from these flags.
    pub fn hub_config(&self) -> duplex_hub::HubConfig {
        duplex_hub::HubConfig {
            queue_frames: self.queue_frames,
            queue_bytes: self.queue_bytes,
            lag_policy: self.lag_policy,
            max_payload: self.max_payload,
            max_rooms_per_session: self.max_rooms_per_session,
            max_presence_listed: self.max_presence_listed,
            publish_window: self.publish_window,
            publish_rate: Some(self.publish_rate).filter(|&rate| rate > 0),
            publish_burst: self.publish_burst,
            rate_limited_identities: self.publish_rate_identities,
            idle_timeout: Some(self.idle_timeout).filter(|t| !t.is_zero()),
            send_stall_timeout: Some(self.send_stall_timeout).filter(|t| !t.is_zero()),
            // A replay holds one page while the client drains its queue: a quarter of the
            // queue bound keeps a stalled replay within 1¼ queues.
            replay_page_bytes: (self.queue_bytes / 4).max(1),
            // Half the message limit, and no more than half of the 4 MiB most clients
            // accept: a page a default client cannot read is no page.
            max_history_bytes: (self.max_message_size / 2).clamp(1, 2 << 20),
            ..duplex_hub::HubConfig::default()
        }
    }

    /// `--max-connection-age`, `None` when 0 (never).
    pub fn max_connection_age(&self) -> Option<std::time::Duration> {
        Some(self.max_connection_age).filter(|age| !age.is_zero())
    }

    /// Connection admission bounds from these flags.
    pub fn connection_limits(&self) -> crate::guard::ConnectionLimits {
        crate::guard::ConnectionLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            preface_timeout: self.preface_timeout,
            hard_close_after: self
                .max_connection_age()
                .map(|age| age + self.max_connection_age_grace),
            min_ping_interval: self.min_ping_interval,
            connection_queue_bytes: self.connection_queue_bytes,
            ip_queue_bytes: self.ip_queue_bytes,
        }
    }

    /// Token verification settings from these flags.
    pub fn auth_settings(&self) -> crate::auth::AuthSettings {
        crate::auth::AuthSettings {
            secret_file: self.jwt_secret_file.clone(),
            public_key_file: self.jwt_public_key_file.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            allow_anonymous: self.allow_anonymous,
            anonymous_read: self.anonymous_read.clone(),
            anonymous_write: self.anonymous_write.clone(),
        }
    }

    /// The web listener's address, `None` when `--web-listen off`.
    pub fn web_address(&self) -> Option<&str> {
        Some(self.web_listen.as_str()).filter(|address| *address != "off")
    }

    /// Connection workers to start: `--workers`, with 0 meaning one per core.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// With `--cluster`, how this node joins the cluster; `None` for a single node.
    pub fn cluster_config(&self) -> Option<duplex_cluster::ClusterConfig> {
        if self.cluster.is_empty() {
            return None;
        }
        let mut config = duplex_cluster::ClusterConfig::new(self.cluster.clone());
        config.creds = self.nats_creds.clone();
        config.ca = self.nats_ca.clone();
        config.client_cert = self.nats_cert.clone().zip(self.nats_key.clone());
        if let Some(node) = &self.node_name {
            config.node = node.clone();
        }
        config.presence_heartbeat = self.presence_heartbeat;
        config.prefix = self.nats_prefix.clone();
        config.stream = self.nats_stream.clone();
        config.replicas = usize::from(self.nats_replicas);
        config.storage = match self.nats_storage {
            NatsStorage::File => duplex_cluster::StreamStorage::File,
            NatsStorage::Memory => duplex_cluster::StreamStorage::Memory,
        };
        config.max_messages_per_room = Some(self.retention_messages).filter(|&n| n > 0);
        config.max_age = Some(self.retention_age).filter(|age| !age.is_zero());
        config.duplicate_window = self.dedupe_window;
        config.max_payload = self.max_payload;
        Some(config)
    }

    /// Retention per room and dedupe from these flags.
    pub fn retention(&self) -> duplex_store::Retention {
        duplex_store::Retention {
            max_messages: Some(self.retention_messages).filter(|&n| n > 0),
            max_age: Some(self.retention_age).filter(|age| !age.is_zero()),
            dedupe: duplex_store::Dedupe {
                window: self.dedupe_window,
                max_ids_per_room: self.dedupe_max_ids_per_room,
                max_ids: self.dedupe_max_ids,
            },
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        use clap::Parser as _;

        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: ServeConfig,
        }
        Defaults::parse_from(["duplex"]).config
    }
}

/// Parses a byte size: a plain number or one with a suffix `K`, `KiB`, `M`, `MiB`, `G`,
/// `GiB` (all powers of 1024; `B` alone is accepted too).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size: expected a number such as 65536 or 64KiB"))?;
    let multiplier: usize = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}`: use B, KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// An HTTP/2 window: 1 byte to 2^31-1 (RFC 9113 §6.9.1).
fn parse_window(text: &str) -> Result<u32, String> {
    parse_size_in(text, 1, (1 << 31) - 1)
}

/// A connection window: every connection starts at 65535 (RFC 9113 §6.9.2) and a
/// WINDOW_UPDATE can only raise it, so less than that cannot be had.
fn parse_connection_window(text: &str) -> Result<u32, String> {
    parse_size_in(text, 65_535, (1 << 31) - 1)
}

/// A gRPC message size limit: 1KiB (less would refuse gRPC's own small calls) to 1GiB.
fn parse_message_size(text: &str) -> Result<usize, String> {
    let size = parse_size(text)?;
    if (1 << 10..=1 << 30).contains(&size) {
        Ok(size)
    } else {
        Err(format!("{size} is out of range: 1KiB (1024) to 1GiB"))
    }
}

/// A presence heartbeat: a duration of at least 100ms (JetStream refuses a bucket whose
/// entries live less than 100ms; they live 3 heartbeats).
fn parse_presence_heartbeat(text: &str) -> Result<Duration, String> {
    let heartbeat = humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))?;
    if heartbeat < Duration::from_millis(100) {
        return Err(format!("`{text}` is too short: at least 100ms"));
    }
    Ok(heartbeat)
}

/// Members a room may list: 0 to 10000 (see `max_presence_listed`).
fn parse_presence_listed(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(count) if count <= 10_000 => Ok(count),
        _ => Err(format!(
            "`{text}` is out of range: 0 to 10000 (a longer list would not fit one message)"
        )),
    }
}

/// A byte bound that must let at least one byte through.
fn parse_nonzero_size(text: &str) -> Result<usize, String> {
    match parse_size(text)? {
        0 => Err("0 would refuse everything: give at least 1 (e.g. 64KiB)".into()),
        size => Ok(size),
    }
}

/// A count bound that must let at least one through.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("0 would refuse everything: give at least 1".into()),
        Ok(count) => Ok(count),
        Err(_) => Err(format!(
            "`{text}` is not a count: expected a whole number such as 100"
        )),
    }
}

/// A listen address as HOST:PORT. A port alone means `localhost:PORT`; `:PORT` is refused
/// rather than guessed (other servers read it as every interface, which here would need
/// TLS or --insecure), with the two forms to choose from.
pub fn parse_listen_address(text: &str) -> Result<String, String> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u32>() {
        return port_number(&port.to_string()).map(|port| format!("localhost:{port}"));
    }
    if let Some(port) = text.strip_prefix(':') {
        return Err(format!(
            "`{text}` has no host: give HOST:PORT, e.g. localhost:{port} (this machine only) \
             or 0.0.0.0:{port} (every interface)"
        ));
    }
    let (host, port) = split_host_port(text).ok_or_else(|| {
        format!("`{text}` is not HOST:PORT: expected e.g. localhost:50051 or [::1]:50051")
    })?;
    if host.is_empty() {
        return Err(format!(
            "`{text}` has no host: expected e.g. localhost:50051"
        ));
    }
    port_number(port)?;
    Ok(text.to_owned())
}

/// A web listener address: HOST:PORT as for `--listen`, or `off`.
fn parse_web_listen_address(text: &str) -> Result<String, String> {
    match text.trim() {
        "off" => Ok("off".to_owned()),
        address => parse_listen_address(address),
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, no path, no trailing slash.
fn parse_cors_origin(text: &str) -> Result<String, String> {
    let origin = text.trim();
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("`{origin}` is not an origin: it starts with http:// or https://")
        })?;
    if rest.is_empty() || rest.contains('/') || http::HeaderValue::from_str(origin).is_err() {
        return Err(format!(
            "`{origin}` is not an origin: scheme://host[:port], no path (e.g. https://app.example.com)"
        ));
    }
    Ok(origin.to_owned())
}

/// Splits `host:port` and `[v6]:port`; `None` when there is no port.
pub fn split_host_port(text: &str) -> Option<(&str, &str)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = text.rsplit_once(':')?;
    // A bare IPv6 address has colons but no port.
    if host.contains(':') {
        return None;
    }
    Some((host, port))
}

/// A TCP port, 0 to 65535, with a message naming the range otherwise.
pub fn port_number(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| format!("invalid port `{text}`: a port is a number from 0 to 65535"))
}

/// An HTTP/2 max frame size: 2^14 to 2^24-1 (RFC 9113 §6.5.2).
fn parse_frame_size(text: &str) -> Result<u32, String> {
    parse_size_in(text, 1 << 14, (1 << 24) - 1)
}

fn parse_size_in(text: &str, min: u32, max: u32) -> Result<u32, String> {
    let size = parse_size(text)?;
    u32::try_from(size)
        .ok()
        .filter(|size| (min..=max).contains(size))
        .ok_or_else(|| format!("{size} is out of range: HTTP/2 allows {min} to {max}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1 M"), Ok(1 << 20));
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn windows_and_frames_respect_http2_bounds() {
        assert_eq!(parse_window("1024"), Ok(1024));
        assert!(parse_window("0").is_err());
        assert!(parse_window("2GiB").is_err());
        assert!(parse_frame_size("1KiB").is_err());
        assert_eq!(parse_frame_size("16KiB"), Ok(16384));
    }

    #[test]
    fn listen_addresses_are_host_and_port() {
        assert_eq!(parse_listen_address("50051").unwrap(), "localhost:50051");
        assert_eq!(parse_listen_address("127.0.0.1:0").unwrap(), "127.0.0.1:0");
        assert_eq!(parse_listen_address("[::1]:7").unwrap(), "[::1]:7");
        assert!(
            parse_listen_address(":50081")
                .unwrap_err()
                .contains("localhost:50081")
        );
        assert!(
            parse_listen_address("localhost")
                .unwrap_err()
                .contains("HOST:PORT")
        );
        assert!(
            parse_listen_address("localhost:99999")
                .unwrap_err()
                .contains("0 to 65535")
        );
        assert!(parse_listen_address("::1").is_err());
    }

    #[test]
    fn limits_that_would_refuse_everything_are_refused() {
        assert!(parse_message_size("0").is_err());
        assert!(parse_message_size("4MiB").is_ok());
        assert!(
            parse_connection_window("1KiB")
                .unwrap_err()
                .contains("65535")
        );
        assert!(at_least_one("0").is_err());
        assert!(parse_nonzero_size("0").is_err());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = ServeConfig::default();
        assert_eq!(config.listen, "localhost:50051");
        assert_eq!(config.max_message_size, 4 << 20);
        assert_eq!(config.initial_stream_window, 1 << 20);
        assert!(config.tcp_nodelay);
    }
}

//! [`ClusterConfig`]: how a node reaches NATS and what the room stream keeps.

use std::path::PathBuf;
use std::time::Duration;

/// Default [`ClusterConfig::live_buffer`].
pub const DEFAULT_LIVE_BUFFER: usize = 4096;

/// Where JetStream keeps the room stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamStorage {
    /// Files on each NATS server's JetStream directory (the default: survives restarts).
    #[default]
    File,
    /// Memory only: lost when the NATS servers holding it restart.
    Memory,
}

/// How a node joins a cluster: the NATS servers, the credentials, and the settings of the
/// one stream that holds every room (applied when the node starts: the first node creates
/// the stream, later ones update it to the same settings).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://HOST:PORT`, `tls://HOST:PORT`); the client also learns the
    /// cluster's other servers from them.
    pub servers: Vec<String>,
    /// A `.creds` file (user JWT and nkey seed) to authenticate with.
    pub creds: Option<PathBuf>,
    /// A PEM file of CA certificates to verify the servers' TLS certificates with.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Require TLS even when the server does not ask for it.
    pub require_tls: bool,
    /// This node's name, shown to NATS as the connection name and used in presence keys;
    /// unique per running node.
    pub node: String,
    /// Subject prefix of this deployment (see [`Subjects`](crate::Subjects)).
    pub prefix: String,
    /// Name of the JetStream stream that holds every room.
    pub stream: String,
    /// Copies JetStream keeps of the stream (1, 3 or 5; at most the number of servers).
    pub replicas: usize,
    /// Files or memory.
    pub storage: StreamStorage,
    /// Keep at most this many messages per room (`max_messages_per_subject`); `None` = no
    /// count limit.
    pub max_messages_per_room: Option<u64>,
    /// Remove messages older than this (`max_age`); `None` = no age limit.
    pub max_age: Option<Duration>,
    /// A publish repeating a client message id of the same room within this window is
    /// acked with the original's offset (`duplicate_window`, at least 1 ms when on). Zero
    /// turns dedupe off.
    pub duplicate_window: Duration,
    /// Largest payload a publish may carry; checked against the servers' `max_payload` at
    /// start (with room for the message's record around it).
    pub max_payload: usize,
    /// How long one JetStream request (a publish ack, a read) may take before it fails.
    pub request_timeout: Duration,
    /// How long a node waits at start for NATS and for the stream (a cluster elects its
    /// JetStream leader for a few seconds after it starts).
    pub startup_timeout: Duration,
    /// Messages a room's live subscription (and a history read's replies) may hold before
    /// NATS drops more (async-nats' `subscription_capacity`; its default is 65 536). A drop
    /// is repaired from the stream, so this bounds memory, not correctness; it must stay
    /// above a history read's batch (1000), whose replies share it.
    pub live_buffer: usize,
    /// How often this node refreshes its presence entries; an entry not refreshed for
    /// three of these expires, so a dead node's members leave everywhere.
    pub presence_heartbeat: Duration,
}

impl ClusterConfig {
    /// A config for `servers` with the defaults: node name from the host and process id,
    /// prefix `duplex`, stream `DUPLEX`, one replica, file storage, no retention limits,
    /// a two-minute duplicate window.
    pub fn new(servers: Vec<String>) -> Self {
        ClusterConfig {
            servers,
            creds: None,
            ca: None,
            client_cert: None,
            require_tls: false,
            node: default_node_name(),
            prefix: "duplex".to_owned(),
            stream: "DUPLEX".to_owned(),
            replicas: 1,
            storage: StreamStorage::File,
            max_messages_per_room: None,
            max_age: None,
            duplicate_window: Duration::from_secs(120),
            max_payload: 1 << 20,
            request_timeout: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(30),
            live_buffer: DEFAULT_LIVE_BUFFER,
            presence_heartbeat: Duration::from_secs(5),
        }
    }
}

/// `<hostname>-<pid>`: unique per running node on a host, readable in NATS monitoring.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{}", std::process::id())
}

//! [`Cluster`]: one node's connection to NATS, and the room stream it works on.
//!
//! [`Cluster::connect`] connects (retrying until [`ClusterConfig::startup_timeout`]: the
//! servers may still be starting), checks JetStream is there, and creates the room stream
//! or updates it to this node's settings (retrying while a fresh cluster elects its
//! JetStream meta leader, which answers 10008 "temporarily unavailable" for a few
//! seconds). After that the client reconnects on its own for as long as the node runs;
//! [`Cluster::connection`] reports each loss and each return, so the log, the feed and
//! presence can fail fast while NATS is gone and catch up when it is back.
//!
//! The stream (see `lib.rs` for why this shape): subjects `<prefix>.room.>`, one per room;
//! `republish` of every stored message to `<prefix>.live.<token>` for live delivery;
//! `allow_direct` for reads; retention per room by count (`max_messages_per_subject`,
//! discarding the oldest) and by age; `duplicate_window` for dedupe by `Nats-Msg-Id`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use tokio::sync::watch;
use tracing::{info, warn};

use duplex_hub::{LiveFeed, Presence};
use duplex_store::Store;

use crate::config::{ClusterConfig, StreamStorage};
use crate::feed::RepublishFeed;
use crate::log::JetStreamLog;
use crate::presence::{KvPresence, PresenceError};
use crate::subject::Subjects;

/// Bytes a message's record and NATS headers may add to its payload: the record's time and
/// length prefixes, sender (a JWT name), content type (≤ 256), client id and key (≤ 128
/// each), and a `Nats-Msg-Id` of the room and client id. A payload is capped at the
/// servers' `max_payload` less this, so NATS never refuses what duplex accepted.
pub const RECORD_ALLOWANCE: usize = 4096;

/// Most rooms [`RoomMarks`] remembers; past it, it starts over (a forgotten room only
/// loses the stale-read check until its next message).
const MAX_MARKED_ROOMS: usize = 100_000;

/// The newest offset known per room (see [`Cluster::saw`]), bounded by
/// [`MAX_MARKED_ROOMS`].
#[derive(Debug, Default)]
struct RoomMarks {
    marks: Mutex<HashMap<String, u64>>,
}

impl RoomMarks {
    fn saw(&self, room: &str, seq: u64) {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mark) = marks.get_mut(room) {
            *mark = (*mark).max(seq);
            return;
        }
        if marks.len() >= MAX_MARKED_ROOMS {
            marks.clear();
        }
        marks.insert(room.to_owned(), seq);
    }

    fn get(&self, room: &str) -> u64 {
        let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        marks.get(room).copied().unwrap_or(0)
    }
}

/// Most PubAcks one node waits for at once; a bigger batch waits for room.
pub(crate) const MAX_ACKS_IN_FLIGHT: usize = 4096;

/// What a cluster puts behind the hub's seams (see [`Cluster::seams`]).
#[derive(Clone)]
pub struct Seams {
    /// The log: [`JetStreamLog`].
    pub store: Arc<dyn Store>,
    /// The live feed: [`RepublishFeed`].
    pub feed: Arc<dyn LiveFeed>,
    /// Presence.
    pub presence: Arc<dyn Presence>,
}

impl std::fmt::Debug for Seams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seams").finish_non_exhaustive()
    }
}

/// Why a node could not join the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No NATS server answered within the startup timeout.
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect {
        /// The URLs tried.
        servers: String,
        /// What the last attempt reported.
        reason: String,
    },
    /// The credentials file could not be read.
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Credentials {
        /// The file.
        path: String,
        /// What reading it reported.
        source: std::io::Error,
    },
    /// The servers answered, but JetStream did not (not enabled, or no leader in time).
    #[error(
        "JetStream did not answer on {servers}: {reason} (is nats-server started with -js, or `jetstream {{}}` in its config?)"
    )]
    JetStream {
        /// The URLs tried.
        servers: String,
        /// What the last attempt reported.
        reason: String,
    },
    /// The stream exists with settings this node cannot change to (or could not create it).
    #[error("cannot create or update the JetStream stream {stream}: {reason}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// What JetStream answered.
        reason: String,
    },
    /// The servers' `max_payload` leaves no room for a message.
    #[error(
        "the NATS servers accept messages of at most {server_max_payload} bytes, too small for duplex messages (raise max_payload in the nats-server config)"
    )]
    PayloadLimit {
        /// What the servers announced.
        server_max_payload: usize,
    },
    /// The presence bucket could not be created or updated.
    #[error(transparent)]
    Presence(#[from] PresenceError),
}

/// Whether the node is connected to NATS now, and how many times it has connected: a
/// change of `connects` is a reconnect, after which anything published while it was gone
/// must be read back (core NATS does not replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionState {
    /// Connected now.
    pub connected: bool,
    /// Connections made so far (1 after the first).
    pub connects: u64,
}

/// One node's handle on the cluster: the NATS client, its JetStream context and the
/// deployment's names. Cheap to clone (handles).
#[derive(Debug, Clone)]
pub struct Cluster {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    config: ClusterConfig,
    subjects: Subjects,
    /// What the client's event callback reports; see [`ConnectionState`].
    connection: watch::Receiver<ConnectionState>,
    /// The largest payload a publish may carry here: `config.max_payload`, lowered to what
    /// the servers accept less [`RECORD_ALLOWANCE`].
    max_payload: usize,
    /// The newest offset this node knows each room has (its PubAcks, the feed's
    /// messages), shared by the log and the feed, so a read answered by a replica that is
    /// behind is noticed and asked again (see `log.rs`).
    seen: Arc<RoomMarks>,
}

impl Cluster {
    /// Connects to `config.servers` and makes sure the room stream exists with `config`'s
    /// settings (see the module docs).
    pub async fn connect(config: ClusterConfig) -> Result<Self, ClusterError> {
        let deadline = Instant::now() + config.startup_timeout;
        let servers = config.servers.join(",");
        let client = loop {
            match connect_options(&config)
                .await?
                .connect(config.servers.as_slice())
                .await
            {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    warn!(%error, %servers, "NATS not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => {
                    return Err(ClusterError::Connect {
                        servers,
                        reason: error.to_string(),
                    });
                }
            }
        };
        let connection = watch_connection(client.clone());
        let server_max_payload = client.server_info().max_payload;
        let max_payload = config
            .max_payload
            .min(server_max_payload.saturating_sub(RECORD_ALLOWANCE));
        if max_payload == 0 {
            return Err(ClusterError::PayloadLimit { server_max_payload });
        }
        if max_payload < config.max_payload {
            warn!(
                requested = config.max_payload,
                allowed = max_payload,
                server_max_payload,
                "payloads capped below --max-payload: the NATS servers' max_payload is smaller"
            );
        }
        // A batch bigger than the acks allowed in flight waits for room rather than fail.
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let cluster = Cluster {
            subjects: Subjects::new(&config.prefix),
            client,
            jetstream,
            config,
            connection,
            max_payload,
            seen: Arc::new(RoomMarks::default()),
        };
        cluster.ensure_stream(deadline).await?;
        info!(
            servers = %cluster.config.servers.join(","),
            stream = %cluster.config.stream,
            replicas = cluster.config.replicas,
            node = %cluster.config.node,
            "joined the cluster"
        );
        Ok(cluster)
    }

    /// Creates the room stream, or updates it to this node's settings, retrying until
    /// `deadline` while JetStream is not answering yet.
    async fn ensure_stream(&self, deadline: Instant) -> Result<(), ClusterError> {
        let settings = self.stream_config();
        loop {
            let error = match self
                .jetstream
                .create_or_update_stream(settings.clone())
                .await
            {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            use jetstream::context::CreateStreamErrorKind as Kind;
            let retry = match error.kind() {
                Kind::JetStreamUnavailable | Kind::TimedOut => true,
                // 10008: "JetStream system temporarily unavailable" while the meta leader
                // is elected; 10005: "no suitable peers for placement" until it knows
                // enough servers for the replicas asked (a cluster just started).
                Kind::JetStream(inner) => matches!(inner.error_code().0, 10008 | 10005),
                _ => false,
            };
            if retry && Instant::now() < deadline {
                warn!(%error, "JetStream not ready yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            let placement =
                matches!(error.kind(), Kind::JetStream(inner) if inner.error_code().0 == 10005);
            return Err(if placement {
                ClusterError::Stream {
                    stream: self.config.stream.clone(),
                    reason: format!(
                        "{error} (the stream asks for {} replicas: are that many JetStream \
                         servers in the NATS cluster?)",
                        self.config.replicas
                    ),
                }
            } else if retry {
                ClusterError::JetStream {
                    servers: self.config.servers.join(","),
                    reason: error.to_string(),
                }
            } else {
                ClusterError::Stream {
                    stream: self.config.stream.clone(),
                    reason: error.to_string(),
                }
            });
        }
    }

    /// The room stream's settings (see the module docs).
    fn stream_config(&self) -> stream::Config {
        let config = &self.config;
        stream::Config {
            name: config.stream.clone(),
            description: Some(
                "duplex rooms: one subject per room, offset = stream sequence".into(),
            ),
            subjects: vec![self.subjects.all_rooms()],
            max_messages_per_subject: config
                .max_messages_per_room
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            max_age: config.max_age.unwrap_or(Duration::ZERO),
            discard: stream::DiscardPolicy::Old,
            storage: match config.storage {
                StreamStorage::File => stream::StorageType::File,
                StreamStorage::Memory => stream::StorageType::Memory,
            },
            num_replicas: config.replicas,
            // JetStream refuses a duplicate window longer than max_age (10052): a message
            // id cannot be remembered longer than the message is kept.
            duplicate_window: config.max_age.map_or(config.duplicate_window, |age| {
                config.duplicate_window.min(age)
            }),
            allow_direct: true,
            republish: Some(stream::Republish {
                source: self.subjects.all_rooms(),
                destination: self.subjects.all_live(),
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    /// The NATS client (for subscriptions and raw requests).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context, with [`ClusterConfig::request_timeout`] on every request.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The settings this node joined with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The deployment's subjects.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Connection losses and returns, as they happen (see [`ConnectionState`]).
    pub fn connection(&self) -> watch::Receiver<ConnectionState> {
        self.connection.clone()
    }

    /// The largest payload a publish may carry on this cluster (see
    /// [`RECORD_ALLOWANCE`]).
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Records that `room` has a message at offset `seq` (see `seen`'s docs).
    pub fn saw(&self, room: &str, seq: u64) {
        self.seen.saw(room, seq);
    }

    /// The newest offset this node knows `room` has (0: none known).
    pub fn seen(&self, room: &str) -> u64 {
        self.seen.get(room)
    }

    /// The hub's seams on this cluster: the room stream as the log, its republish as the
    /// live feed, and presence in its KV bucket (rooms list `max_presence_listed` members
    /// each). What `duplex serve --cluster` hands to `Hub::with_seams`. Creates the
    /// presence bucket and spawns the log's, feed's and presence's tasks (needs a tokio
    /// runtime).
    pub async fn seams(&self, max_presence_listed: usize) -> Result<Seams, ClusterError> {
        let log = Arc::new(JetStreamLog::new(self.clone()));
        let feed = Arc::new(RepublishFeed::new(self.clone(), log.clone()));
        let presence: Arc<dyn Presence> =
            Arc::new(KvPresence::start(self, max_presence_listed).await?);
        Ok(Seams {
            store: log,
            feed,
            presence,
        })
    }
}

/// How often the connection's state is read for [`Cluster::connection`].
const CONNECTION_POLL: Duration = Duration::from_millis(100);

/// Slow-consumer warnings: at most one per this long (a slow room subscription reports
/// every message it drops).
const SLOW_CONSUMER_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Follows the client's connection state in a task, for [`Cluster::connection`]. Read
/// from the client itself ([`async_nats::Client::connection_state`] and its count of
/// connects), not from its events: async-nats hands events over a bounded channel with
/// `try_send`, so a burst of slow-consumer events (the moment a server is likely to cut
/// the node off) can drop a `Disconnected` or `Connected`, and a node would stay marked
/// unavailable, or miss a catch-up, for good.
fn watch_connection(client: async_nats::Client) -> watch::Receiver<ConnectionState> {
    let read = |client: &async_nats::Client| ConnectionState {
        connected: client.connection_state() == async_nats::connection::State::Connected,
        connects: client.statistics().connects.load(Ordering::Relaxed),
    };
    let (sender, receiver) = watch::channel(read(&client));
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(CONNECTION_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = poll.tick() => {}
                () = sender.closed() => return,
            }
            let now = read(&client);
            sender.send_if_modified(|state| {
                let changed = *state != now;
                if changed {
                    if now.connected {
                        info!(connects = now.connects, "connected to NATS");
                    } else {
                        warn!("lost the connection to NATS; reconnecting");
                    }
                    *state = now;
                }
                changed
            });
        }
    });
    receiver
}

/// The client options of `config`; its events are only logged (see [`watch_connection`]).
async fn connect_options(
    config: &ClusterConfig,
) -> Result<async_nats::ConnectOptions, ClusterError> {
    let last_slow_warning = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("duplex {}", config.node))
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(config.request_timeout))
        .subscription_capacity(config.live_buffer)
        .max_reconnects(None)
        .event_callback(move |event| {
            let last_slow_warning = last_slow_warning.clone();
            async move {
                match event {
                    // Logged by `watch_connection`, which sees every change.
                    async_nats::Event::Connected | async_nats::Event::Disconnected => {}
                    async_nats::Event::SlowConsumer(sid) => {
                        let mut last = last_slow_warning
                            .lock()
                            .unwrap_or_else(|p| p.into_inner());
                        if last.is_none_or(|at| at.elapsed() >= SLOW_CONSUMER_WARNING_EVERY) {
                            *last = Some(Instant::now());
                            warn!(sid, "a NATS subscription fell behind and dropped messages (gaps are read back from the stream; warned at most every 10 s)");
                        }
                    }
                    other => info!(event = %other, "NATS"),
                }
            }
        });
    if let Some(path) = &config.creds {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| ClusterError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?;
    }
    if let Some(ca) = &config.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &config.client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.require_tls {
        options = options.require_tls(true);
    }
    Ok(options)
}

//! [`KvPresence`]: who is in which room across the cluster, in a JetStream KV bucket (the
//! hub's `Presence` seam; `duplex-hub/src/presence.rs` says what a cluster implementation
//! owes the engine, and this module does exactly that).
//!
//! **The bucket.** `<prefix>_presence` (the deployment prefix, `.` made `_`), one key per
//! visible member and room: `<room token>.<node token>.<session token>`, each part base64url
//! without padding (see [`subject`](crate::subject)), so any room, node or session name is a
//! valid key and `<room token>.>` selects one room. The value is the member's name as JSON
//! (`{"name":"…"}`); the node and the session are in the key. Every key ages out after
//! `max_age` = 3 × [`ClusterConfig::presence_heartbeat`](crate::ClusterConfig) unless its
//! node refreshes it, and `limit_markers` makes the server write a marker when a key ages
//! out, which every watcher sees as a purge: without it expiry is silent and a dead node's
//! members would never leave. Replicas and storage are the room stream's.
//!
//! **What runs where.**
//!
//! - A mirror per room followed on this node (the listed members and the counted ones, the
//!   cap applied on this node) answers [`members`](Presence::members). `join` and `leave`
//!   change it at once under the engine's room lock, then record the key in the table of
//!   this node's keys and wake the writer; they never wait on NATS.
//! - One writer task per node reconciles that table with the bucket: it puts what is new,
//!   refreshes every key each heartbeat, deletes what left, and puts everything again after
//!   a reconnect (the keys may have aged out meanwhile). The table is bounded by this
//!   node's sessions × their rooms, and the keys waiting for their delete by the leaves of
//!   one TTL (older ones have aged out in the bucket anyway); a slow bucket delays writes,
//!   it never grows a queue. At most [`WRITES_IN_FLIGHT`] writes are in flight.
//! - One task per followed room runs `watch_with_history` on the room's keys: the snapshot
//!   first (the follow returns once it is in the mirror), then each change. It skips this
//!   node's own keys (their joins and leaves were applied when they happened) and applies
//!   other nodes' changes through [`PresenceEvents::apply`], under the room lock, so they
//!   are ordered with local joins, deliveries and registrations. After a reconnect, or if
//!   the watch fails, it watches again and re-syncs: members the new snapshot lacks leave
//!   (a watch may have missed their delete or their expiry marker).
//!
//! Lock order: the engine's room lock, then this module's one std mutex; the mutex is never
//! held across an await, and never while calling [`PresenceEvents::apply`].
//!
//! Members from other nodes show with the session id `<node>/<session>`: sessions are
//! numbered per process, so only the node makes them unique across the cluster. A node
//! restarted under the same name within a TTL numbers its sessions from 1 again, so an
//! entry may come back with another member: that shows as the old member leaving and the
//! new one joining.
//!
//! Limits: a node knows the members only of rooms it follows (a session here joined
//! them), so the unary `Presence` call on a node where nobody joined the room lists
//! nobody. Each followed room costs one ordered consumer per node (the watch), and every
//! refresh of a member's entry reaches every node following its room: one message per
//! member and room per heartbeat per node. The bucket's TTL is set by the node that
//! started last, so all nodes should share one heartbeat.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::CreateKeyValueErrorKind as BucketErrorKind;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use duplex_hub::{
    FeedHandle, HubError, Listing, Presence, PresenceChange, PresenceEvents, RoomPresence,
};
use duplex_proto::hub::Member;
use duplex_store::BoxFuture;
use futures::StreamExt as _;
use tokio::sync::{Notify, oneshot, watch};
use tracing::{debug, info, warn};

use crate::cluster::{Cluster, ConnectionState};
use crate::config::StreamStorage;
use crate::subject::{room_from_token, room_token};

/// Bucket writes (puts, deletes) the writer keeps in flight at once.
pub const WRITES_IN_FLIGHT: usize = 32;

/// The smallest marker TTL nats-server accepts for `limit_markers`.
const MIN_MARKER_TTL: Duration = Duration::from_secs(1);

/// How long a room's watch waits after failing before it watches again: doubled after
/// each failure in a row, up to [`WATCH_RETRY_MAX`].
const WATCH_RETRY: Duration = Duration::from_millis(250);

/// The longest wait between two watches of a room while they keep failing (NATS gone).
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// Why presence could not start.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The bucket could not be created or updated to this node's settings.
    #[error("cannot create or update the presence bucket {bucket}: {reason}")]
    Bucket {
        /// The bucket's name.
        bucket: String,
        /// What JetStream answered.
        reason: String,
    },
}

/// The cluster's presence: a KV bucket with a TTL and limit markers, mirrored per followed
/// room on each node (see the module docs). Stops its writer when dropped.
pub struct KvPresence {
    /// The state the engine's calls, the writer and the watches share.
    inner: Arc<PresenceNode>,
    /// The writer task (see the module docs); aborted on drop, after which this node's
    /// keys age out of the bucket.
    writer: tokio::task::AbortHandle,
}

impl std::fmt::Debug for KvPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPresence")
            .field("node", &self.inner.node)
            .field("bucket", &self.inner.kv.name)
            .finish_non_exhaustive()
    }
}

impl Drop for KvPresence {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// One node's presence state, shared by the engine's calls, the writer and the watches.
struct PresenceNode {
    /// This node's name, as the cluster knows it.
    node: String,
    /// `node` as a key token.
    node_token: String,
    /// The presence bucket.
    kv: kv::Store,
    /// Members a room lists for members joined on other nodes (local joins bring their own
    /// cap, the same `max_presence_listed`).
    max_listed: usize,
    /// How often the writer refreshes this node's keys.
    heartbeat: Duration,
    /// How long a key lives without a refresh (3 × `heartbeat`).
    ttl: Duration,
    /// How long a room's first snapshot may take before the follow returns anyway (the
    /// watch cannot always tell it delivered an empty snapshot; see `watch_once`).
    snapshot_timeout: Duration,
    /// The client's connection losses and returns (a return means: re-put, re-sync).
    connection: watch::Receiver<ConnectionState>,
    /// Wakes the writer when the table of this node's keys changed.
    wake: Notify,
    /// Mirrors and this node's keys; a std mutex, held for a lookup and a change or a copy,
    /// never across an await.
    tables: Mutex<Tables>,
}

/// What [`PresenceNode::tables`] guards.
#[derive(Default)]
struct Tables {
    /// A mirror per room followed here (or joined while not followed), by room name.
    rooms: HashMap<Arc<str>, RoomMirror>,
    /// This node's keys, by bucket key: bounded by its sessions × their rooms.
    own: HashMap<String, OwnKey>,
    /// Keys of this node's members that left, waiting for their delete, with when they
    /// left: a key not deleted within a TTL of that has aged out, so it is dropped here.
    leaving: HashMap<String, Instant>,
    /// Stamps each change of an own key, so a put that raced a newer change does not mark
    /// it written.
    next_version: u64,
    /// Stamps each follow, so a stopped follow never touches its successor's mirror.
    next_generation: u64,
}

/// One of this node's keys.
struct OwnKey {
    /// What the key holds: the member's name as JSON.
    value: Bytes,
    /// The change that set it (see [`Tables::next_version`]).
    version: u64,
    /// The bucket has this version (until the next heartbeat asks for a refresh).
    written: bool,
}

/// One room's members as this node sees them. Members are named by their id in the
/// bucket, `<node token>.<session token>`.
#[derive(Default)]
struct RoomMirror {
    /// The follow that keeps it (0: joined here but not followed).
    generation: u64,
    /// Listed members in join order, at most the cap.
    listed: Vec<(String, Member)>,
    /// Members past the cap: counted, their ids kept so that each leave is counted once.
    counted: HashSet<String>,
}

impl RoomMirror {
    fn is_empty(&self) -> bool {
        self.listed.is_empty() && self.counted.is_empty()
    }

    /// Adds `id` if new: listed under `max_listed`, counted otherwise.
    fn add(&mut self, id: &str, member: &Member, max_listed: usize) -> Option<Listing> {
        if self.counted.contains(id) || self.listed.iter().any(|(known, _)| known == id) {
            return None;
        }
        Some(if self.listed.len() < max_listed {
            self.listed.push((id.to_owned(), member.clone()));
            Listing::Listed
        } else {
            self.counted.insert(id.to_owned());
            Listing::Counted
        })
    }

    /// Removes `id`; returns the member if it was listed.
    fn remove(&mut self, id: &str) -> Option<Member> {
        if self.counted.remove(id) {
            return None;
        }
        let at = self.listed.iter().position(|(known, _)| known == id)?;
        Some(self.listed.remove(at).1)
    }
}

/// What a watch entry of another node's key says.
enum RemoteChange {
    /// The entry `id` holds `member` (a join, or a refresh of a known member).
    Present { id: String, member: Member },
    /// The entry `id` was deleted (a leave) or aged out (its node stopped refreshing).
    Gone { id: String },
}

/// The value stored under a member's key.
#[derive(serde::Serialize, serde::Deserialize)]
struct MemberValue {
    /// The member's presence name.
    name: String,
}

/// `<prefix>_presence`, with anything a bucket name cannot hold made `_`.
pub fn bucket_name(prefix: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}_presence")
}

impl KvPresence {
    /// Creates (or updates to this node's settings) the presence bucket and starts the
    /// writer. Members joined on other nodes are listed up to `max_listed` per room
    /// (`max_presence_listed`, as for local joins).
    pub async fn start(cluster: &Cluster, max_listed: usize) -> Result<KvPresence, PresenceError> {
        let config = cluster.config();
        let heartbeat = config.presence_heartbeat;
        let ttl = heartbeat * 3;
        let bucket = bucket_name(&config.prefix);
        let settings = kv::Config {
            bucket: bucket.clone(),
            description:
                "duplex presence: <room>.<node>.<session> -> member, refreshed every heartbeat"
                    .into(),
            history: 1,
            max_age: ttl,
            storage: match config.storage {
                StreamStorage::File => jetstream::stream::StorageType::File,
                StreamStorage::Memory => jetstream::stream::StorageType::Memory,
            },
            num_replicas: config.replicas,
            limit_markers: Some(ttl.max(MIN_MARKER_TTL)),
            ..Default::default()
        };
        let deadline = Instant::now() + config.startup_timeout;
        let kv = loop {
            match cluster
                .jetstream()
                .create_or_update_key_value(settings.clone())
                .await
            {
                Ok(kv) => break kv,
                // Settings no server takes (an old server without limit markers) or a
                // bucket name NATS refuses: retrying cannot help.
                Err(error)
                    if matches!(
                        error.kind(),
                        BucketErrorKind::LimitMarkersNotSupported
                            | BucketErrorKind::InvalidStoreName
                            | BucketErrorKind::TooLongHistory
                    ) =>
                {
                    return Err(PresenceError::Bucket {
                        bucket,
                        reason: error.to_string(),
                    });
                }
                Err(error) if Instant::now() < deadline => {
                    warn!(%error, %bucket, "presence bucket not ready yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => {
                    return Err(PresenceError::Bucket {
                        bucket,
                        reason: error.to_string(),
                    });
                }
            }
        };
        let inner = Arc::new(PresenceNode {
            node_token: room_token(&config.node),
            node: config.node.clone(),
            kv,
            max_listed,
            heartbeat,
            ttl,
            snapshot_timeout: config.request_timeout,
            connection: cluster.connection(),
            wake: Notify::new(),
            tables: Mutex::new(Tables::default()),
        });
        let writer = tokio::spawn(write_own_keys(inner.clone())).abort_handle();
        info!(%bucket, ?heartbeat, ?ttl, "presence in the cluster's KV bucket");
        Ok(KvPresence { inner, writer })
    }
}

impl PresenceNode {
    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A member's id in the bucket: `<node token>.<session token>`.
    fn own_id(&self, member: &Member) -> String {
        format!("{}.{}", self.node_token, room_token(&member.session_id))
    }

    /// Makes a fresh mirror for a new follow of `room`, keeping this node's members (none
    /// in practice: joins wait for the follow). Returns the follow's generation.
    fn start_mirror(&self, room: &str) -> u64 {
        let own = format!("{}.", self.node_token);
        let mut tables = self.tables();
        tables.next_generation += 1;
        let generation = tables.next_generation;
        let mirror = tables.rooms.entry(room.into()).or_default();
        mirror.generation = generation;
        mirror.listed.retain(|(id, _)| id.starts_with(&own));
        mirror.counted.retain(|id| id.starts_with(&own));
        generation
    }

    /// Forgets the mirror of a follow that stopped (its room is gone from this process),
    /// unless a newer follow owns it.
    fn stop_mirror(&self, room: &str, generation: u64) {
        let mut tables = self.tables();
        if tables
            .rooms
            .get(room)
            .is_some_and(|mirror| mirror.generation == generation)
        {
            tables.rooms.remove(room);
        }
    }

    /// Applies another node's change to the mirror of follow `generation`; returns the
    /// event it makes (a listed member joined or left). Runs under the room lock.
    ///
    /// A listed id that comes back with another member (a node restarted under the same
    /// name within a TTL numbers its sessions from 1 again) is removed, with its leave, and
    /// `replaced` is set: applying the change again adds the new member, with its join.
    fn apply_remote(
        &self,
        room: &str,
        generation: u64,
        change: &RemoteChange,
        replaced: &mut bool,
    ) -> Option<PresenceChange> {
        let mut tables = self.tables();
        let mirror = tables
            .rooms
            .get_mut(room)
            .filter(|mirror| mirror.generation == generation)?;
        match change {
            RemoteChange::Present { id, member } => {
                let stale = mirror
                    .listed
                    .iter()
                    .any(|(known, listed)| known == id && listed != member);
                if stale {
                    *replaced = true;
                    return mirror.remove(id).map(PresenceChange::Left);
                }
                match mirror.add(id, member, self.max_listed)? {
                    Listing::Listed => Some(PresenceChange::Joined(member.clone())),
                    Listing::Counted => None,
                }
            }
            RemoteChange::Gone { id } => mirror.remove(id).map(PresenceChange::Left),
        }
    }

    /// Applies another node's change to the room through `events` (see `apply_remote`);
    /// returns false once the room is gone from this process.
    fn apply_through(
        &self,
        room: &str,
        generation: u64,
        events: &PresenceEvents,
        change: &RemoteChange,
    ) -> bool {
        let mut replaced = false;
        if !events.apply(|| self.apply_remote(room, generation, change, &mut replaced)) {
            return false;
        }
        !replaced || events.apply(|| self.apply_remote(room, generation, change, &mut replaced))
    }

    /// Other nodes' members in follow `generation`'s mirror that `present` lacks.
    fn missing_remote(
        &self,
        room: &str,
        generation: u64,
        present: &HashSet<String>,
    ) -> Vec<String> {
        let own = format!("{}.", self.node_token);
        let tables = self.tables();
        let Some(mirror) = tables
            .rooms
            .get(room)
            .filter(|mirror| mirror.generation == generation)
        else {
            return Vec::new();
        };
        mirror
            .listed
            .iter()
            .map(|(id, _)| id)
            .chain(mirror.counted.iter())
            .filter(|id| !id.starts_with(&own) && !present.contains(*id))
            .cloned()
            .collect()
    }

    /// What a watch entry of `room` says, if it is another node's member key (malformed
    /// keys and values are not duplex's and are skipped).
    fn remote_change(&self, room_token: &str, entry: &kv::Entry) -> Option<RemoteChange> {
        let id = entry.key.strip_prefix(room_token)?.strip_prefix('.')?;
        let (node_token, session_token) = id.split_once('.')?;
        if node_token == self.node_token || session_token.contains('.') {
            return None;
        }
        let id = id.to_owned();
        match entry.operation {
            kv::Operation::Delete | kv::Operation::Purge => Some(RemoteChange::Gone { id }),
            kv::Operation::Put => {
                let node = room_from_token(node_token)?;
                let session = room_from_token(session_token)?;
                let value: MemberValue = match serde_json::from_slice(&entry.value) {
                    Ok(value) => value,
                    Err(error) => {
                        debug!(key = %entry.key, %error, "presence value is not a member; skipped");
                        return None;
                    }
                };
                Some(RemoteChange::Present {
                    id,
                    member: Member {
                        name: value.name,
                        session_id: format!("{node}/{session}"),
                    },
                })
            }
        }
    }

    /// The writes the bucket needs now: the deletes of keys that left, then the puts of
    /// keys not written yet (every key when `refresh`).
    fn pending_writes(&self, refresh: bool) -> (Vec<String>, Vec<(String, Bytes, u64)>) {
        let mut tables = self.tables();
        let ttl = self.ttl;
        tables.leaving.retain(|_, left| left.elapsed() < ttl);
        let deletes = tables.leaving.keys().cloned().collect();
        let puts = tables
            .own
            .iter_mut()
            .filter(|(_, key)| refresh || !key.written)
            .map(|(name, key)| (name.clone(), key.value.clone(), key.version))
            .collect();
        (deletes, puts)
    }

    fn written(&self, key: &str, version: u64) {
        if let Some(own) = self.tables().own.get_mut(key)
            && own.version == version
        {
            own.written = true;
        }
    }

    fn deleted(&self, key: &str) {
        self.tables().leaving.remove(key);
    }
}

impl Presence for KvPresence {
    fn members(&self, room: &str) -> RoomPresence {
        self.inner
            .tables()
            .rooms
            .get(room)
            .map(|mirror| RoomPresence {
                members: mirror.listed.iter().map(|(_, m)| m.clone()).collect(),
                unlisted: mirror.counted.len() as u64,
            })
            .unwrap_or_default()
    }

    fn join(&self, room: &str, member: &Member, max_listed: usize) -> Listing {
        let inner = &self.inner;
        let id = inner.own_id(member);
        let key = format!("{}.{id}", room_token(room));
        let value = match serde_json::to_vec(&MemberValue {
            name: member.name.clone(),
        }) {
            Ok(value) => Bytes::from(value),
            Err(_) => Bytes::new(),
        };
        let listing = {
            let mut tables = inner.tables();
            let mirror = tables.rooms.entry(room.into()).or_default();
            // A session joins a room once (the engine refuses a second join), so the id
            // is new; if it were not, it keeps its first listing.
            let listing = mirror
                .add(&id, member, max_listed)
                .unwrap_or(Listing::Counted);
            tables.next_version += 1;
            let version = tables.next_version;
            tables.leaving.remove(&key);
            tables.own.insert(
                key,
                OwnKey {
                    value,
                    version,
                    written: false,
                },
            );
            listing
        };
        inner.wake.notify_one();
        listing
    }

    fn leave(&self, room: &str, member: &Member, listing: Listing) -> bool {
        let inner = &self.inner;
        let id = inner.own_id(member);
        let key = format!("{}.{id}", room_token(room));
        let was_listed = {
            let mut tables = inner.tables();
            let was_listed = match tables.rooms.get_mut(room) {
                Some(mirror) => {
                    let was_listed = match listing {
                        Listing::Listed => mirror.remove(&id).is_some(),
                        Listing::Counted => {
                            mirror.counted.remove(&id);
                            false
                        }
                    };
                    if mirror.generation == 0 && mirror.is_empty() {
                        tables.rooms.remove(room);
                    }
                    was_listed
                }
                None => false,
            };
            // Deleted even if never written: a put of it may be in flight.
            if tables.own.remove(&key).is_some() {
                tables.leaving.insert(key, Instant::now());
            }
            was_listed
        };
        inner.wake.notify_one();
        was_listed
    }

    fn follow(
        &self,
        room: &str,
        events: PresenceEvents,
    ) -> BoxFuture<'_, Result<FeedHandle, HubError>> {
        let inner = self.inner.clone();
        let room: Arc<str> = room.into();
        Box::pin(async move {
            let generation = inner.start_mirror(&room);
            let (ready_tx, ready_rx) = oneshot::channel();
            let task = tokio::spawn(follow_room(
                inner.clone(),
                room.clone(),
                generation,
                events,
                ready_tx,
            ));
            // Dropped with the room (or here, if the follow fails or is cancelled).
            let stop = StopFollowing {
                inner,
                room,
                generation,
                task: task.abort_handle(),
            };
            match ready_rx.await {
                Ok(Ok(())) => Ok(FeedHandle::new(stop)),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(HubError::Store(
                    "presence: the room's watch stopped before its snapshot".into(),
                )),
            }
        })
    }
}

/// Stops one room's watch and forgets its mirror when the room leaves this process.
struct StopFollowing {
    inner: Arc<PresenceNode>,
    room: Arc<str>,
    generation: u64,
    task: tokio::task::AbortHandle,
}

impl Drop for StopFollowing {
    fn drop(&mut self) {
        self.task.abort();
        self.inner.stop_mirror(&self.room, self.generation);
    }
}

/// Why one watch of a room ended.
enum WatchEnd {
    /// The room is gone from this process: stop.
    RoomGone,
    /// NATS came back: watch again and re-sync.
    Reconnected,
    /// The watch could not start or broke.
    Failed(String),
}

/// One room's watch task (see the module docs): watches, re-syncs after a reconnect or a
/// failure, until the room is gone. The first snapshot's outcome goes to `ready`.
async fn follow_room(
    inner: Arc<PresenceNode>,
    room: Arc<str>,
    generation: u64,
    events: PresenceEvents,
    ready: oneshot::Sender<Result<(), HubError>>,
) {
    let mut ready = Some(ready);
    let mut connection = inner.connection.clone();
    connection.borrow_and_update();
    let mut retry = WATCH_RETRY;
    loop {
        match watch_once(
            &inner,
            &room,
            generation,
            &events,
            &mut ready,
            &mut connection,
        )
        .await
        {
            WatchEnd::RoomGone => return,
            WatchEnd::Reconnected => {
                debug!(%room, "NATS is back: presence re-syncs");
                retry = WATCH_RETRY;
            }
            WatchEnd::Failed(reason) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(HubError::Store(format!(
                        "presence of room {room} unavailable: {reason}"
                    ))));
                    return;
                }
                if retry == WATCH_RETRY {
                    warn!(%room, %reason, "presence watch failed; watching again");
                } else {
                    debug!(%room, %reason, ?retry, "presence watch failed again");
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(WATCH_RETRY_MAX);
            }
        }
    }
}

/// Watches `room`'s keys once: the snapshot (applied as it comes; when it is complete,
/// other nodes' members it lacks leave, and `ready` is told), then every change.
async fn watch_once(
    inner: &PresenceNode,
    room: &str,
    generation: u64,
    events: &PresenceEvents,
    ready: &mut Option<oneshot::Sender<Result<(), HubError>>>,
    connection: &mut watch::Receiver<ConnectionState>,
) -> WatchEnd {
    let room_token = room_token(room);
    let filter = format!("{room_token}.>");
    // A watch tells the end of its snapshot on the snapshot's last entry, so an empty
    // snapshot is known only by asking first whether the room has any key at all.
    let empty = match inner
        .kv
        .stream
        .direct_get_next_for_subject(format!("{}{filter}", inner.kv.prefix), None)
        .await
    {
        Ok(_) => false,
        Err(error) if error.kind() == jetstream::stream::DirectGetErrorKind::NotFound => true,
        Err(error) => return WatchEnd::Failed(error.to_string()),
    };
    let mut watch = match inner.kv.watch_with_history(&filter).await {
        Ok(watch) => watch,
        Err(error) => return WatchEnd::Failed(error.to_string()),
    };
    // Other nodes' members in the snapshot, until it is complete.
    let mut snapshot = (!empty).then(HashSet::new);
    if snapshot.is_none() && !finish_snapshot(inner, room, generation, events, ready, None) {
        return WatchEnd::RoomGone;
    }
    // The watch may miss the snapshot's end if its last entry aged out before delivery.
    let snapshot_deadline = tokio::time::Instant::now() + inner.snapshot_timeout;
    loop {
        tokio::select! {
            entry = watch.next() => {
                let entry = match entry {
                    Some(Ok(entry)) => entry,
                    Some(Err(error)) => return WatchEnd::Failed(error.to_string()),
                    None => return WatchEnd::Failed("the watch ended".into()),
                };
                if let Some(change) = inner.remote_change(&room_token, &entry) {
                    if let (Some(present), RemoteChange::Present { id, .. }) = (&mut snapshot, &change) {
                        present.insert(id.clone());
                    }
                    if !inner.apply_through(room, generation, events, &change) {
                        return WatchEnd::RoomGone;
                    }
                }
                if entry.seen_current
                    && let Some(present) = snapshot.take()
                    && !finish_snapshot(inner, room, generation, events, ready, Some(&present))
                {
                    return WatchEnd::RoomGone;
                }
            }
            () = tokio::time::sleep_until(snapshot_deadline), if snapshot.is_some() => {
                let present = snapshot.take();
                debug!(%room, "presence snapshot not confirmed in time; going on with what came");
                if !finish_snapshot(inner, room, generation, events, ready, present.as_ref()) {
                    return WatchEnd::RoomGone;
                }
            }
            changed = connection.changed() => {
                if changed.is_err() {
                    // The client is gone: nothing more will come.
                    return WatchEnd::RoomGone;
                }
                let state = *connection.borrow_and_update();
                if state.connected {
                    return WatchEnd::Reconnected;
                }
            }
        }
    }
}

/// Ends a snapshot: other nodes' members of the mirror that `present` lacks leave (an
/// empty snapshot: `None`), and the follow is told it may return. Returns false once the
/// room is gone.
fn finish_snapshot(
    inner: &PresenceNode,
    room: &str,
    generation: u64,
    events: &PresenceEvents,
    ready: &mut Option<oneshot::Sender<Result<(), HubError>>>,
    present: Option<&HashSet<String>>,
) -> bool {
    let none = HashSet::new();
    for id in inner.missing_remote(room, generation, present.unwrap_or(&none)) {
        if !inner.apply_through(room, generation, events, &RemoteChange::Gone { id }) {
            return false;
        }
    }
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(()));
    }
    true
}

/// The writer (see the module docs): on each change of this node's keys, each heartbeat
/// (a refresh of every key) and each reconnect (a re-put of every key), brings the bucket
/// to the table.
async fn write_own_keys(inner: Arc<PresenceNode>) {
    let mut heartbeat = tokio::time::interval(inner.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection = inner.connection.clone();
    let mut connects = connection.borrow_and_update().connects;
    loop {
        let refresh = tokio::select! {
            _ = heartbeat.tick() => true,
            () = inner.wake.notified() => false,
            changed = connection.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = connection.borrow_and_update().connects;
                std::mem::replace(&mut connects, now) != now
            }
        };
        if !connection.borrow().connected {
            continue;
        }
        let (deletes, puts) = inner.pending_writes(refresh);
        futures::stream::iter(deletes)
            .for_each_concurrent(WRITES_IN_FLIGHT, |key| {
                let inner = &inner;
                async move {
                    match inner.kv.delete(&key).await {
                        Ok(()) => inner.deleted(&key),
                        Err(error) => debug!(%key, %error, "presence delete failed; retried"),
                    }
                }
            })
            .await;
        let results: Vec<(String, u64, bool)> = futures::stream::iter(puts)
            .map(|(key, value, version)| {
                let inner = &inner;
                async move {
                    let ok = match inner.kv.put(&key, value).await {
                        Ok(_) => true,
                        Err(error) => {
                            debug!(%key, %error, "presence put failed; retried");
                            false
                        }
                    };
                    (key, version, ok)
                }
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        let mut failed = 0usize;
        for (key, version, ok) in results {
            if ok {
                inner.written(&key, version);
            } else {
                failed += 1;
            }
        }
        if failed > 0 {
            warn!(
                failed,
                node = %inner.node,
                "presence writes failed; retried at the next heartbeat"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, session: &str) -> Member {
        Member {
            name: name.into(),
            session_id: session.into(),
        }
    }

    /// The mirror lists up to the cap, counts the rest, adds each id once and undoes each
    /// add once (a repeated delete or expiry marker changes nothing).
    #[test]
    fn a_mirror_adds_and_removes_each_member_once() {
        let mut mirror = RoomMirror::default();
        assert_eq!(
            mirror.add("a.1", &member("a", "1"), 1),
            Some(Listing::Listed)
        );
        assert_eq!(mirror.add("a.1", &member("a", "1"), 1), None, "a refresh");
        assert_eq!(
            mirror.add("b.1", &member("b", "1"), 1),
            Some(Listing::Counted)
        );
        assert_eq!(mirror.remove("b.1"), None);
        assert_eq!(mirror.remove("b.1"), None);
        assert_eq!(mirror.counted.len(), 0);
        assert_eq!(mirror.remove("a.1"), Some(member("a", "1")));
        assert_eq!(mirror.remove("a.1"), None);
        assert!(mirror.is_empty());
    }

    #[test]
    fn bucket_names_hold_only_what_a_bucket_name_may() {
        assert_eq!(bucket_name("duplex"), "duplex_presence");
        assert_eq!(bucket_name("acme.prod"), "acme_prod_presence");
    }
}

//! [`RepublishFeed`]: the hub's [`LiveFeed`] on the room stream's republish — one task per
//! room followed on this node, no JetStream consumer at all.
//!
//! The stream republishes every stored message to `<prefix>.live.<token>` with
//! `Nats-Sequence` (its offset) and `Nats-Last-Sequence` (the room's previous offset).
//! Core NATS is at most once (a slow subscription drops, a reconnect loses what was sent
//! meanwhile), so the feed never trusts it to be complete; it trusts the stream:
//!
//! 1. [`follow`](LiveFeed::follow) subscribes to the room's live subject and flushes, so
//!    the servers have the interest before anything is read; then the room's task reads
//!    `(after, now]` from the stream and delivers it. Whatever is stored after the flush
//!    comes live; whatever before, from the read; an overlap is skipped by offset.
//! 2. Live, a message at or below the last delivered offset is skipped; one whose
//!    `Nats-Last-Sequence` is above it shows a gap, which is read from the stream and
//!    delivered first. A gap that cannot be read yet (NATS failing) leaves the message
//!    undelivered: nothing later goes out before it, and the next read brings both.
//! 3. After a reconnect ([`Cluster::connection`]) and after [`QUIET_CHECK`] without a
//!    live message, the task reads what follows its last offset from the stream: the loss
//!    of a room's last message shows no gap until the next one, and this finds it. A room
//!    that stays quiet is checked less and less often (the pause doubles up to
//!    [`MAX_QUIET_CHECK`]), so idle rooms cost NATS little; any live message resets it.
//!
//! Every message is delivered through [`RoomDelivery::deliver`] in offset order, this
//! node's own appends too ([`LiveFeed::delivers_own_appends`]), decoded once per node; the
//! room encodes it once for all its subscribers. The task stops when the room is gone
//! (`deliver` says so) or its [`FeedHandle`] is dropped (abort).

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subscriber;
use duplex_hub::{FeedHandle, HubError, LiveFeed, RoomDelivery};
use duplex_store::{BoxFuture, Offset, Store as _, record};
use futures::StreamExt as _;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::log::JetStreamLog;

/// How long a followed room may go without a live message before its task checks the
/// stream for what it may have missed (a lost last message shows no gap by itself).
pub(crate) const QUIET_CHECK: Duration = Duration::from_secs(3);

/// The longest pause between two checks of a room that stays quiet.
pub(crate) const MAX_QUIET_CHECK: Duration = Duration::from_secs(60);

/// Most messages one catch-up read brings; a longer gap takes several.
const CATCH_UP_PAGE: usize = 512;

/// The live feed of a cluster node; see the module docs.
#[derive(Debug, Clone)]
pub struct RepublishFeed {
    cluster: Cluster,
    /// Where gaps are read from (with the node's read-after-write mark).
    log: Arc<JetStreamLog>,
}

impl RepublishFeed {
    /// The feed of `cluster`'s room stream, reading gaps through `log`.
    pub fn new(cluster: Cluster, log: Arc<JetStreamLog>) -> Self {
        RepublishFeed { cluster, log }
    }

    async fn start(
        &self,
        room: String,
        after: Offset,
        delivery: RoomDelivery,
    ) -> Result<FeedHandle, HubError> {
        let client = self.cluster.client();
        let unavailable =
            |what: &str, error: &dyn std::fmt::Display| HubError::Store(format!("{what}: {error}"));
        let live = client
            .subscribe(self.cluster.subjects().live(&room))
            .await
            .map_err(|e| unavailable("cannot subscribe to the room's live messages", &e))?;
        let timeout = self.cluster.config().request_timeout;
        match tokio::time::timeout(timeout, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(unavailable("cannot reach NATS", &error)),
            Err(_) => {
                return Err(HubError::Store(format!(
                    "NATS did not confirm the room's subscription within {timeout:?}"
                )));
            }
        }
        let follower = RoomFollower {
            room,
            last: after,
            delivery,
            log: self.log.clone(),
            cluster: self.cluster.clone(),
        };
        let task = tokio::spawn(follower.run(live)).abort_handle();
        Ok(FeedHandle::new(StopOnDrop(task)))
    }
}

impl LiveFeed for RepublishFeed {
    fn delivers_own_appends(&self) -> bool {
        true
    }

    fn follow(
        &self,
        room: &str,
        after: Offset,
        delivery: RoomDelivery,
    ) -> BoxFuture<'_, Result<FeedHandle, HubError>> {
        Box::pin(self.start(room.to_owned(), after, delivery))
    }
}

/// Aborts a room's task when the room's [`FeedHandle`] is dropped.
#[derive(Debug)]
struct StopOnDrop(AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One followed room's task state.
struct RoomFollower {
    room: String,
    /// The last offset delivered (or, at the start, the one live delivery starts after).
    last: Offset,
    delivery: RoomDelivery,
    log: Arc<JetStreamLog>,
    cluster: Cluster,
}

/// Whether a room's task goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The room is gone from this node.
    Stop,
}

impl RoomFollower {
    async fn run(mut self, mut live: Subscriber) {
        let mut connection = self.cluster.connection();
        connection.mark_unchanged();
        if self.catch_up().await == Flow::Stop {
            return;
        }
        let mut quiet = QUIET_CHECK;
        loop {
            let flow = tokio::select! {
                message = live.next() => match message {
                    Some(message) => {
                        quiet = QUIET_CHECK;
                        self.live(message).await
                    }
                    None => {
                        debug!(room = %self.room, "live subscription closed");
                        Flow::Stop
                    }
                },
                changed = connection.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let connected = connection.borrow_and_update().connected;
                    if connected { self.catch_up().await } else { Flow::Continue }
                }
                () = tokio::time::sleep(quiet) => {
                    quiet = (quiet * 2).min(MAX_QUIET_CHECK);
                    self.catch_up().await
                }
            };
            if flow == Flow::Stop {
                return;
            }
        }
    }

    /// One republished message (see the module docs, step 2).
    async fn live(&mut self, message: async_nats::Message) -> Flow {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .and_then(|v| v.as_str().parse::<u64>().ok())
        };
        let (Some(seq), previous) = (header("Nats-Sequence"), header("Nats-Last-Sequence")) else {
            warn!(room = %self.room, "live message without Nats-Sequence ignored");
            return Flow::Continue;
        };
        self.cluster.saw(&self.room, seq);
        if seq <= self.last {
            return Flow::Continue;
        }
        if previous.is_none_or(|previous| previous > self.last) {
            // A gap (or no way to tell): the stream has it, and this message too.
            return self.catch_up().await;
        }
        match record::decode(&self.room, seq, &message.payload) {
            Ok(stored) => self.deliver(&stored),
            Err(error) => {
                warn!(room = %self.room, seq, %error, "undecodable live message; reading the stream instead");
                self.catch_up().await
            }
        }
    }

    fn deliver(&mut self, message: &duplex_store::StoredMessage) -> Flow {
        if !self.delivery.deliver(message) {
            return Flow::Stop;
        }
        self.last = message.offset;
        Flow::Continue
    }

    /// Reads and delivers everything the stream holds after `last`. A failed read is left
    /// for the next check (a live message, a reconnect, the quiet timer).
    async fn catch_up(&mut self) -> Flow {
        loop {
            let page = match self
                .log
                .read_after(&self.room, self.last, CATCH_UP_PAGE)
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    debug!(room = %self.room, after = self.last, %error, "catch-up read failed; retrying later");
                    return Flow::Continue;
                }
            };
            let full = page.len() >= CATCH_UP_PAGE;
            for message in &page {
                if message.offset > self.last && self.deliver(message) == Flow::Stop {
                    return Flow::Stop;
                }
            }
            if !full {
                return Flow::Continue;
            }
        }
    }
}

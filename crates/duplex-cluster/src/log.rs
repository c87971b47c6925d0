//! [`JetStreamLog`]: the hub's [`Store`] on the room stream — JetStream assigns the
//! offsets (stream sequences), dedupes, replicates and keeps retention; this module only
//! publishes, reads and maps errors.
//!
//! - **Append**: every message of a batch is published to its room's subject
//!   ([`Subjects::room`](crate::Subjects::room)) before any PubAck is awaited (pipelined;
//!   the JetStream context bounds the acks in flight), then the acks are awaited in order:
//!   offset = the PubAck's stream sequence, `duplicate` = the PubAck's. The body is
//!   [`record::encode`] of the message (time, sender, content type, client id, key,
//!   payload); a message with a client id carries `Nats-Msg-Id: <room token>/<client id>`
//!   (JetStream's duplicate window is per stream, so the room must be in the id). A batch
//!   is acked only once every PubAck is in (JetStream's PubAck follows the write on a
//!   quorum of the replicas). A failure answers the whole batch with
//!   [`StoreError::Unavailable`], though part of it may be stored: the publishers get
//!   UNAVAILABLE and a retry with the same client id is deduped by the stream. While the
//!   client knows it is disconnected an append fails at once instead of waiting for a
//!   timeout. On a replicated stream a repeat of an id whose original is still being
//!   stored (in the same batch, or a retry racing its original on another node) is
//!   refused with 10158 rather than deduped; it is published again, alone, until
//!   JetStream answers it as a duplicate with the original's sequence.
//! - **Reads** (`read_after`, `read_page`, `bounds`): raw direct gets on
//!   `$JS.API.DIRECT.GET.<stream>`, a batch (`next_by_subj`, `batch`, `max_bytes`) read up
//!   to its `204 EOB` status. Any replica may answer a direct get, and a follower may be
//!   behind the leader (no read-after-write). nats-server 2.15.1 has no `min_last_seq`
//!   (ADR-53 is only proposed: a direct get ignores the field, a `STREAM.MSG.GET` refuses
//!   it as unknown), so the check is ours: the node remembers the newest offset it knows
//!   per room ([`Cluster::saw`]: its PubAcks, the feed's messages), and a read that ends
//!   below it without filling its page either came from a replica that is behind or
//!   retention removed the room's newest messages since; the stream leader's last message
//!   of the room (`STREAM.MSG.GET`, leader only) tells which. A read from a replica behind
//!   is asked again (a follower catches up in milliseconds) until the request timeout,
//!   then fails UNAVAILABLE rather than answer short: a replay that read nothing would
//!   take the room for emptied by retention.
//! - **`last_offset`** is the room's last offset as the stream's leader has it
//!   (`STREAM.MSG.GET` by subject, leader only, so never behind), or, for a room with no
//!   message, the newest offset this node saw in it (0 if none). The engine uses it as
//!   the point live delivery starts after when a room is loaded, and as `last` of a room
//!   that retains nothing: any value at least every offset the room had and below every
//!   later one serves the first, and every later message gets a higher stream sequence.
//!   Not the stream's last sequence: a room that never had a message would then look
//!   emptied by retention, and a join replaying its history would fail. A room emptied by
//!   retention (`max_age`) on a node that never saw it reads as never used there: a resume
//!   after one of its old offsets is refused as beyond the last offset rather than as too
//!   old.
//! - **Retention** is the stream's (`max_messages_per_subject`, `max_age`): JetStream
//!   enforces it itself, so [`Store::enforce_retention`] removes nothing.
//! - **Availability** ([`Store::counters`]) follows the NATS connection, so health turns
//!   NOT_SERVING and `/readyz` 503 while the node has no NATS.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;
use duplex_store::{
    Appended, BoxFuture, NewMessage, Offset, RoomBounds, Store, StoreCounters, StoreError,
    StoredMessage, record,
};
use futures::StreamExt as _;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::cluster::{Cluster, MAX_ACKS_IN_FLIGHT};
use crate::subject::room_token;

/// Most messages one direct get asks a replica for; a longer read takes several.
const MAX_READ_BATCH: usize = 1000;

/// The header a direct get answer carries with how many messages the replica has after it
/// (async-nats has no constant for it).
const NUM_PENDING: &str = "Nats-Num-Pending";

/// What one direct get brought.
#[derive(Debug, Default)]
struct DirectReplies {
    /// (offset, record) of each message, in order.
    messages: Vec<(Offset, Bytes)>,
    /// The last answer said more messages follow it (a batch stopped at its bound).
    more: bool,
}

/// The room stream as the hub's log; see the module docs.
#[derive(Debug)]
pub struct JetStreamLog {
    cluster: Cluster,
    /// Appended batches whose every PubAck came back: what [`Store::commits`] reports.
    commits: AtomicU64,
    /// PubAck latency and availability (the NATS connection) for health and metrics.
    counters: Arc<StoreCounters>,
    /// The task that mirrors the connection into `counters`; stopped with the log.
    availability: AbortHandle,
}

impl Drop for JetStreamLog {
    fn drop(&mut self) {
        self.availability.abort();
    }
}

impl JetStreamLog {
    /// The log of `cluster`'s room stream. Spawns the task that mirrors the connection
    /// state into [`Store::counters`] (needs a tokio runtime).
    pub fn new(cluster: Cluster) -> Self {
        let counters = Arc::new(StoreCounters::default());
        let mut connection = cluster.connection();
        let mirrored = counters.clone();
        let availability = tokio::spawn(async move {
            loop {
                let connected = connection.borrow_and_update().connected;
                mirrored.set_available(connected);
                if connection.changed().await.is_err() {
                    return;
                }
            }
        })
        .abort_handle();
        JetStreamLog {
            cluster,
            commits: AtomicU64::new(0),
            counters,
            availability,
        }
    }

    /// Fails at once while the client knows it is disconnected (it would only buffer the
    /// request and wait out the request timeout).
    fn check_connected(&self) -> Result<(), StoreError> {
        match self.cluster.client().connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(StoreError::Unavailable(
                "this node has lost its connection to NATS and is reconnecting; retry shortly \
                 (with the same client message id, a retry is stored once)"
                    .into(),
            )),
        }
    }

    async fn append_batch(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.check_connected()?;
        let started = Instant::now();
        let result = self.publish_all(&batch).await;
        match &result {
            Ok(_) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.counters.committed(started.elapsed());
            }
            Err(_) => self.counters.append_failed(),
        }
        result
    }

    /// Sends every publish of `batch`, then awaits every PubAck (see the module docs). At
    /// most [`MAX_ACKS_IN_FLIGHT`] are awaited at once: async-nats holds a permit per ack
    /// until its future is awaited, so sending more first would wait forever.
    async fn publish_all(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        let jetstream = self.cluster.jetstream();
        let subjects = self.cluster.subjects();
        let dedupe = !self.cluster.config().duplicate_window.is_zero();
        let mut appended = Vec::with_capacity(batch.len());
        let mut pending = VecDeque::with_capacity(batch.len().min(MAX_ACKS_IN_FLIGHT));
        for message in batch {
            if pending.len() >= MAX_ACKS_IN_FLIGHT
                && let Some((ack, message)) = pending.pop_front()
            {
                appended.push(self.acked(ack, message).await?);
            }
            let ack = jetstream
                .send_publish(subjects.room(&message.room), publish_of(message, dedupe))
                .await
                .map_err(|error| publish_failed(error.kind(), &error))?;
            pending.push_back((ack, message));
        }
        for (ack, message) in pending {
            appended.push(self.acked(ack, message).await?);
        }
        Ok(appended)
    }

    /// Awaits the PubAck of `message`'s publish.
    async fn acked(
        &self,
        ack: PublishAckFuture,
        message: &NewMessage,
    ) -> Result<Appended, StoreError> {
        let ack = match ack.await {
            Ok(ack) => ack,
            // In a cluster, a repeat of an id whose original is still being stored
            // (within this batch, or a client retrying on another node meanwhile) is
            // refused, not deduped: ask again once the original is through.
            Err(error) if id_in_process(&error) => self.publish_repeat(message).await?,
            Err(error) => return Err(publish_failed(error.kind(), &error)),
        };
        self.cluster.saw(&message.room, ack.sequence);
        Ok(Appended {
            offset: ack.sequence,
            // JetStream does not say when a duplicate's original was stored; the engine
            // uses this time only for a local delivery, which a cluster's feed does
            // instead, from the stored record.
            time_unix_micros: message.time_unix_micros,
            duplicate: ack.duplicate,
        })
    }

    /// Publishes `message` again, one at a time, until JetStream is through with the
    /// original of its message id (it then answers with the original's sequence and
    /// `duplicate`), for at most the request timeout.
    async fn publish_repeat(&self, message: &NewMessage) -> Result<PublishAck, StoreError> {
        let deadline = Instant::now() + self.cluster.config().request_timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            let publish = self
                .cluster
                .jetstream()
                .send_publish(
                    self.cluster.subjects().room(&message.room),
                    publish_of(message, !self.cluster.config().duplicate_window.is_zero()),
                )
                .await
                .map_err(|error| publish_failed(error.kind(), &error))?;
            match publish.await {
                Ok(ack) => return Ok(ack),
                Err(error) if id_in_process(&error) && Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(error) => return Err(publish_failed(error.kind(), &error)),
            }
        }
    }

    /// Up to `limit` messages of `room` after `after`, within `max_bytes` of
    /// [`StoredMessage::size`] (a first message over it comes alone); asked again while the
    /// answer is short of what the node knows the room has (see the module docs).
    async fn read(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
        max_bytes: Option<usize>,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + self.cluster.config().request_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let known = self.cluster.seen(room);
            let (messages, full, reached) = self.read_once(room, after, limit, max_bytes).await?;
            if full || reached >= known {
                return Ok(messages);
            }
            // Short of what this node saw: a replica behind, or retention removed the
            // room's newest messages since. The stream's leader tells which.
            let subject = self.cluster.subjects().room(room);
            if self.leader_last(&subject).await?.unwrap_or(0) <= reached {
                return Ok(messages);
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "room {room}: the JetStream replicas answered history only up to offset \
                     {reached}, and this node has seen {known}; retry shortly"
                )));
            }
            debug!(
                room,
                reached, known, "a replica behind answered a read; asking again"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// One batch direct get for [`read`](Self::read): the page, whether it stopped at its
    /// count or byte bound (rather than at the end of what the replica has), and the last
    /// offset it went through (an unreadable message is skipped but counts as read).
    async fn read_once(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
        max_bytes: Option<usize>,
    ) -> Result<(Vec<StoredMessage>, bool, Offset), StoreError> {
        let subject = self.cluster.subjects().room(room);
        let batch = limit.min(MAX_READ_BATCH);
        let mut request = serde_json::json!({
            "seq": after.saturating_add(1),
            "next_by_subj": subject,
            "batch": batch,
        });
        if let Some(max_bytes) = max_bytes {
            // The server counts stored bytes (record, subject, headers), not ours; the page
            // is trimmed to our own count below. At least one message comes back.
            request["max_bytes"] = max_bytes.max(1).into();
        }
        let replies = self.direct_get(request, true).await?;
        // The replica says whether more follow what it sent (its own bound stopped it).
        let mut full = replies.more;
        let mut budget = max_bytes.unwrap_or(usize::MAX);
        let mut messages = Vec::with_capacity(replies.messages.len());
        let mut reached = after;
        for (offset, body) in replies.messages {
            let message = match record::decode(room, offset, &body) {
                Ok(message) => message,
                Err(error) => {
                    // Not a record this build wrote (another version, or a foreign
                    // publisher on the room's subject): skipped, so one bad message cannot
                    // stop the room's history and live delivery on every node.
                    warn!(room, offset, %error, "skipping an unreadable message in the room stream");
                    reached = offset;
                    continue;
                }
            };
            let size = message.size();
            if !messages.is_empty() && size > budget {
                full = true;
                break;
            }
            budget = budget.saturating_sub(size);
            messages.push(message);
            reached = offset;
            if messages.len() >= limit {
                full = true;
                break;
            }
        }
        Ok((messages, full, reached))
    }

    /// The last message's sequence on `subject`, if any.
    async fn last_of(&self, subject: &str) -> Result<Option<Offset>, StoreError> {
        let request = serde_json::json!({ "last_by_subj": subject });
        Ok(self
            .direct_get(request, false)
            .await?
            .messages
            .first()
            .map(|(seq, _)| *seq))
    }

    /// Sends one direct get and collects the (sequence, body) of its
    /// answers: one for a single get, up to the `204 EOB` status for a batch. `404` is no
    /// message.
    async fn direct_get(
        &self,
        request: serde_json::Value,
        batch: bool,
    ) -> Result<DirectReplies, StoreError> {
        self.check_connected()?;
        let client = self.cluster.client();
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|error| unavailable("subscribe for a direct get", &error))?;
        let api = format!("$JS.API.DIRECT.GET.{}", self.cluster.config().stream);
        client
            .publish_with_reply(api, inbox, Bytes::from(request.to_string()))
            .await
            .map_err(|error| unavailable("send a direct get", &error))?;
        let timeout = self.cluster.config().request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = DirectReplies::default();
        loop {
            let reply = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    return Err(StoreError::Unavailable(
                        "the NATS connection closed during a history read".into(),
                    ));
                }
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "no JetStream replica answered a history read within {timeout:?}"
                    )));
                }
            };
            match reply.status.map(u16::from) {
                None | Some(200) => {
                    let headers = reply.headers.as_ref();
                    let seq = headers
                        .and_then(|h| h.get(async_nats::header::NATS_SEQUENCE))
                        .and_then(|v| v.as_str().parse::<u64>().ok())
                        .ok_or_else(|| {
                            StoreError::Unavailable(
                                "a direct get answer carried no Nats-Sequence".into(),
                            )
                        })?;
                    // Messages the replica has after this one (within the request's
                    // filter): above 0 on the last one means its bound stopped the batch.
                    out.more = headers
                        .and_then(|h| h.get(NUM_PENDING))
                        .and_then(|v| v.as_str().parse::<u64>().ok())
                        .is_some_and(|pending| pending > 0);
                    out.messages.push((seq, reply.payload));
                    if !batch {
                        return Ok(out);
                    }
                }
                // End of batch.
                Some(204) => return Ok(out),
                // No (more) messages.
                Some(404) => return Ok(out),
                Some(status) => {
                    debug!(status, description = ?reply.description, "direct get failed");
                    return Err(StoreError::Unavailable(format!(
                        "JetStream answered a history read with {status} {}",
                        reply.description.unwrap_or_default()
                    )));
                }
            }
        }
    }

    /// The last sequence on `subject`, from the stream's leader (a `STREAM.MSG.GET`,
    /// which only the leader answers: never behind).
    async fn leader_last(&self, subject: &str) -> Result<Option<Offset>, StoreError> {
        let stream = self
            .cluster
            .jetstream()
            .get_stream_no_info(&self.cluster.config().stream)
            .await
            .map_err(|error| unavailable("open the room stream", &error))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(message.sequence)),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(unavailable(
                "ask the stream leader for a room's last message",
                &error,
            )),
        }
    }

    /// The room's last offset (see the module docs).
    async fn room_last(&self, room: &str) -> Result<Offset, StoreError> {
        self.check_connected()?;
        let subject = self.cluster.subjects().room(room);
        Ok(match self.leader_last(&subject).await? {
            Some(last) => {
                // The room loads at this offset: a replay up to it must not take a
                // replica that is behind for the room's end.
                self.cluster.saw(room, last);
                last
            }
            None => self.cluster.seen(room),
        })
    }
}

/// The publish of `message`: its record, and its message id when it has a client id and
/// `dedupe` is on (`--dedupe-window 0s` turns it off: JetStream would read a zero window as
/// its default of two minutes).
fn publish_of(message: &NewMessage, dedupe: bool) -> PublishMessage {
    let publish = PublishMessage::build().payload(Bytes::from(record::encode(message)));
    if message.client_id.is_empty() || !dedupe {
        return publish;
    }
    publish.message_id(format!(
        "{}/{}",
        room_token(&message.room),
        message.client_id
    ))
}

/// Whether a publish was refused because JetStream is still storing the original of its
/// message id (10158, clustered streams only).
fn id_in_process(error: &PublishError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|error| error.error_code() == ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT)
}

/// A publish that failed, as a message a client can act on.
fn publish_failed(kind: PublishErrorKind, error: &dyn std::fmt::Display) -> StoreError {
    StoreError::Unavailable(match kind {
        PublishErrorKind::TimedOut => format!(
            "JetStream did not acknowledge the publish in time ({error}); it may be stored: \
             retry with the same client message id"
        ),
        PublishErrorKind::StreamNotFound => {
            format!("the room stream does not exist on NATS ({error})")
        }
        _ => format!("JetStream refused or lost the publish: {error}"),
    })
}

/// A NATS request that failed while doing `what`.
fn unavailable(what: &str, error: &dyn std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("cannot {what} on NATS: {error}"))
}

impl Store for JetStreamLog {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        Box::pin(self.append_batch(batch))
    }

    fn read_after(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        let room = room.to_owned();
        Box::pin(async move { self.read(&room, after, limit, None).await })
    }

    fn read_page(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        let room = room.to_owned();
        Box::pin(async move { self.read(&room, after, limit, Some(max_bytes)).await })
    }

    fn bounds(&self, room: &str) -> BoxFuture<'_, Result<Option<RoomBounds>, StoreError>> {
        let room = room.to_owned();
        Box::pin(async move {
            let subject = self.cluster.subjects().room(&room);
            let first = serde_json::json!({ "seq": 1, "next_by_subj": subject });
            let Some(&(earliest, _)) = self.direct_get(first, false).await?.messages.first() else {
                return Ok(None);
            };
            // A replica behind may not have the newest: what this node has seen counts too.
            let last = self
                .last_of(&subject)
                .await?
                .unwrap_or(earliest)
                .max(self.cluster.seen(&room));
            Ok(Some(RoomBounds {
                earliest,
                last: last.max(earliest),
            }))
        })
    }

    fn last_offset(&self, room: &str) -> BoxFuture<'_, Result<Offset, StoreError>> {
        let room = room.to_owned();
        Box::pin(async move { self.room_last(&room).await })
    }

    /// Stream sequences: other rooms' messages take the numbers between a room's.
    fn offsets_are_dense(&self) -> bool {
        false
    }

    fn enforce_retention(&self, _now_unix_micros: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Ok(0)))
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn counters(&self) -> Option<&StoreCounters> {
        Some(&self.counters)
    }
}

//! The local publish path after validation: the sequencer task, one per hub.
//!
//! Every publish — from sessions and from unary calls — goes through one bounded queue
//! (`HubConfig::sequencer_queue`) to [`run_sequencer`]. It drains what is waiting (up to
//! `max_batch`), stamps the batch with one time, and appends it to the log in one call
//! (one durable commit: publishers that arrive during a commit share the next one). The
//! log assigns the offsets and reports duplicates; the sequencer then, in batch order,
//! hands each new message to its room's [`Room::deliver`] (fan-out, encoded once) and acks
//! it. Repeats are acked last, with their original's offset: the original is durable and,
//! if it was in this batch, delivered by then. So a message is acked and delivered only
//! once it is durable, and each room keeps the log's one total order. The sequencer never
//! reads the store, and when an append fails nothing was stored: every publish of the
//! batch gets the error and there is nothing to undo.
//!
//! Over a shared log (a cluster) the sequencer appends and acks but does not deliver: the
//! live feed delivers every message of a room, this node's too, in the log's order (see
//! [`LiveFeed::delivers_own_appends`](crate::LiveFeed::delivers_own_appends)). A failed
//! append there may have stored part of the batch: the publishers get UNAVAILABLE, and a
//! retry with the same client message id is deduped by the log.

use std::sync::Arc;

use duplex_store::{NewMessage, Store, StoredMessage};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::HubError;
use crate::config::HubConfig;
use crate::counters::HubCounters;
use crate::engine::{PublishCommand, PublishOutcome, now_unix_micros};

/// The sequencer task: runs until every sender of `commands` is gone. With
/// `deliver` false it only appends and acks: the live feed delivers this process's appends
/// too ([`LiveFeed::delivers_own_appends`](crate::LiveFeed::delivers_own_appends)).
pub(crate) async fn run_sequencer(
    mut commands: mpsc::Receiver<PublishCommand>,
    store: Arc<dyn Store>,
    deliver: bool,
    config: HubConfig,
    counters: Arc<HubCounters>,
) {
    let mut batch = Vec::with_capacity(config.max_batch);
    while commands
        .recv_many(&mut batch, config.max_batch.max(1))
        .await
        > 0
    {
        commit_batch(&mut batch, &*store, deliver, &counters).await;
    }
    debug!("sequencer stopped");
}

/// Appends one batch, then delivers and acks it (see the module docs).
async fn commit_batch(
    batch: &mut Vec<PublishCommand>,
    store: &dyn Store,
    deliver: bool,
    counters: &HubCounters,
) {
    let now = now_unix_micros();
    let records: Vec<NewMessage> = batch
        .iter()
        .map(|command| {
            let input = &command.input;
            NewMessage {
                room: input.room.clone(),
                time_unix_micros: now,
                sender: input.sender.clone(),
                content_type: input.content_type.clone(),
                client_id: input.client_id.clone(),
                key: input.key.clone(),
                payload: input.payload.clone(),
            }
        })
        .collect();
    let started = std::time::Instant::now();
    let appended = store.append(records).await;
    // One clock read for the batch: every ack below is counted as made now.
    let acked_at = std::time::Instant::now();
    counters.committed(batch.len(), acked_at - started);
    if appended.is_err() {
        counters.publishes_failed(batch.len());
    }
    let outcomes = match appended {
        Ok(outcomes) if outcomes.len() == batch.len() => outcomes,
        Ok(outcomes) => {
            let error = HubError::Store(format!(
                "the store answered {} of {} appended messages",
                outcomes.len(),
                batch.len()
            ));
            for command in batch.drain(..) {
                let _ = command.reply.send(Err(error.clone()));
            }
            return;
        }
        Err(error) => {
            warn!(%error, messages = batch.len(), "append failed; publishes get UNAVAILABLE");
            let error = HubError::from(error);
            for command in batch.drain(..) {
                let _ = command.reply.send(Err(error.clone()));
            }
            return;
        }
    };
    let mut duplicates = Vec::new();
    for (command, outcome) in batch.drain(..).zip(outcomes) {
        let PublishCommand {
            room,
            input,
            reply,
            queued_at,
        } = command;
        let result = PublishOutcome {
            offset: outcome.offset,
            duplicate: outcome.duplicate,
        };
        let latency = acked_at.saturating_duration_since(queued_at);
        if outcome.duplicate {
            counters.acked_duplicate(latency);
            duplicates.push((reply, result));
            continue;
        }
        counters.acked(input.payload.len(), latency);
        if !deliver {
            drop(room);
            let _ = reply.send(Ok(result));
            continue;
        }
        let message = StoredMessage {
            room: input.room,
            offset: outcome.offset,
            time_unix_micros: outcome.time_unix_micros,
            sender: input.sender,
            content_type: input.content_type,
            client_id: input.client_id,
            key: input.key,
            payload: input.payload,
        };
        room.deliver(&message);
        // Let go of the room before waking the publisher, so its release of the room
        // finds nobody else holding it.
        drop(room);
        let _ = reply.send(Ok(result));
    }
    for (reply, result) in duplicates {
        let _ = reply.send(Ok(result));
    }
}

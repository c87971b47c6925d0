//! The writer thread of [`RedbStore`](crate::RedbStore): the only code that writes the file.
//!
//! It runs a plain loop on its own OS thread (fsync blocks, so it has no place on the async
//! runtime): wait for one request, take every other request already waiting (up to
//! [`MAX_REQUESTS_PER_COMMIT`]), write all the appends in one transaction, commit it with
//! fsync, count the commit, and only then answer each request. Appends that arrive while a
//! commit runs wait in the channel and make up the next group, so the number of fsyncs
//! follows the disk's speed, not the number of publishers.
//!
//! A batch whose offsets do not follow its room's last offset is refused on its own; the
//! rest of its group still commits. A failed transaction or commit fails every append of
//! the group with the same error, and none of them is acknowledged; the writer then closes
//! and reopens the database (see `redb_store`), since redb refuses every write after one
//! failed.
//!
//! The loop ends when every sender is gone (the store was dropped), after the requests
//! already queued.

use std::collections::HashMap;

use foldhash::fast::RandomState as FastHash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use crate::redb_store::{
    CLIENT_IDS, MAX_REQUESTS_PER_COMMIT, MESSAGES, OpenDatabase, REOPEN_INTERVAL, ROOMS,
};
use crate::{MAX_RETENTION_DELETES_PER_RUN, Offset, Retention, StoreError, StoredMessage, record};

/// What the store asks of its writer thread.
pub(crate) enum WriteRequest {
    /// Persist a batch; answer once it is durable.
    Append {
        batch: Vec<StoredMessage>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Delete what retention no longer keeps; answer how many messages went.
    EnforceRetention {
        now_unix_micros: i64,
        done: oneshot::Sender<Result<u64, StoreError>>,
    },
}

type PendingAppend = (Vec<StoredMessage>, oneshot::Sender<Result<(), StoreError>>);

/// A room's row of the rooms table, as the writer updates it within a transaction.
#[derive(Debug, Clone, Copy, Default)]
struct RoomState {
    last: Offset,
    retained: u64,
}

/// The write side of the database. Owned by its thread; see the module docs.
pub(crate) struct Writer {
    db: Arc<OpenDatabase>,
    retention: Retention,
    commits: Arc<AtomicU64>,
    requests: mpsc::Receiver<WriteRequest>,
    /// When the database was last closed to be reopened and the last attempt failed:
    /// attempts are spaced by [`REOPEN_INTERVAL`].
    failed_reopen_at: Option<Instant>,
}

impl Writer {
    pub(crate) fn new(
        db: Arc<OpenDatabase>,
        retention: Retention,
        commits: Arc<AtomicU64>,
        requests: mpsc::Receiver<WriteRequest>,
    ) -> Self {
        Writer {
            db,
            retention,
            commits,
            requests,
            failed_reopen_at: None,
        }
    }

    /// Waits for the next request; `None` once the store is dropped. While the database is
    /// closed after a failed write, it keeps trying to reopen it (every
    /// [`REOPEN_INTERVAL`]) even when no write comes: reads fail until it is open again.
    fn next_request(&mut self) -> Option<WriteRequest> {
        loop {
            if self.db.is_open() {
                return self.requests.blocking_recv();
            }
            match self.requests.try_recv() {
                Ok(request) => return Some(request),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            let _ = self.database();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The open database, reopening it first if a failed write closed it (at most once
    /// per [`REOPEN_INTERVAL`]).
    fn database(&mut self) -> Result<Arc<Database>, StoreError> {
        if self.db.is_open() {
            return self.db.get();
        }
        if self
            .failed_reopen_at
            .is_some_and(|at| at.elapsed() < REOPEN_INTERVAL)
        {
            return Err(StoreError::Reopening);
        }
        match self.db.reopen() {
            Ok(()) => {
                self.failed_reopen_at = None;
                tracing::warn!("store database reopened after a failed write; writes go on");
                self.db.get()
            }
            Err(error) => {
                self.failed_reopen_at = Some(Instant::now());
                tracing::error!(%error, "store database could not be reopened; will retry");
                Err(StoreError::Reopening)
            }
        }
    }

    /// A write failed: redb refuses every later write until the database is reopened, so
    /// close it now; the next request reopens it.
    fn recover(&mut self, error: &StoreError) {
        if matches!(error, StoreError::Reopening) {
            return;
        }
        tracing::error!(%error, "store write failed; closing the database to reopen it");
        self.db.close();
        self.failed_reopen_at = None;
    }

    /// The thread's loop; returns when the store is dropped.
    pub(crate) fn run(mut self) {
        while let Some(first) = self.next_request() {
            let mut appends: Vec<PendingAppend> = Vec::new();
            let mut retention_runs = Vec::new();
            let mut sort = |request| match request {
                WriteRequest::Append { batch, done } => appends.push((batch, done)),
                WriteRequest::EnforceRetention {
                    now_unix_micros,
                    done,
                } => retention_runs.push((now_unix_micros, done)),
            };
            sort(first);
            for _ in 1..MAX_REQUESTS_PER_COMMIT {
                match self.requests.try_recv() {
                    Ok(request) => sort(request),
                    Err(_) => break,
                }
            }
            if !appends.is_empty() {
                self.commit_appends(appends);
            }
            for (now_unix_micros, done) in retention_runs {
                let result = self
                    .database()
                    .and_then(|db| self.enforce_retention(&db, now_unix_micros));
                if let Err(error) = &result {
                    tracing::error!(%error, "store retention run failed");
                    self.recover(error);
                }
                let _ = done.send(result);
            }
        }
    }

    /// Writes a group of appends in one transaction and answers each once it is durable.
    fn commit_appends(&mut self, appends: Vec<PendingAppend>) {
        let requests = appends.len();
        let written = self
            .database()
            .and_then(|db| self.write_group(&db, &appends));
        match written {
            Ok(verdicts) => {
                tracing::trace!(requests, "store group committed");
                for ((_, done), verdict) in appends.into_iter().zip(verdicts) {
                    let _ = done.send(verdict);
                }
            }
            Err(error) => {
                tracing::error!(%error, requests, "store group commit failed");
                for (_, done) in appends {
                    let _ = done.send(Err(error.clone()));
                }
                self.recover(&error);
            }
        }
    }

    /// One transaction for the whole group. `Ok` holds each request's verdict (refused or
    /// stored) and means the stored ones are durable; `Err` means none is.
    fn write_group(
        &self,
        db: &Database,
        appends: &[PendingAppend],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let txn = begin_durable(db)?;
        let mut verdicts = Vec::with_capacity(appends.len());
        let mut stored = 0usize;
        {
            let mut messages = txn.open_table(MESSAGES)?;
            let mut ids = txn.open_table(CLIENT_IDS)?;
            let mut rooms = txn.open_table(ROOMS)?;
            // Maps over the rooms of one group, looked up per message: a fast hash (a
            // group names at most a few thousand rooms, so flooding one buys nothing).
            let mut touched: HashMap<String, RoomState, FastHash> = HashMap::default();
            for (batch, _) in appends {
                if let Some(refusal) = check_offsets(batch, &mut touched, &rooms)? {
                    verdicts.push(Err(refusal));
                    continue;
                }
                for message in batch {
                    let encoded = record::encode(message);
                    let key = (message.room.as_str(), message.offset);
                    messages.insert(key, encoded.as_slice())?;
                    if !message.client_id.is_empty() {
                        ids.insert(key, message.client_id.as_str())?;
                    }
                    let state = touched
                        .get_mut(&message.room)
                        .expect("check_offsets loaded every room of the batch");
                    state.last = message.offset;
                    state.retained += 1;
                }
                stored += 1;
                verdicts.push(Ok(()));
            }
            if stored == 0 {
                return Ok(verdicts); // dropping `txn` aborts it: nothing to commit
            }
            for (room, state) in &mut touched {
                if let Some(max) = self.retention.max_messages
                    && state.retained > max
                {
                    let over = state.retained - max;
                    let removed = trim_oldest(&mut messages, &mut ids, room, over, None, over)?;
                    state.retained -= removed;
                }
                rooms.insert(room.as_str(), (state.last, state.retained))?;
            }
        }
        txn.commit()?;
        self.commits.fetch_add(1, Ordering::AcqRel);
        Ok(verdicts)
    }

    /// Deletes, in every room, the oldest messages beyond `max_messages` and those older
    /// than `max_age`, at most [`MAX_RETENTION_DELETES_PER_RUN`] in all. One transaction;
    /// commits only when something was removed.
    fn enforce_retention(&self, db: &Database, now_unix_micros: i64) -> Result<u64, StoreError> {
        let cutoff = self.retention.age_cutoff(now_unix_micros);
        if cutoff.is_none() && self.retention.max_messages.is_none() {
            return Ok(0);
        }
        let txn = begin_durable(db)?;
        let mut removed_total = 0;
        {
            let mut messages = txn.open_table(MESSAGES)?;
            let mut ids = txn.open_table(CLIENT_IDS)?;
            let mut rooms = txn.open_table(ROOMS)?;
            let states = rooms
                .iter()?
                .map(|entry| {
                    let (room, (last, retained)) =
                        entry.map(|(k, v)| (k.value().to_owned(), v.value()))?;
                    Ok((room, RoomState { last, retained }))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            for (room, state) in states {
                let budget = MAX_RETENTION_DELETES_PER_RUN - removed_total;
                if budget == 0 {
                    break;
                }
                let over_count = self
                    .retention
                    .max_messages
                    .map_or(0, |max| state.retained.saturating_sub(max));
                let removed =
                    trim_oldest(&mut messages, &mut ids, &room, over_count, cutoff, budget)?;
                if removed > 0 {
                    let retained = state.retained.saturating_sub(removed);
                    rooms.insert(room.as_str(), (state.last, retained))?;
                    removed_total += removed;
                }
            }
        }
        if removed_total == 0 {
            return Ok(0); // dropping `txn` aborts it
        }
        txn.commit()?;
        self.commits.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(removed = removed_total, "store retention removed messages");
        Ok(removed_total)
    }
}

fn begin_durable(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

/// Checks that `batch`'s offsets follow each room's last offset (as stored, or as left by
/// earlier batches of this group), loading into `touched` every room it names.
///
/// `Ok(Some(_))` refuses the batch; `Err(_)` fails the whole group.
fn check_offsets(
    batch: &[StoredMessage],
    touched: &mut HashMap<String, RoomState, FastHash>,
    rooms: &Table<&str, (u64, u64)>,
) -> Result<Option<StoreError>, StoreError> {
    let mut within_batch: HashMap<&str, Offset, FastHash> = HashMap::default();
    for message in batch {
        let room = message.room.as_str();
        let last = match within_batch.get(room) {
            Some(&last) => last,
            None => {
                if !touched.contains_key(room) {
                    let stored = rooms.get(room)?.map(|row| row.value()).unwrap_or((0, 0));
                    touched.insert(
                        room.to_owned(),
                        RoomState {
                            last: stored.0,
                            retained: stored.1,
                        },
                    );
                }
                touched[room].last
            }
        };
        if message.offset <= last {
            return Ok(Some(StoreError::OffsetNotIncreasing {
                room: room.to_owned(),
                offset: message.offset,
                last,
            }));
        }
        within_batch.insert(room, message.offset);
    }
    Ok(None)
}

/// Deletes the oldest messages of `room`: the first `count`, then more as long as they are
/// older than `cutoff` (when given), `limit` at most. Stops at the first message retention
/// keeps, so a room always retains a contiguous tail of its log. Their client ids go too.
/// Returns how many went.
fn trim_oldest(
    messages: &mut Table<(&str, u64), &[u8]>,
    ids: &mut Table<(&str, u64), &str>,
    room: &str,
    count: u64,
    cutoff: Option<i64>,
    limit: u64,
) -> Result<u64, StoreError> {
    if (count == 0 && cutoff.is_none()) || limit == 0 {
        return Ok(0);
    }
    let mut doomed = Vec::new();
    for entry in messages.range((room, 0)..=(room, u64::MAX))? {
        if doomed.len() as u64 >= limit {
            break;
        }
        let (key, value) = entry?;
        let offset = key.value().1;
        let expired = (doomed.len() as u64) < count
            || match cutoff {
                Some(cutoff) => record::decode_time(room, offset, value.value())? < cutoff,
                None => false,
            };
        if !expired {
            break;
        }
        doomed.push(offset);
    }
    for &offset in &doomed {
        messages.remove((room, offset))?;
        ids.remove((room, offset))?;
    }
    Ok(doomed.len() as u64)
}

//! The writer thread of [`RedbStore`](crate::RedbStore): the only code that writes the file.
//!
//! It runs a plain loop on its own OS thread (fsync blocks, so it has no place on the async
//! runtime): wait for one request, take every other request already waiting (up to
//! [`MAX_REQUESTS_PER_COMMIT`]), write all the appends in one transaction, commit it with
//! fsync, count the commit, and only then answer each request. Appends that arrive while a
//! commit runs wait in the channel and make up the next group, so the number of fsyncs
//! follows the disk's speed, not the number of publishers.
//!
//! The writer assigns offsets: each message gets its room's last offset plus one, from the
//! room's row of the rooms table (loaded once per group, written back once per group). A
//! message whose (room, client id) the dedupe index holds within the window gets the
//! original's offset instead and stores nothing; the index is updated, pruned and kept
//! within its bounds in the same transaction (see `redb_store` for its tables and costs).
//! A failed transaction or commit fails every append of the group with the same error, and none of them is acknowledged; the writer then closes
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

use crate::counters::StoreCounters;
use crate::dedupe::{message_keys, prune_budget};
use crate::redb_store::{
    DEDUPE_BY_AGE, DEDUPE_BY_ROOM, MAX_REQUESTS_PER_COMMIT, MESSAGES, OpenDatabase,
    REOPEN_INTERVAL, ROOMS,
};
use crate::{
    Appended, Dedupe, MAX_RETENTION_DELETES_PER_RUN, NewMessage, Offset, Retention, StoreError,
    record,
};

/// What the store asks of its writer thread.
pub(crate) enum WriteRequest {
    /// Persist a batch; answer once it is durable.
    Append {
        batch: Vec<NewMessage>,
        done: oneshot::Sender<Result<Vec<Appended>, StoreError>>,
    },
    /// Delete what retention no longer keeps; answer how many messages went.
    EnforceRetention {
        now_unix_micros: i64,
        done: oneshot::Sender<Result<u64, StoreError>>,
    },
}

type PendingAppend = (
    Vec<NewMessage>,
    oneshot::Sender<Result<Vec<Appended>, StoreError>>,
);

/// A room's row of the rooms table, as the writer updates it within a transaction.
#[derive(Debug, Clone, Copy, Default)]
struct RoomState {
    /// The last offset assigned: the next message gets one more.
    last: Offset,
    /// Messages the room retains, for count retention.
    retained: u64,
}

/// The write side of the database. Owned by its thread; see the module docs.
pub(crate) struct Writer {
    db: Arc<OpenDatabase>,
    retention: Retention,
    commits: Arc<AtomicU64>,
    /// fsync latency and failures, for operators and the health check.
    counters: Arc<StoreCounters>,
    requests: mpsc::Receiver<WriteRequest>,
    /// When the database was last closed to be reopened and the last attempt failed:
    /// attempts are spaced by [`REOPEN_INTERVAL`].
    failed_reopen_at: Option<Instant>,
    /// The dedupe lookup; `None` until read from the open database (again after a reopen).
    ids: Option<IdMemory>,
}

impl Writer {
    pub(crate) fn new(
        db: Arc<OpenDatabase>,
        retention: Retention,
        commits: Arc<AtomicU64>,
        counters: Arc<StoreCounters>,
        requests: mpsc::Receiver<WriteRequest>,
    ) -> Self {
        Writer {
            db,
            retention,
            commits,
            counters,
            requests,
            failed_reopen_at: None,
            ids: None,
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
        // The failed transaction may have changed the lookup: read it again on reopen.
        self.ids = None;
        tracing::error!(%error, "store write failed; closing the database to reopen it");
        self.db.close();
        self.failed_reopen_at = None;
    }

    /// The thread's loop; returns when the store is dropped.
    pub(crate) fn run(mut self) {
        // Read the dedupe lookup now rather than on the first append, so that append does
        // not wait for it (a failure here is retried by the first write).
        if let Ok(db) = self.db.get() {
            match IdMemory::load(&db) {
                Ok(ids) => self.ids = Some(ids),
                Err(error) => tracing::warn!(%error, "store: reading the dedupe index failed"),
            }
        }
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
                let result = self.database().and_then(|db| {
                    let mut ids = self.take_ids(&db)?;
                    let result = self.enforce_retention(&db, now_unix_micros, &mut ids);
                    self.ids = Some(ids);
                    result
                });
                if let Err(error) = &result {
                    tracing::error!(%error, "store retention run failed");
                    self.recover(error);
                }
                let _ = done.send(result);
            }
        }
    }

    /// The dedupe lookup, read from `db` first if needed; put it back when done.
    fn take_ids(&mut self, db: &Database) -> Result<IdMemory, StoreError> {
        match self.ids.take() {
            Some(ids) => Ok(ids),
            None => IdMemory::load(db),
        }
    }

    /// Writes a group of appends in one transaction and answers each once it is durable.
    fn commit_appends(&mut self, appends: Vec<PendingAppend>) {
        let requests = appends.len();
        let written = self.database().and_then(|db| {
            let mut ids = self.take_ids(&db)?;
            let written = self.write_group(&db, &appends, &mut ids);
            self.ids = Some(ids);
            written
        });
        match written {
            Ok(outcomes) => {
                tracing::trace!(requests, "store group committed");
                for ((_, done), outcome) in appends.into_iter().zip(outcomes) {
                    let _ = done.send(Ok(outcome));
                }
            }
            Err(error) => {
                self.counters.commit_failed();
                tracing::error!(%error, requests, "store group commit failed");
                for (_, done) in appends {
                    let _ = done.send(Err(error.clone()));
                }
                self.recover(&error);
            }
        }
    }

    /// One transaction for the whole group. `Ok` holds each request's outcome per message
    /// and means everything stored is durable; `Err` means nothing is.
    fn write_group(
        &self,
        db: &Database,
        appends: &[PendingAppend],
        ids: &mut IdMemory,
    ) -> Result<Vec<Vec<Appended>>, StoreError> {
        let txn = begin_durable(db)?;
        let mut outcomes = Vec::with_capacity(appends.len());
        let dedupe = self.retention.dedupe;
        {
            let mut messages = txn.open_table(MESSAGES)?;
            let mut rooms = txn.open_table(ROOMS)?;
            let mut index = DedupeIndex::open(&txn, ids)?;
            // Rooms of one group, looked up per message: a fast hash (a group names at
            // most a few thousand rooms, so flooding one buys nothing).
            let mut touched: HashMap<String, RoomState, FastHash> = HashMap::default();
            let mut newest = i64::MIN;
            let mut remembered = 0u64;
            for (batch, _) in appends {
                let mut outcome = Vec::with_capacity(batch.len());
                for message in batch {
                    newest = newest.max(message.time_unix_micros);
                    let keys = message_keys(&dedupe, message);
                    if let Some((id, _)) = keys
                        && let Some(original) = index.lookup(id, message.time_unix_micros, &dedupe)
                    {
                        outcome.push(original);
                        continue;
                    }
                    let state = match touched.get_mut(message.room.as_str()) {
                        Some(state) => state,
                        None => {
                            let (last, retained) = rooms
                                .get(message.room.as_str())?
                                .map_or((0, 0), |row| row.value());
                            touched
                                .entry(message.room.clone())
                                .or_insert(RoomState { last, retained })
                        }
                    };
                    state.last += 1;
                    state.retained += 1;
                    let offset = state.last;
                    let encoded = record::encode(message);
                    messages.insert((message.room.as_str(), offset), encoded.as_slice())?;
                    if let Some((id, room)) = keys {
                        index.insert(id, room, offset, message.time_unix_micros)?;
                        index.bound_room(room, dedupe.max_ids_per_room)?;
                        remembered += 1;
                    }
                    outcome.push(Appended {
                        offset,
                        time_unix_micros: message.time_unix_micros,
                        duplicate: false,
                    });
                }
                outcomes.push(outcome);
            }
            if touched.is_empty() && remembered == 0 {
                return Ok(outcomes); // only duplicates: dropping `txn` aborts it
            }
            if dedupe.is_on() {
                let budget = prune_budget(remembered);
                index.prune(newest.saturating_sub(dedupe.window_micros()), budget)?;
                index.bound_total(dedupe.max_ids)?;
            }
            for (room, state) in &mut touched {
                if let Some(max) = self.retention.max_messages
                    && state.retained > max
                {
                    let over = state.retained - max;
                    let removed = trim_oldest(&mut messages, room, over, None, over)?;
                    state.retained -= removed;
                }
                rooms.insert(room.as_str(), (state.last, state.retained))?;
            }
        }
        let started = Instant::now();
        txn.commit()?;
        self.counters.committed(started.elapsed());
        self.commits.fetch_add(1, Ordering::AcqRel);
        Ok(outcomes)
    }

    /// Deletes, in every room, the oldest messages beyond `max_messages` and those older
    /// than `max_age`, at most [`MAX_RETENTION_DELETES_PER_RUN`] in all. One transaction;
    /// commits only when something was removed.
    ///
    /// Also prunes dedupe ids older than the window (at most
    /// [`MAX_RETENTION_DELETES_PER_RUN`]), so an idle store lets go of them too; those do
    /// not count in the result.
    fn enforce_retention(
        &self,
        db: &Database,
        now_unix_micros: i64,
        ids: &mut IdMemory,
    ) -> Result<u64, StoreError> {
        let cutoff = self.retention.age_cutoff(now_unix_micros);
        let dedupe = self.retention.dedupe;
        if cutoff.is_none() && self.retention.max_messages.is_none() && !dedupe.is_on() {
            return Ok(0);
        }
        let txn = begin_durable(db)?;
        let mut removed_total = 0;
        let mut pruned = 0;
        if dedupe.is_on() {
            let mut index = DedupeIndex::open(&txn, ids)?;
            let id_cutoff = now_unix_micros.saturating_sub(dedupe.window_micros());
            pruned = index.prune(id_cutoff, MAX_RETENTION_DELETES_PER_RUN)?;
        }
        if cutoff.is_some() || self.retention.max_messages.is_some() {
            let mut messages = txn.open_table(MESSAGES)?;
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
                let removed = trim_oldest(&mut messages, &room, over_count, cutoff, budget)?;
                if removed > 0 {
                    let retained = state.retained.saturating_sub(removed);
                    rooms.insert(room.as_str(), (state.last, retained))?;
                    removed_total += removed;
                }
            }
        }
        if removed_total == 0 && pruned == 0 {
            return Ok(0); // dropping `txn` aborts it
        }
        txn.commit()?;
        self.commits.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(
            removed = removed_total,
            pruned_ids = pruned,
            "store retention removed messages"
        );
        Ok(removed_total)
    }
}

fn begin_durable(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

/// Deletes the oldest messages of `room`: the first `count`, then more as long as they are
/// older than `cutoff` (when given), `limit` at most. Stops at the first message retention
/// keeps, so a room always retains a contiguous tail of its log. Their client ids stay in
/// the dedupe index until it forgets them. Returns how many went.
fn trim_oldest(
    messages: &mut Table<(&str, u64), &[u8]>,
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
    }
    Ok(doomed.len() as u64)
}

/// The dedupe index's lookup, in the writer's memory: id key → (offset, time, room key)
/// of every id the durable tables hold, and how many each room holds. Built from
/// `duplex.dedupe_by_age.v1` when the database is opened (or reopened after a failed
/// write, which may have left it ahead of the file). Keeping the lookup here spares the
/// file a table keyed by random hashes, whose inserts would each rewrite a page of their
/// own on every commit (measured: 11× slower appends with ids than without; see
/// `redb_store` for what the map costs).
#[derive(Debug, Default)]
pub(crate) struct IdMemory {
    /// Keys are SHA-256 prefixes, already uniform: a fast hash is enough.
    ids: HashMap<u128, (Offset, i64, u64), FastHash>,
    counts: HashMap<u64, u64, FastHash>,
}

impl IdMemory {
    /// Reads every remembered id from the file.
    pub(crate) fn load(db: &Database) -> Result<Self, StoreError> {
        use redb::ReadableDatabase as _;
        let txn = db.begin_read()?;
        let by_age = txn.open_table(DEDUPE_BY_AGE)?;
        let mut memory = IdMemory::default();
        for entry in by_age.iter()? {
            let (key, value) = entry?;
            let ((time, id), (room, offset)) = (key.value(), value.value());
            memory.ids.insert(id, (offset, time, room));
            *memory.counts.entry(room).or_default() += 1;
        }
        Ok(memory)
    }
}

/// The dedupe index within one write transaction: its two durable tables (both ordered
/// by time, so inserts land at their ends) and the lookup in memory.
struct DedupeIndex<'txn, 'mem> {
    by_age: Table<'txn, (i64, u128), (u64, u64)>,
    by_room: Table<'txn, (u64, i64, u128), ()>,
    memory: &'mem mut IdMemory,
}

impl<'txn, 'mem> DedupeIndex<'txn, 'mem> {
    fn open(txn: &'txn WriteTransaction, memory: &'mem mut IdMemory) -> Result<Self, StoreError> {
        Ok(DedupeIndex {
            by_age: txn.open_table(DEDUPE_BY_AGE)?,
            by_room: txn.open_table(DEDUPE_BY_ROOM)?,
            memory,
        })
    }

    /// The original of `id` if it is still within the window at `now`. Changes nothing.
    fn lookup(&self, id: u128, now: i64, dedupe: &Dedupe) -> Option<Appended> {
        let &(offset, time, _) = self.memory.ids.get(&id)?;
        dedupe.still_holds(time, now).then_some(Appended {
            offset,
            time_unix_micros: time,
            duplicate: true,
        })
    }

    /// Remembers `id`, replacing an expired entry of it that pruning has not reached.
    fn insert(&mut self, id: u128, room: u64, offset: Offset, time: i64) -> Result<(), StoreError> {
        if let Some(&(_, old_time, old_room)) = self.memory.ids.get(&id) {
            self.forget(old_time, id, old_room)?;
        }
        self.by_age.insert((time, id), (room, offset))?;
        self.by_room.insert((room, time, id), ())?;
        self.memory.ids.insert(id, (offset, time, room));
        *self.memory.counts.entry(room).or_default() += 1;
        Ok(())
    }

    /// Removes one id from the tables and the lookup.
    fn forget(&mut self, time: i64, id: u128, room: u64) -> Result<(), StoreError> {
        self.by_age.remove((time, id))?;
        self.by_room.remove((room, time, id))?;
        if self
            .memory
            .ids
            .get(&id)
            .is_some_and(|&(_, held, _)| held == time)
        {
            self.memory.ids.remove(&id);
            if let Some(count) = self.memory.counts.get_mut(&room) {
                *count -= 1;
                if *count == 0 {
                    self.memory.counts.remove(&room);
                }
            }
        }
        Ok(())
    }

    /// Forgets `room`'s oldest ids while it holds more than `max`.
    fn bound_room(&mut self, room: u64, max: u64) -> Result<(), StoreError> {
        let count = self.memory.counts.get(&room).copied().unwrap_or(0);
        for _ in max..count {
            let oldest = self
                .by_room
                .range((room, i64::MIN, 0)..=(room, i64::MAX, u128::MAX))?
                .next()
                .transpose()?
                .map(|(key, _)| key.value());
            let Some((_, time, id)) = oldest else { break };
            self.forget(time, id, room)?;
        }
        Ok(())
    }

    /// Forgets the store's oldest ids while it holds more than `max`.
    fn bound_total(&mut self, max: u64) -> Result<(), StoreError> {
        let held = self.memory.ids.len() as u64;
        for _ in max..held {
            if !self.forget_oldest(None)? {
                break;
            }
        }
        Ok(())
    }

    /// Forgets ids older than `cutoff`, oldest first, at most `budget`.
    fn prune(&mut self, cutoff: i64, budget: u64) -> Result<u64, StoreError> {
        let mut pruned = 0;
        while pruned < budget && self.forget_oldest(Some(cutoff))? {
            pruned += 1;
        }
        Ok(pruned)
    }

    /// Forgets the store's oldest id (only if older than `cutoff`, when given); false when
    /// there is none.
    fn forget_oldest(&mut self, cutoff: Option<i64>) -> Result<bool, StoreError> {
        let oldest = self
            .by_age
            .first()?
            .map(|(key, value)| (key.value(), value.value()));
        match oldest {
            Some(((time, id), (room, _))) if cutoff.is_none_or(|cutoff| time < cutoff) => {
                self.forget(time, id, room)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

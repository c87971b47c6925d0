//! [`RedbStore`]: the embedded, durable backend, one redb file per data directory.
//!
//! Who runs what:
//!
//! - **Writes** go to one writer thread (`duplex-store-writer`, see the `writer` module),
//!   which owns the write side of the database. [`Store::append`] sends its batch over a
//!   channel bounded by [`APPEND_QUEUE_CAPACITY`] and waits on a oneshot. The writer takes
//!   every request waiting (up to [`MAX_REQUESTS_PER_COMMIT`]), writes them all in one
//!   write transaction, commits it with [`redb::Durability::Immediate`] (fsync), and only
//!   then answers each request. That is the group commit: however many publishers are
//!   waiting, they share one fsync, and the channel bound pushes back on them when the
//!   disk falls behind.
//! - **Reads** run on Tokio's blocking pool, each in its own read transaction (a
//!   snapshot: readers never wait for the writer).
//!
//! The file holds these tables:
//!
//! - `duplex.messages.v1`: `(room, offset)` → a record (see the `record` module), so one
//!   room's messages are adjacent and in offset order.
//! - `duplex.rooms.v1`: `room` → `(last offset ever appended, messages retained)`. The
//!   writer assigns each room's next offset from it; the last offset outlives retention,
//!   so offsets never go back; the count lets count retention trim without scanning.
//! - The dedupe index, written in the same transaction as the messages it covers:
//!   - `duplex.dedupe_by_age.v1`: `(time, id key)` → `(room key, offset)`, id key being a
//!     u128 and room key a u64 (see the `dedupe` module): every remembered id, oldest
//!     first, for pruning by age and the total bound;
//!   - `duplex.dedupe_by_room.v1`: `(room key, time, id key)` → `()`: each room's ids
//!     oldest first, for the per-room bound.
//!
//!   Both are ordered by time, so a commit's inserts land at their ends and its pruning at
//!   their starts: a few pages per commit, not one per id. The lookup by id is a hash map
//!   in the writer's memory (id key → offset, time, room), read from the first table when
//!   the database is opened (and again after a failed write): a table keyed by the random
//!   id keys made appends with ids 11× slower than without (measured with the
//!   `dedupe_index_size` example, 2·10⁵ ids); with the map, 1.3× to 2.2× for 10⁶ ids
//!   (two runs on a shared 2-core machine; the records with ids are longer too).
//!
//! **What the dedupe index costs.** On disk: 40 + 32 bytes of keys and values per id,
//! measured at about 130 bytes per id of allocated pages (`dedupe_index_size`: 10⁶ ids,
//! 128 B/id), so the default bound of 1,000,000 ids takes about 130 MB of file. In memory:
//! one hash-map entry of 40 bytes (plus the map's slack, 50–90 bytes in all) per id, so
//! 50–90 MB at the default bound, and opening a file that holds a million ids reads them
//! all (a sequential scan: 0.66 s measured, release build). At 200,000 publishes/s, all with ids, a
//! 2-minute window would be 24 million ids, about 3 GB of file and 1.2–2 GB of memory:
//! the default bound keeps only the newest million (about 5 seconds at that rate), so such
//! a flood shortens the window instead. Each append that carries an id writes two index
//! rows; each commit also prunes ids older than the window, oldest first, at most
//! [`PRUNE_PER_COMMIT`] (or twice the ids it added, if more) per commit, so pruning keeps
//! up with any insert rate and one commit's extra work stays bounded; the retention sweep
//! prunes an idle store. Past a bound the oldest ids (of the room, or of the store) are
//! removed in the same transaction: a retry of such an id within the window is stored as
//! a new message. Ids outlive retention: a repeat of a message that retention removed is
//! still acked as a duplicate of its (gone) offset.
//!
//! A file written before the dedupe index existed still has `duplex.client_ids.v1`; it is
//! deleted when opened, and ids published before the upgrade are not deduped.
//!
//! Opening takes redb's whole-file lock; a second open of the same directory, from this
//! process or another, fails with [`StoreError::Locked`] naming the directory. Dropping
//! the store stops the writer (after it commits what was already queued) and releases the
//! lock before `drop` returns, so the directory can be reopened at once.
//!
//! **A failed write** (a full disk, an I/O error) leaves redb refusing every later write
//! until the database is closed and opened again. So the writer does that: after a failed
//! commit it answers the group's appends with the error (none is acked), waits for reads in
//! flight to let go of the database, closes it and opens it again, which repairs the file
//! from its last good commit. Until that succeeds, appends and reads fail with
//! [`StoreError::Reopening`] (UNAVAILABLE to clients), and the writer tries again at most
//! every [`REOPEN_INTERVAL`]; once the disk has room, writes go on without a restart.
//!
//! After a crash, the next open repairs the file by walking all of it (measured on the
//! development machine: 1.6 s for a 1.1 GB file). redb's quick-repair mode would make that
//! instant, but costs a second fsync on every commit (two-phase commit); it is not enabled.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableDatabase, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::counters::StoreCounters;
use crate::writer::{WriteRequest, Writer};
use crate::{
    Appended, BoxFuture, NewMessage, Offset, Retention, RoomBounds, Store, StoreError,
    StoredMessage, record,
};

/// Name of the database file inside the data directory.
pub const DATA_FILE_NAME: &str = "duplex.redb";

/// How many write requests (appends, retention runs) may wait for the writer thread
/// before [`Store::append`] itself waits for room.
pub const APPEND_QUEUE_CAPACITY: usize = 1024;

/// Most write requests the writer puts in one transaction (one fsync).
pub const MAX_REQUESTS_PER_COMMIT: usize = 1024;

/// Memory redb may use to cache the file's pages (its own default is 1 GiB).
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Least time between two attempts to reopen the database after a failed write: each
/// attempt walks the whole file to repair it.
pub const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// Longest the writer waits for reads in flight to release the database before reopening.
const READERS_DRAIN: Duration = Duration::from_secs(5);

/// Messages of every room: `(room, offset)` → encoded record.
pub(crate) const MESSAGES: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("duplex.messages.v1");

/// The client-id index of older versions: `(room, offset)` → id. Deleted on open.
const OLD_CLIENT_IDS: TableDefinition<(&str, u64), &str> =
    TableDefinition::new("duplex.client_ids.v1");

/// Dedupe ids of the whole store by age: `(time, id key)` → `(room key, offset)`.
pub(crate) const DEDUPE_BY_AGE: TableDefinition<(i64, u128), (u64, u64)> =
    TableDefinition::new("duplex.dedupe_by_age.v1");

/// Dedupe ids of each room by age: `(room key, time, id key)` → nothing.
pub(crate) const DEDUPE_BY_ROOM: TableDefinition<(u64, i64, u128), ()> =
    TableDefinition::new("duplex.dedupe_by_room.v1");

/// Most expired dedupe ids one commit prunes (or twice the ids it added, if more).
pub const PRUNE_PER_COMMIT: u64 = 4096;

/// Per-room state: `room` → `(last offset ever appended, number of messages retained)`.
pub(crate) const ROOMS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("duplex.rooms.v1");

/// The durable store: a redb file in a data directory, written by one group-committing
/// writer thread. See the [module docs](self).
pub struct RedbStore {
    db: Arc<OpenDatabase>,
    /// `None` only while dropping, to close the writer's channel.
    requests: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
    /// fsync latency and failures, written by the writer thread.
    counters: Arc<StoreCounters>,
    path: PathBuf,
}

impl RedbStore {
    /// Opens (creating if needed) the store in `dir`, whose database file is
    /// `dir/duplex.redb`; `dir` is created too.
    ///
    /// Fails with [`StoreError::Locked`] when another process, or another `RedbStore` of
    /// this one, has `dir` open; with [`StoreError::DataDir`] when `dir` cannot be created;
    /// with [`StoreError::Open`] when the file is not a database this version can read. A
    /// file left by a crash is repaired during the open (which then takes longer).
    ///
    /// An existing file that is empty (0 bytes: truncated, or lost by its disk) or holds no
    /// duplex tables is refused with [`StoreError::Empty`]: opening it would start an empty
    /// store whose offsets restart at 1, and resuming clients would silently miss messages.
    /// [`RedbStore::open_resetting`] starts over instead.
    pub fn open(dir: &Path, retention: Retention) -> Result<Self, StoreError> {
        Self::open_with(dir, retention, false)
    }

    /// Like [`RedbStore::open`], but starts an empty store where the existing file is empty
    /// or cannot be opened; a file that cannot be opened is first renamed aside to
    /// `duplex.redb.damaged-UNIXTIME` (nothing is deleted). Offsets then restart at 1.
    pub fn open_resetting(dir: &Path, retention: Retention) -> Result<Self, StoreError> {
        Self::open_with(dir, retention, true)
    }

    fn open_with(dir: &Path, retention: Retention, reset: bool) -> Result<Self, StoreError> {
        let dir_error = |source: std::io::Error| StoreError::DataDir {
            dir: dir.to_owned(),
            source: Arc::new(source),
        };
        std::fs::create_dir_all(dir).map_err(dir_error)?;
        let path = dir.join(DATA_FILE_NAME);
        let existing_len = match std::fs::metadata(&path) {
            Ok(metadata) => Some(metadata.len()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(dir_error(error)),
        };
        if existing_len == Some(0) {
            if !reset {
                return Err(StoreError::Empty { path });
            }
            tracing::warn!(
                path = %path.display(),
                "store file is empty: starting an empty store (--reset-store)"
            );
        }
        let opened = match open_file(&path) {
            Err(error)
                if reset
                    && existing_len.is_some()
                    && !matches!(error, redb::DatabaseError::DatabaseAlreadyOpen) =>
            {
                let aside = set_aside(&path).map_err(dir_error)?;
                tracing::warn!(
                    path = %path.display(),
                    kept_as = %aside.display(),
                    %error,
                    "store file cannot be opened: kept aside, starting an empty store \
                     (--reset-store)"
                );
                open_file(&path)
            }
            other => other,
        };
        let db = opened.map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                dir: dir.to_owned(),
            },
            other => StoreError::Open {
                path: path.clone(),
                source: Arc::new(other),
            },
        })?;
        if existing_len.is_some_and(|len| len > 0) && !reset && !has_tables(&db)? {
            return Err(StoreError::Empty { path });
        }
        create_tables(&db)?;

        let db = Arc::new(OpenDatabase {
            path: path.clone(),
            current: RwLock::new(Some(Arc::new(db))),
        });
        let commits = Arc::new(AtomicU64::new(0));
        let (requests, receiver) = mpsc::channel(APPEND_QUEUE_CAPACITY);
        let counters = Arc::new(StoreCounters::default());
        let writer = Writer::new(
            db.clone(),
            retention,
            commits.clone(),
            counters.clone(),
            receiver,
        );
        let writer = std::thread::Builder::new()
            .name("duplex-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| StoreError::DataDir {
                dir: dir.to_owned(),
                source: Arc::new(source),
            })?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(RedbStore {
            db,
            requests: Some(requests),
            writer: Some(writer),
            commits,
            counters,
            path,
        })
    }

    /// The database file, `DIR/duplex.redb`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `read` on the blocking pool with the database.
    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let db = self.db.get();
        Box::pin(async move {
            let db = db?;
            tokio::task::spawn_blocking(move || read(&db)).await?
        })
    }

    /// Sends a request to the writer thread and waits for its answer.
    async fn write<T>(
        &self,
        request: WriteRequest,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let requests = self.requests.as_ref().ok_or(StoreError::Closed)?;
        requests
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued and return; joining it
        // releases the file lock before we return, so the directory can be reopened. This
        // blocks the dropping thread for at most the commit in progress and what is queued
        // (no append future can still be waiting: each borrows the store).
        self.requests.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "store writer thread panicked");
        }
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

impl Store for RedbStore {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let (done, answer) = oneshot::channel();
            self.write(WriteRequest::Append { batch, done }, answer)
                .await
        })
    }

    fn read_after(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        self.read_page(room, after, limit, usize::MAX)
    }

    fn read_page(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        let room = room.to_owned();
        self.read(move |db| {
            let Some(first) = after.checked_add(1) else {
                return Ok(Vec::new());
            };
            let txn = db.begin_read()?;
            let messages = txn.open_table(MESSAGES)?;
            let mut out = Vec::with_capacity(limit.min(1024));
            let mut page = crate::PageBudget::new(max_bytes);
            for entry in messages
                .range((room.as_str(), first)..=(room.as_str(), u64::MAX))?
                .take(limit)
            {
                let (key, value) = entry?;
                let (_, offset) = key.value();
                // The record's length stands for the message's size before decoding it: a
                // message that does not fit is never copied out.
                let record = value.value();
                if !page.admit(record.len() + room.len() + crate::MESSAGE_OVERHEAD) {
                    break;
                }
                out.push(record::decode(&room, offset, record)?);
            }
            Ok(out)
        })
    }

    fn bounds(&self, room: &str) -> BoxFuture<'_, Result<Option<RoomBounds>, StoreError>> {
        let room = room.to_owned();
        self.read(move |db| {
            let txn = db.begin_read()?;
            let messages = txn.open_table(MESSAGES)?;
            let mut range = messages.range((room.as_str(), 0)..=(room.as_str(), u64::MAX))?;
            let Some(first) = range.next().transpose()? else {
                return Ok(None);
            };
            let earliest = first.0.value().1;
            let last = match range.next_back().transpose()? {
                Some((key, _)) => key.value().1,
                None => earliest,
            };
            Ok(Some(RoomBounds { earliest, last }))
        })
    }

    fn last_offset(&self, room: &str) -> BoxFuture<'_, Result<Offset, StoreError>> {
        let room = room.to_owned();
        self.read(move |db| {
            let txn = db.begin_read()?;
            let rooms = txn.open_table(ROOMS)?;
            Ok(rooms.get(room.as_str())?.map_or(0, |state| state.value().0))
        })
    }

    fn enforce_retention(&self, now_unix_micros: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let (done, answer) = oneshot::channel();
            self.write(
                WriteRequest::EnforceRetention {
                    now_unix_micros,
                    done,
                },
                answer,
            )
            .await
        })
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }

    fn counters(&self) -> Option<&StoreCounters> {
        Some(&self.counters)
    }
}

/// The database the store reads and writes, behind a slot the writer can empty and fill
/// again when it reopens the file after a failed write (see the module docs).
pub(crate) struct OpenDatabase {
    path: PathBuf,
    /// `None` while the writer reopens the file. Readers clone the `Arc` and let go when
    /// their read ends; a std lock, held only to clone or swap.
    current: RwLock<Option<Arc<Database>>>,
}

impl OpenDatabase {
    /// The open database, or [`StoreError::Reopening`] while it is being reopened.
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }

    /// Whether a database is open (not being reopened).
    pub(crate) fn is_open(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Closes the database: empties the slot, waits (at most [`READERS_DRAIN`]) for reads
    /// in flight to let go of it, and drops it, which releases the file.
    pub(crate) fn close(&self) {
        let taken = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(db) = taken else { return };
        let started = std::time::Instant::now();
        while Arc::strong_count(&db) > 1 && started.elapsed() < READERS_DRAIN {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(db);
    }

    /// Opens the file again (repairing it from its last good commit) and puts it in the
    /// slot.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let db = open_file(&self.path).map_err(|source| StoreError::Open {
            path: self.path.clone(),
            source: Arc::new(source),
        })?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
        Ok(())
    }
}

/// Renames a damaged database file to `duplex.redb.damaged-UNIXTIME` beside it.
fn set_aside(path: &Path) -> Result<PathBuf, std::io::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = path.with_file_name(format!("{DATA_FILE_NAME}.damaged-{now}"));
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

/// Whether the file holds the duplex tables (a file this store ever opened does).
fn has_tables(db: &Database) -> Result<bool, StoreError> {
    use redb::TableHandle as _;
    let txn = db.begin_read()?;
    let found = txn
        .list_tables()?
        .any(|table| table.name() == MESSAGES.name());
    Ok(found)
}

/// Opens (creating if missing) the database file with the store's cache size.
fn open_file(path: &Path) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
}

/// Creates the tables if the file is new, so readers never meet a missing table, and
/// deletes the client-id index of older versions.
fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    txn.open_table(MESSAGES)?;
    txn.open_table(ROOMS)?;
    txn.open_table(DEDUPE_BY_AGE)?;
    txn.open_table(DEDUPE_BY_ROOM)?;
    if txn.delete_table(OLD_CLIENT_IDS)? {
        tracing::info!("store: deleted the client-id index of an older version");
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// The `offset`th message appended to `room`.
    fn message(room: &str, offset: Offset) -> NewMessage {
        NewMessage {
            room: room.into(),
            time_unix_micros: 1_000 + offset as i64,
            sender: "ada".into(),
            content_type: String::new(),
            client_id: String::new(),
            key: String::new(),
            payload: Bytes::from(format!("{room}#{offset}")),
        }
    }

    fn stored(room: &str, offset: Offset) -> StoredMessage {
        StoredMessage::from_new(message(room, offset), offset)
    }

    #[tokio::test]
    async fn corrupt_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
        store
            .append((1..=3).map(|o| message("r", o)).collect())
            .await
            .unwrap();
        // Damage offset 2 behind the store's back.
        {
            let txn = store.db.get().unwrap().begin_write().unwrap();
            txn.open_table(MESSAGES)
                .unwrap()
                .insert(("r", 2), &[1u8, 2, 3][..])
                .unwrap();
            txn.commit().unwrap();
        }
        match store.read_after("r", 0, 10).await {
            Err(StoreError::CorruptRecord { room, offset, .. }) => {
                assert_eq!((room.as_str(), offset), ("r", 2));
            }
            other => panic!("expected a corrupt record error, got {other:?}"),
        }
        // What is around the damage stays readable.
        let tail = store.read_after("r", 2, 10).await.unwrap();
        assert_eq!(tail, vec![stored("r", 3)]);
        let head = store.read_after("r", 0, 1).await.unwrap();
        assert_eq!(head, vec![stored("r", 1)]);
    }

    #[tokio::test]
    async fn pages_stop_at_their_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
        let big = |offset| NewMessage {
            payload: Bytes::from(vec![7u8; 100_000]),
            ..message("r", offset)
        };
        store.append((1..=20).map(big).collect()).await.unwrap();
        let page = store.read_page("r", 0, 1000, 350_000).await.unwrap();
        assert_eq!(page.iter().map(|m| m.offset).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(page[2], StoredMessage::from_new(big(3), 3));
        let alone = store.read_page("r", 5, 1000, 1).await.unwrap();
        assert_eq!(alone.iter().map(|m| m.offset).collect::<Vec<_>>(), [6]);
        assert_eq!(store.read_after("r", 0, 1000).await.unwrap().len(), 20);
    }

    #[tokio::test]
    async fn concurrent_batches_of_one_group_get_consecutive_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
        store.append(vec![message("r", 1)]).await.unwrap();
        let (first, second) = tokio::join!(
            store.append(vec![message("r", 2), message("s", 1)]),
            store.append(vec![message("r", 3)]),
        );
        let mut offsets = vec![first.unwrap()[0].offset, second.unwrap()[0].offset];
        offsets.sort();
        assert_eq!(offsets, [2, 3]);
        assert_eq!(store.last_offset("r").await.unwrap(), 3);
        assert_eq!(store.last_offset("s").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn empty_batch_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
        store.append(Vec::new()).await.unwrap();
        assert_eq!(store.commits(), 0);
        assert_eq!(store.enforce_retention(0).await.unwrap(), 0);
        assert_eq!(
            store.commits(),
            0,
            "a retention run that removes nothing commits nothing"
        );
    }
}

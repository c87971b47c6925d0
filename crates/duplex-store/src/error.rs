//! [`StoreError`]: everything a store can fail with, typed.
//!
//! The error is `Clone` because one failed group commit fails every append that shared it:
//! the sources are kept behind `Arc` so each waiter gets the same typed cause.

use std::path::PathBuf;
use std::sync::Arc;

use crate::Offset;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created or read.
    #[error("cannot use data directory {}: {source}", dir.display())]
    DataDir {
        /// The directory given to `open`.
        dir: PathBuf,
        /// What the OS said.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// Another process (or another store in this one) has the data directory open.
    #[error(
        "data directory {} is in use by another duplex process (its database file is locked); \
         stop that process or choose another data directory",
        dir.display()
    )]
    Locked {
        /// The directory given to `open`.
        dir: PathBuf,
    },

    /// The database file exists but cannot be opened: damaged, or written by an
    /// incompatible redb version.
    #[error(
        "cannot open database file {}: {source}. Restore it from a backup, or start over \
         with an empty store (`duplex serve --reset-store` keeps the file aside)",
        path.display()
    )]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: Arc<redb::DatabaseError>,
    },

    /// The database file exists but is empty (0 bytes) or holds no duplex tables: it was
    /// truncated or lost. Opening it as is would restart every room's offsets at 1.
    #[error(
        "database file {} exists but is empty or holds no duplex data (truncated or lost?); \
         starting on it would restart every room's offsets at 1 and resuming clients would \
         miss messages. Restore it from a backup, or start over with `duplex serve \
         --reset-store`",
        path.display()
    )]
    Empty {
        /// The database file.
        path: PathBuf,
    },

    /// The database failed to read or write its file (I/O error, corrupted page).
    #[error("store storage error: {0}")]
    Storage(#[source] Arc<redb::StorageError>),

    /// A transaction could not be started.
    #[error("store transaction error: {0}")]
    Transaction(#[source] Arc<redb::TransactionError>),

    /// A transaction's durability could not be set.
    #[error("store durability error: {0}")]
    Durability(#[source] Arc<redb::SetDurabilityError>),

    /// A commit failed: nothing of the transaction is durable.
    #[error("store commit failed: {0}")]
    Commit(#[source] Arc<redb::CommitError>),

    /// A table could not be opened (missing, or of another type than this version expects).
    #[error("store table error: {0}")]
    Table(#[source] Arc<redb::TableError>),

    /// A stored record could not be decoded. The rest of the log is still readable.
    #[error("corrupt record at room {room:?} offset {offset}: {reason}")]
    CorruptRecord {
        /// Room of the damaged record.
        room: String,
        /// Offset of the damaged record.
        offset: Offset,
        /// What is wrong with it.
        reason: String,
    },

    /// The memory store's byte bound is taken by rooms alone (every message is already
    /// evicted): no new room fits. Nothing of the batch was stored.
    #[error(
        "the memory store is full: its {max_bytes}-byte bound holds only room names and offsets; \
         raise --memory-store-bytes or use fewer rooms"
    )]
    Full {
        /// The store's bound.
        max_bytes: usize,
    },

    /// The store's writer has stopped (the store is shutting down, or its writer thread
    /// died); nothing more can be written.
    #[error("store is closed")]
    Closed,

    /// A write failed (disk full, I/O error) and the store is reopening its database to
    /// recover; retry shortly. Nothing that failed was acknowledged.
    #[error("store is recovering from a failed write (disk full or I/O error); retry shortly")]
    Reopening,

    /// A remote log (a cluster's JetStream) cannot be reached or did not answer in time.
    /// For an append, part of the batch may be stored: a retry with the same client
    /// message ids is deduped by the log.
    #[error("{0}")]
    Unavailable(String),

    /// A blocking read task failed (panicked or was cancelled by runtime shutdown).
    #[error("store read task failed: {0}")]
    ReadTask(#[source] Arc<tokio::task::JoinError>),
}

macro_rules! from_redb {
    ($variant:ident, $ty:ty) => {
        impl From<$ty> for StoreError {
            fn from(error: $ty) -> Self {
                StoreError::$variant(Arc::new(error))
            }
        }
    };
}

from_redb!(Storage, redb::StorageError);
from_redb!(Transaction, redb::TransactionError);
from_redb!(Durability, redb::SetDurabilityError);
from_redb!(Commit, redb::CommitError);
from_redb!(Table, redb::TableError);
from_redb!(ReadTask, tokio::task::JoinError);

//! What the redb dedupe index costs per id: appends the same messages (tiny payloads, 1000
//! per commit) to two stores, one with a client id on every message and one without, and
//! prints the difference in file size and in allocated pages per id.
//!
//! ```text
//! cargo run --release -p duplex-store --example dedupe_index_size -- [IDS]
//! ```

use std::time::Instant;

use bytes::Bytes;
use duplex_store::{Dedupe, NewMessage, RedbStore, Retention, Store};

fn main() {
    let ids: u64 = std::env::args()
        .nth(1)
        .map_or(200_000, |s| s.parse().expect("IDS"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (plain_file, plain_pages, plain_took) = runtime.block_on(fill(ids, false));
    let (file, pages, took) = runtime.block_on(fill(ids, true));
    let reopen = runtime.block_on(reopen_time(ids));
    let per_id = |with: u64, without: u64| (with as f64 - without as f64) / ids as f64;
    println!(
        "{ids} ids: file {:.1} MiB vs {:.1} MiB without ids: {:.0} B/id of file, \
         {:.0} B/id of allocated pages; appended in {took:.1?} ({plain_took:.1?} without); \
         reopening (reads the ids into the lookup) took {reopen:.1?}",
        file as f64 / 1048576.0,
        plain_file as f64 / 1048576.0,
        per_id(file, plain_file),
        per_id(pages, plain_pages),
    );
}

/// How long opening a store that holds `count` ids takes.
async fn reopen_time(count: u64) -> std::time::Duration {
    let dir = tempfile::tempdir().expect("temporary directory");
    fill_in(dir.path(), count, true).await;
    let started = Instant::now();
    let store = RedbStore::open(dir.path(), retention(count)).expect("reopen");
    // The writer reads the ids before it takes its first write: wait for one.
    store
        .append(vec![message(0, false, 0)])
        .await
        .expect("append after reopen");
    started.elapsed()
}

fn retention(count: u64) -> Retention {
    Retention {
        dedupe: Dedupe {
            max_ids: count,
            max_ids_per_room: count,
            ..Dedupe::default()
        },
        ..Retention::default()
    }
}

fn message(i: u64, with_id: bool, sent: u64) -> NewMessage {
    NewMessage {
        room: "r".into(),
        // One time per batch, 1 ms apart, as the hub stamps them.
        time_unix_micros: 1_700_000_000_000_000 + (sent / 1000) as i64 * 1000,
        sender: String::new(),
        content_type: String::new(),
        client_id: if with_id {
            format!("client-7f3a-{i}")
        } else {
            String::new()
        },
        key: String::new(),
        payload: Bytes::from_static(b"x"),
    }
}

/// Appends `count` messages to room "r" of a fresh store, with ids or not; returns the
/// file's size and redb's allocated bytes.
async fn fill(count: u64, with_ids: bool) -> (u64, u64, std::time::Duration) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (path, took) = fill_in(dir.path(), count, with_ids).await;
    let file = std::fs::metadata(&path).expect("file").len();
    let mut db = redb::Database::open(&path).expect("reopen with redb");
    let stats = db.begin_write().expect("txn").stats().expect("stats");
    let pages = stats.allocated_pages() * stats.page_size() as u64;
    let _ = db.compact();
    (file, pages, took)
}

/// Fills a store in `dir`; returns its file and how long the appends took.
async fn fill_in(
    dir: &std::path::Path,
    count: u64,
    with_ids: bool,
) -> (std::path::PathBuf, std::time::Duration) {
    let store = RedbStore::open(dir, retention(count)).expect("open store");
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let batch = (sent..(sent + 1000).min(count))
            .map(|i| message(i, with_ids, sent))
            .collect::<Vec<_>>();
        sent += batch.len() as u64;
        store.append(batch).await.expect("append");
    }
    (store.path().to_owned(), started.elapsed())
}

//! How many bytes the redb file takes per payload byte, by payload size: appends the same
//! total of payload bytes in messages of each size (one message per commit, as the hub
//! does under light load, and 64 per commit, as under load; at most 2000 commits) and
//! prints the file's size.
//!
//! ```text
//! cargo run --release -p duplex-store --example file_size -- [MIB_PER_CASE]
//! ```

use bytes::Bytes;
use duplex_store::{NewMessage, RedbStore, Retention, Store};

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map_or(64, |s| s.parse().expect("MIB_PER_CASE"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| payload | per commit | messages | payload MiB | pages MiB | file MiB | after \
         compact MiB | file / payload |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (size, per_commit) in [
        (100, 1),
        (100, 64),
        (4 * 1024, 1),
        (4 * 1024, 64),
        (16 * 1024, 64),
        (60 * 1024, 64),
        (64 * 1024, 64),
        (1 << 20, 64),
    ] {
        runtime.block_on(measure(size, per_commit, mib << 20));
    }
}

async fn measure(size: usize, per_commit: usize, total: usize) {
    let dir = tempfile::tempdir().expect("temporary directory");
    // One fsync per message is slow on a real disk: at most 2000 commits a case.
    let count = (total / size).clamp(1, 2000 * per_commit);
    let store = RedbStore::open(dir.path(), Retention::default()).expect("open store");
    let payload = Bytes::from(vec![b'x'; size]);
    let mut offset = 0u64;
    while (offset as usize) < count {
        let batch = (0..per_commit.min(count - offset as usize))
            .map(|_| {
                offset += 1;
                NewMessage {
                    room: "room".into(),
                    time_unix_micros: 1,
                    sender: "sender".into(),
                    content_type: String::new(),
                    client_id: format!("c{offset}"),
                    key: String::new(),
                    payload: payload.clone(),
                }
            })
            .collect();
        store.append(batch).await.expect("append");
    }
    let path = store.path().to_owned();
    drop(store);
    let file = std::fs::metadata(&path).expect("file").len() as f64;
    // What redb itself counts: pages allocated (live data, B-tree overhead, page rounding).
    let mut db = redb::Database::open(&path).expect("reopen with redb");
    let stats = db.begin_write().expect("txn").stats().expect("stats");
    let pages = (stats.allocated_pages() * stats.page_size() as u64) as f64;
    db.compact().expect("compact");
    drop(db);
    let compacted = std::fs::metadata(&path).expect("file").len() as f64;
    let payload = (count * size) as f64;
    let mib = |bytes: f64| bytes / 1048576.0;
    println!(
        "| {size} B | {per_commit} | {count} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
        mib(payload),
        mib(pages),
        mib(file),
        mib(compacted),
        file / payload
    );
}

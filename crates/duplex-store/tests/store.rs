//! The store's behaviour as the hub relies on it, against real files in a temporary
//! directory (and, where the behaviour is shared, against the memory backend too).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use duplex_store::{
    MAX_RETENTION_DELETES_PER_RUN, MemoryStore, Offset, RedbStore, Retention, RoomBounds, Store,
    StoreError, StoredMessage,
};
use tempfile::TempDir;

fn message(room: &str, offset: Offset) -> StoredMessage {
    StoredMessage {
        room: room.into(),
        offset,
        time_unix_micros: 1_700_000_000_000_000 + offset as i64,
        sender: format!("sender-{}", offset % 3),
        content_type: if offset.is_multiple_of(2) {
            "text/plain".into()
        } else {
            String::new()
        },
        client_id: format!("c{offset}"),
        key: String::new(),
        payload: Bytes::from(format!("{room}:{offset}")),
    }
}

fn timed(room: &str, offset: Offset, time_unix_micros: i64) -> StoredMessage {
    StoredMessage {
        time_unix_micros,
        ..message(room, offset)
    }
}

/// Both backends with the same retention; the temp dir lives as long as the redb store.
fn backends(retention: Retention) -> Vec<(&'static str, Arc<dyn Store>, Option<TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(dir.path(), retention).unwrap();
    vec![
        ("memory", Arc::new(MemoryStore::new(retention)), None),
        ("redb", Arc::new(redb), Some(dir)),
    ]
}

async fn offsets(store: &dyn Store, room: &str) -> Vec<Offset> {
    store
        .read_after(room, 0, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|m| m.offset)
        .collect()
}

#[tokio::test]
async fn append_and_read_keep_offset_order_across_rooms() {
    for (name, store, _dir) in backends(Retention::default()) {
        // Batches mixing three rooms; offsets sparse in "a" and "b", and "a" gets two
        // messages in the first batch.
        for round in 0..10u64 {
            let batch = if round == 0 {
                vec![
                    message("a", 1),
                    message("b", 10),
                    message("a", 11),
                    message("c", 1),
                ]
            } else {
                vec![
                    message("a", 20 + round),
                    message("b", 10 * (round + 1)),
                    message("c", round + 1),
                ]
            };
            store.append(batch).await.unwrap();
        }
        let mut want_a = vec![1, 11];
        want_a.extend(21..=29);
        assert_eq!(offsets(&*store, "a").await, want_a, "{name}");
        assert_eq!(
            offsets(&*store, "b").await,
            (1..=10).map(|i| i * 10).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            offsets(&*store, "c").await,
            (1..=10).collect::<Vec<_>>(),
            "{name}"
        );
        // Every field comes back as written.
        let read = store.read_after("b", 30, 1).await.unwrap();
        assert_eq!(read, vec![message("b", 40)], "{name}");
        assert!(offsets(&*store, "unknown").await.is_empty(), "{name}");
        assert_eq!(store.bounds("unknown").await.unwrap(), None, "{name}");
        assert_eq!(store.last_offset("unknown").await.unwrap(), 0, "{name}");
    }
}

#[tokio::test]
async fn read_after_pages_through_a_room() {
    for (name, store, _dir) in backends(Retention::default()) {
        for chunk in (1..=1000u64).collect::<Vec<_>>().chunks(100) {
            let batch = chunk.iter().map(|&o| message("r", o)).collect();
            store.append(batch).await.unwrap();
        }
        store.append(vec![message("s", 1)]).await.unwrap();
        let mut seen = Vec::new();
        let mut after = 0;
        for _ in 0..100 {
            let page = store.read_after("r", after, 64).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 64, "{name}");
            after = page.last().unwrap().offset;
            seen.extend(page.into_iter().map(|m| m.offset));
        }
        assert_eq!(
            seen,
            (1..=1000).collect::<Vec<_>>(),
            "{name}: one room's pages never leak into the next"
        );
        assert!(
            store.read_after("r", 0, 0).await.unwrap().is_empty(),
            "{name}"
        );
        assert!(
            store
                .read_after("r", u64::MAX, 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn count_retention_moves_the_earliest_bound() {
    let retention = Retention {
        max_messages: Some(10),
        max_age: None,
    };
    for (name, store, _dir) in backends(retention) {
        store
            .append((1..=7).map(|o| message("r", o)).collect())
            .await
            .unwrap();
        assert_eq!(
            store.bounds("r").await.unwrap(),
            Some(RoomBounds {
                earliest: 1,
                last: 7
            }),
            "{name}"
        );
        for offset in 8..=25 {
            store.append(vec![message("r", offset)]).await.unwrap();
        }
        // One batch bigger than the limit keeps only its own tail.
        store
            .append((30..=50).map(|o| message("q", o)).collect())
            .await
            .unwrap();

        assert_eq!(
            store.bounds("r").await.unwrap(),
            Some(RoomBounds {
                earliest: 16,
                last: 25
            }),
            "{name}"
        );
        assert_eq!(
            offsets(&*store, "r").await,
            (16..=25).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            store.bounds("q").await.unwrap(),
            Some(RoomBounds {
                earliest: 41,
                last: 50
            }),
            "{name}"
        );
        // Reading from before retention starts at the earliest retained message.
        assert_eq!(
            store.read_after("r", 3, 1).await.unwrap()[0].offset,
            16,
            "{name}"
        );
        assert_eq!(store.enforce_retention(0).await.unwrap(), 0, "{name}");
    }
}

#[tokio::test]
async fn last_offset_survives_trimming_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let keep_none = Retention {
        max_messages: Some(0),
        max_age: None,
    };
    {
        let store = RedbStore::open(dir.path(), keep_none).unwrap();
        store
            .append((1..=5).map(|o| message("r", o)).collect())
            .await
            .unwrap();
        assert_eq!(store.bounds("r").await.unwrap(), None);
        assert_eq!(store.last_offset("r").await.unwrap(), 5);
    }
    let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
    assert_eq!(store.last_offset("r").await.unwrap(), 5);
    assert_eq!(store.bounds("r").await.unwrap(), None);
    // Offsets cannot go back after the restart either.
    let refused = store.append(vec![message("r", 3)]).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::OffsetNotIncreasing {
                offset: 3,
                last: 5,
                ..
            })
        ),
        "{refused:?}"
    );
    store.append(vec![message("r", 6)]).await.unwrap();
    assert_eq!(
        store.bounds("r").await.unwrap(),
        Some(RoomBounds {
            earliest: 6,
            last: 6
        })
    );
}

#[tokio::test]
async fn age_retention_deletes_only_the_expired_prefix() {
    let retention = Retention {
        max_messages: None,
        max_age: Some(Duration::from_secs(60)),
    };
    let minute = 60_000_000i64;
    for (name, store, _dir) in backends(retention) {
        // Room "old": t = 0, 10 s, 20 s, ...; room "new": all at 5 minutes.
        store
            .append(
                (1..=10)
                    .map(|o| timed("old", o, (o as i64 - 1) * 10_000_000))
                    .collect(),
            )
            .await
            .unwrap();
        store
            .append((1..=3).map(|o| timed("new", o, 5 * minute)).collect())
            .await
            .unwrap();
        // At now = 2 min, the cutoff is 1 min: offsets 1..=6 (t < 60 s) go.
        assert_eq!(
            store.enforce_retention(2 * minute).await.unwrap(),
            6,
            "{name}"
        );
        assert_eq!(
            store.bounds("old").await.unwrap(),
            Some(RoomBounds {
                earliest: 7,
                last: 10
            }),
            "{name}"
        );
        assert_eq!(offsets(&*store, "new").await, vec![1, 2, 3], "{name}");
        assert_eq!(
            store.enforce_retention(2 * minute).await.unwrap(),
            0,
            "{name}"
        );
        // Much later everything is gone, but the offsets stay.
        assert_eq!(
            store.enforce_retention(100 * minute).await.unwrap(),
            7,
            "{name}"
        );
        assert_eq!(store.bounds("old").await.unwrap(), None, "{name}");
        assert_eq!(store.last_offset("old").await.unwrap(), 10, "{name}");
        assert_eq!(store.last_offset("new").await.unwrap(), 3, "{name}");
    }
}

#[tokio::test]
async fn lowered_count_limit_applies_on_the_next_retention_run() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
        store
            .append((1..=50).map(|o| message("r", o)).collect())
            .await
            .unwrap();
    }
    let store = RedbStore::open(
        dir.path(),
        Retention {
            max_messages: Some(10),
            max_age: None,
        },
    )
    .unwrap();
    assert_eq!(store.enforce_retention(0).await.unwrap(), 40);
    assert_eq!(
        store.bounds("r").await.unwrap(),
        Some(RoomBounds {
            earliest: 41,
            last: 50
        })
    );
    // The retained count was updated too: one more append trims exactly one.
    store.append(vec![message("r", 51)]).await.unwrap();
    assert_eq!(
        store.bounds("r").await.unwrap(),
        Some(RoomBounds {
            earliest: 42,
            last: 51
        })
    );
}

#[tokio::test]
async fn messages_survive_drop_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<_> = (1..=200u64)
        .map(|o| message(if o.is_multiple_of(2) { "even" } else { "odd" }, o))
        .collect();
    {
        let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
        for chunk in written.chunks(7) {
            store.append(chunk.to_vec()).await.unwrap();
        }
        assert_eq!(store.path(), dir.path().join("duplex.redb"));
    }
    let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
    let mut read = store.read_after("odd", 0, 1000).await.unwrap();
    read.extend(store.read_after("even", 0, 1000).await.unwrap());
    read.sort_by_key(|m| m.offset);
    assert_eq!(read, written);
    assert_eq!(store.last_offset("even").await.unwrap(), 200);
    assert_eq!(store.last_offset("odd").await.unwrap(), 199);
}

/// 16 tasks × 200 single-message appends. Every append must be acked only after a commit
/// that started after it was sent, the appends must share commits, and all must be there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_group_committed() {
    const TASKS: u64 = 16;
    const APPENDS_PER_TASK: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(dir.path(), Retention::default()).unwrap());
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let room = format!("room-{task}");
                for offset in 1..=APPENDS_PER_TASK {
                    let before = store.commits();
                    store.append(vec![message(&room, offset)]).await.unwrap();
                    assert!(store.commits() > before, "ack before any commit");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let appends = TASKS * APPENDS_PER_TASK;
    let commits = store.commits();
    eprintln!("{appends} appends in {commits} commits");
    assert!(
        commits < appends,
        "{commits} commits for {appends} appends: no group commit"
    );
    for task in 0..TASKS {
        let room = format!("room-{task}");
        assert_eq!(
            offsets(&*store, &room).await,
            (1..=APPENDS_PER_TASK).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn second_open_of_the_same_dir_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = RedbStore::open(dir.path(), Retention::default()).unwrap();
    let error = RedbStore::open(dir.path(), Retention::default()).unwrap_err();
    assert!(
        matches!(&error, StoreError::Locked { dir: d } if d == dir.path()),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains("in use"), "{text}");
    // Once the first is dropped the directory opens again.
    drop(first);
    RedbStore::open(dir.path(), Retention::default()).unwrap();
}

#[test]
fn a_data_dir_that_cannot_be_created_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let error = RedbStore::open(&file.join("data"), Retention::default()).unwrap_err();
    assert!(matches!(error, StoreError::DataDir { .. }), "{error:?}");
    assert!(error.to_string().contains("not-a-dir"), "{error}");
}

#[test]
fn a_garbage_database_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duplex.redb");
    std::fs::write(&path, vec![0x5A; 64 * 1024]).unwrap();
    let error = RedbStore::open(dir.path(), Retention::default()).unwrap_err();
    assert!(matches!(error, StoreError::Open { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[tokio::test]
async fn one_retention_run_removes_a_bounded_number() {
    let retention = Retention {
        max_messages: None,
        max_age: Some(Duration::from_secs(1)),
    };
    let total = MAX_RETENTION_DELETES_PER_RUN + 10;
    for (name, store, _dir) in backends(retention) {
        for chunk in (1..=total).collect::<Vec<_>>().chunks(10_000) {
            let batch = chunk.iter().map(|&o| timed("r", o, 0)).collect();
            store.append(batch).await.unwrap();
        }
        let later = 10_000_000;
        assert_eq!(
            store.enforce_retention(later).await.unwrap(),
            MAX_RETENTION_DELETES_PER_RUN,
            "{name}"
        );
        assert_eq!(
            store.bounds("r").await.unwrap(),
            Some(RoomBounds {
                earliest: MAX_RETENTION_DELETES_PER_RUN + 1,
                last: total
            }),
            "{name}"
        );
        assert_eq!(store.enforce_retention(later).await.unwrap(), 10, "{name}");
        assert_eq!(store.enforce_retention(later).await.unwrap(), 0, "{name}");
        assert_eq!(store.bounds("r").await.unwrap(), None, "{name}");
    }
}

/// What the hub reads to dedupe a room it loads: the newest client ids, oldest first,
/// skipping messages without one and following retention.
#[tokio::test]
async fn recent_client_ids_are_the_newest_retained_ones() {
    let retention = Retention {
        max_messages: Some(6),
        max_age: None,
    };
    for (name, store, _dir) in backends(retention) {
        let batch = (1..=10)
            .map(|offset| StoredMessage {
                client_id: if offset % 3 == 0 {
                    String::new()
                } else {
                    format!("c{offset}")
                },
                ..message("r", offset)
            })
            .collect();
        store.append(batch).await.unwrap();
        store.append(vec![message("other", 1)]).await.unwrap();
        let ids = store.recent_client_ids("r", 3).await.unwrap();
        let want: Vec<(Offset, String)> = [(8, "c8"), (10, "c10")]
            .into_iter()
            .map(|(o, id)| (o, id.to_owned()))
            .collect();
        // redb's index lists the newest 3 ids (7, 8, 10); the memory default reads the
        // newest 3 offsets (8, 9, 10) and keeps those with an id. Both end at the newest.
        assert!(ids.ends_with(&want), "{name}: {ids:?}");
        // Retention keeps offsets 5..=10: the index never names a trimmed message.
        let all = store.recent_client_ids("r", 100).await.unwrap();
        let offsets: Vec<Offset> = all.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [5, 7, 8, 10], "{name}");
        assert!(
            store
                .recent_client_ids("empty", 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// A file written before the client-id index existed gets it built when opened, so a
/// retried publish is still recognised after the upgrade.
#[tokio::test]
async fn the_client_id_index_is_built_for_an_older_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
        store
            .append((1..=4).map(|offset| message("r", offset)).collect())
            .await
            .unwrap();
    }
    {
        // Make it look like an older file: no index table.
        let db = redb::Database::open(dir.path().join("duplex.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let index: redb::TableDefinition<(&str, u64), &str> =
            redb::TableDefinition::new("duplex.client_ids.v1");
        assert!(txn.delete_table(index).unwrap(), "the index table existed");
        txn.commit().unwrap();
    }
    let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
    let ids = store.recent_client_ids("r", 10).await.unwrap();
    let offsets: Vec<Offset> = ids.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, [1, 2, 3, 4]);
    assert_eq!(ids[3].1, "c4");
}

/// A truncated file would restart every room at offset 1 and resuming clients would miss
/// messages silently: it is refused, unless the caller asks to start over.
#[tokio::test]
async fn an_empty_database_file_is_refused_unless_reset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
        store
            .append(vec![message("r", 1), message("r", 2)])
            .await
            .unwrap();
    }
    let path = dir.path().join("duplex.redb");
    std::fs::File::create(&path).unwrap(); // truncates it
    let error = RedbStore::open(dir.path(), Retention::default()).unwrap_err();
    assert!(matches!(error, StoreError::Empty { .. }), "{error:?}");
    assert!(error.to_string().contains("--reset-store"), "{error}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");

    let store = RedbStore::open_resetting(dir.path(), Retention::default()).unwrap();
    assert_eq!(store.last_offset("r").await.unwrap(), 0, "an empty store");
    drop(store);
    // Started over once, it opens normally from then on.
    RedbStore::open(dir.path(), Retention::default()).unwrap();
}

#[test]
fn a_damaged_file_is_kept_aside_when_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duplex.redb");
    std::fs::write(&path, vec![0x5A; 64 * 1024]).unwrap();
    let error = RedbStore::open(dir.path(), Retention::default()).unwrap_err();
    assert!(error.to_string().contains("--reset-store"), "{error}");
    RedbStore::open_resetting(dir.path(), Retention::default()).unwrap();
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("duplex.redb.damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file is kept aside: {kept:?}");
    let aside = dir.path().join(&kept[0]);
    assert_eq!(std::fs::read(aside).unwrap(), vec![0x5A; 64 * 1024]);
}

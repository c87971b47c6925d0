//! The store's behaviour as the hub relies on it, against real files in a temporary
//! directory (and, where the behaviour is shared, against the memory backend too).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use duplex_store::{
    Appended, Dedupe, MAX_RETENTION_DELETES_PER_RUN, MemoryStore, NewMessage, Offset, RedbStore,
    Retention, RoomBounds, Store, StoreError, StoredMessage,
};
use tempfile::TempDir;

/// The `offset`th message appended to `room` (so the store gives it `offset`).
fn message(room: &str, offset: Offset) -> NewMessage {
    NewMessage {
        room: room.into(),
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

/// [`message`] as the store returns it, at its offset.
fn stored(room: &str, offset: Offset) -> StoredMessage {
    StoredMessage::from_new(message(room, offset), offset)
}

fn timed(room: &str, offset: Offset, time_unix_micros: i64) -> NewMessage {
    NewMessage {
        time_unix_micros,
        ..message(room, offset)
    }
}

/// A message of `room` carrying client id `id`, published at `second`.
fn with_id(room: &str, id: &str, second: i64) -> NewMessage {
    NewMessage {
        client_id: id.into(),
        time_unix_micros: 1_700_000_000_000_000 + second * 1_000_000,
        ..message(room, 0)
    }
}

fn offsets_of(appended: &[Appended]) -> Vec<(Offset, bool)> {
    appended.iter().map(|a| (a.offset, a.duplicate)).collect()
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
        // Batches mixing three rooms; "a" gets two messages in the first batch. The store
        // numbers each room on its own, from 1.
        for round in 0..10u64 {
            let batch = if round == 0 {
                vec![
                    message("a", 1),
                    message("b", 1),
                    message("a", 2),
                    message("c", 1),
                ]
            } else {
                vec![
                    message("a", round + 2),
                    message("b", round + 1),
                    message("c", round + 1),
                ]
            };
            let rooms: Vec<String> = batch.iter().map(|m| m.room.clone()).collect();
            let appended = store.append(batch).await.unwrap();
            let want: Vec<(Offset, bool)> = if round == 0 {
                vec![(1, false), (1, false), (2, false), (1, false)]
            } else {
                vec![(round + 2, false), (round + 1, false), (round + 1, false)]
            };
            assert_eq!(offsets_of(&appended), want, "{name}: {rooms:?}");
        }
        assert_eq!(
            offsets(&*store, "a").await,
            (1..=11).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            offsets(&*store, "b").await,
            (1..=10).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            offsets(&*store, "c").await,
            (1..=10).collect::<Vec<_>>(),
            "{name}"
        );
        // Every field comes back as written.
        let read = store.read_after("b", 3, 1).await.unwrap();
        assert_eq!(read, vec![stored("b", 4)], "{name}");
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
        ..Default::default()
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
            .append((1..=21).map(|o| message("q", o)).collect())
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
                earliest: 12,
                last: 21
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
        ..Default::default()
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
    // Offsets go on after the restart; none is reused.
    let appended = store.append(vec![message("r", 6)]).await.unwrap();
    assert_eq!(offsets_of(&appended), [(6, false)]);
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
        max_age: Some(Duration::from_secs(60)),
        ..Default::default()
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
            ..Default::default()
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
    // Alternating rooms: the nth message of each room is its offset n.
    let room = |o: u64| if o.is_multiple_of(2) { "even" } else { "odd" };
    let written: Vec<_> = (1..=200u64)
        .map(|o| message(room(o), o.div_ceil(2)))
        .collect();
    {
        let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
        for chunk in written.chunks(7) {
            store.append(chunk.to_vec()).await.unwrap();
        }
        assert_eq!(store.path(), dir.path().join("duplex.redb"));
    }
    let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
    for name in ["odd", "even"] {
        let read = store.read_after(name, 0, 1000).await.unwrap();
        let want: Vec<_> = (1..=100).map(|n| stored(name, n)).collect();
        assert_eq!(read, want, "{name}");
        assert_eq!(store.last_offset(name).await.unwrap(), 100);
    }
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
        max_age: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let total = MAX_RETENTION_DELETES_PER_RUN + 10;
    for (name, store, _dir) in backends(retention) {
        for chunk in (1..=total).collect::<Vec<_>>().chunks(10_000) {
            // No client ids: this is about retention, not the dedupe index.
            let batch = chunk
                .iter()
                .map(|&o| NewMessage {
                    client_id: String::new(),
                    ..timed("r", o, 0)
                })
                .collect();
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

/// A retry of a client id within the window is answered with the original's offset and
/// time and stores nothing, however many other messages the room got meanwhile; other
/// rooms and other ids are not affected.
#[tokio::test]
async fn a_repeated_client_id_within_the_window_is_a_duplicate() {
    for (name, store, _dir) in backends(Retention::default()) {
        let first = store.append(vec![with_id("r", "x", 0)]).await.unwrap();
        assert_eq!(offsets_of(&first), [(1, false)], "{name}");
        for chunk in (2..=5001u64).collect::<Vec<_>>().chunks(1000) {
            let batch = chunk.iter().map(|&o| message("r", o)).collect();
            store.append(batch).await.unwrap();
        }
        let retry = store
            .append(vec![with_id("r", "x", 100), with_id("s", "x", 100)])
            .await
            .unwrap();
        assert_eq!(offsets_of(&retry), [(1, true), (1, false)], "{name}");
        assert_eq!(
            retry[0].time_unix_micros, first[0].time_unix_micros,
            "{name}"
        );
        assert_eq!(store.last_offset("r").await.unwrap(), 5001, "{name}");
        assert_eq!(offsets(&*store, "r").await.len(), 5001, "{name}");
        // A batch of duplicates only commits nothing new.
        let commits = store.commits();
        let again = store.append(vec![with_id("r", "x", 101)]).await.unwrap();
        assert_eq!(offsets_of(&again), [(1, true)], "{name}");
        assert_eq!(store.commits(), commits, "{name}");
    }
}

#[tokio::test]
async fn a_repeat_within_one_batch_gets_the_first_ones_offset() {
    for (name, store, _dir) in backends(Retention::default()) {
        let appended = store
            .append(vec![
                with_id("r", "x", 0),
                with_id("r", "y", 0),
                with_id("r", "x", 0),
                message("r", 0),
                with_id("r", "y", 0),
            ])
            .await
            .unwrap();
        assert_eq!(
            offsets_of(&appended),
            [(1, false), (2, false), (1, true), (3, false), (2, true)],
            "{name}"
        );
        assert_eq!(offsets(&*store, "r").await, [1, 2, 3], "{name}");
    }
}

#[tokio::test]
async fn an_id_is_stored_anew_once_the_window_has_passed() {
    let retention = Retention {
        dedupe: Dedupe {
            window: Duration::from_secs(60),
            ..Dedupe::default()
        },
        ..Default::default()
    };
    for (name, store, _dir) in backends(retention) {
        store.append(vec![with_id("r", "x", 0)]).await.unwrap();
        let inside = store.append(vec![with_id("r", "x", 59)]).await.unwrap();
        assert_eq!(offsets_of(&inside), [(1, true)], "{name}");
        let after = store.append(vec![with_id("r", "x", 60)]).await.unwrap();
        assert_eq!(offsets_of(&after), [(2, false)], "{name}");
        // The window runs from the new message now.
        let again = store.append(vec![with_id("r", "x", 100)]).await.unwrap();
        assert_eq!(offsets_of(&again), [(2, true)], "{name}");
        // A retention run long after prunes the index; the id is new again.
        store
            .enforce_retention(with_id("r", "x", 1000).time_unix_micros)
            .await
            .unwrap();
        let pruned = store.append(vec![with_id("r", "x", 1000)]).await.unwrap();
        assert_eq!(offsets_of(&pruned), [(3, false)], "{name}");
    }
}

#[tokio::test]
async fn dedupe_off_stores_every_repeat() {
    let retention = Retention {
        dedupe: Dedupe::OFF,
        ..Default::default()
    };
    for (name, store, _dir) in backends(retention) {
        let appended = store
            .append(vec![with_id("r", "x", 0), with_id("r", "x", 0)])
            .await
            .unwrap();
        assert_eq!(offsets_of(&appended), [(1, false), (2, false)], "{name}");
    }
}

/// Past its bounds the index forgets the oldest ids early: of the room past the per-room
/// bound, of the whole store past the total one. Those are stored anew; newer ones are
/// still duplicates.
#[tokio::test]
async fn past_a_bound_the_oldest_ids_are_forgotten() {
    let retention = Retention {
        dedupe: Dedupe {
            window: Duration::from_secs(3600),
            max_ids_per_room: 3,
            max_ids: 5,
        },
        ..Default::default()
    };
    for (name, store, _dir) in backends(retention) {
        // Room "r": a..e, one a second; only c, d, e are kept.
        for (second, id) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            store
                .append(vec![with_id("r", id, second as i64)])
                .await
                .unwrap();
        }
        let retry = store
            .append(vec![with_id("r", "e", 10), with_id("r", "c", 10)])
            .await
            .unwrap();
        assert_eq!(offsets_of(&retry), [(5, true), (3, true)], "{name}");
        let forgotten = store.append(vec![with_id("r", "a", 11)]).await.unwrap();
        assert_eq!(
            offsets_of(&forgotten),
            [(6, false)],
            "{name}: a was forgotten"
        );
        // Now r holds d, e, a. Room "s" adds three: five in all, so the store's two
        // oldest (d and e of r) go.
        for (second, id) in ["p", "q", "t"].into_iter().enumerate() {
            store
                .append(vec![with_id("s", id, 20 + second as i64)])
                .await
                .unwrap();
        }
        let check = store
            .append(vec![
                with_id("s", "p", 30),
                with_id("r", "a", 30),
                with_id("r", "d", 30),
            ])
            .await
            .unwrap();
        assert_eq!(
            offsets_of(&check),
            [(1, true), (6, true), (7, false)],
            "{name}: d was forgotten for the total bound"
        );
    }
}

/// The redb index is durable: a retry after a reopen is still a duplicate, and the
/// window still ends.
#[tokio::test]
async fn the_dedupe_index_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
        store
            .append(vec![with_id("r", "x", 0), message("r", 2)])
            .await
            .unwrap();
    }
    let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
    let retry = store.append(vec![with_id("r", "x", 60)]).await.unwrap();
    assert_eq!(offsets_of(&retry), [(1, true)]);
    let late = store.append(vec![with_id("r", "x", 121)]).await.unwrap();
    assert_eq!(offsets_of(&late), [(3, false)]);
}

/// A file of an older version has a client-id table the store no longer uses: it is
/// deleted on open, and the file works as before.
#[tokio::test]
async fn an_older_files_client_id_table_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
        store.append(vec![message("r", 1)]).await.unwrap();
    }
    let old: redb::TableDefinition<(&str, u64), &str> =
        redb::TableDefinition::new("duplex.client_ids.v1");
    {
        let db = redb::Database::open(dir.path().join("duplex.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(old).unwrap().insert(("r", 1), "c1").unwrap();
        txn.commit().unwrap();
    }
    {
        let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
        assert_eq!(offsets(&store, "r").await, [1]);
    }
    use redb::ReadableDatabase as _;
    let db = redb::Database::open(dir.path().join("duplex.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    assert!(txn.open_table(old).is_err(), "the old table is gone");
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

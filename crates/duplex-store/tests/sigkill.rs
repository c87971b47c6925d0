//! An acked append survives SIGKILL of the writing process.
//!
//! The test re-executes its own binary as the writer (the ignored test
//! `sigkill_child_writer`, switched on by an environment variable): it appends numbered
//! single-message batches from several concurrent tasks, one room each, and prints each
//! offset as soon as `append` returns. The parent reads the acks, SIGKILLs the child
//! mid-stream, reopens the store and checks that every acked offset is there, in order,
//! with no gap.
//!
//! SIGKILL only kills the process (the OS still writes its page cache out), so this test
//! checks crash consistency and that no ack precedes its commit; that each ack follows an
//! fsync is checked by `concurrent_appends_are_group_committed` counting commits.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use duplex_store::{NewMessage, Offset, RedbStore, Retention, Store, StoreError, StoredMessage};

/// Set in the child's environment to the data directory it writes.
const CHILD_DIR_ENV: &str = "DUPLEX_STORE_SIGKILL_CHILD_DIR";
/// Concurrent appenders in the child, one room each.
const WRITERS: u64 = 8;
/// Acks the parent waits for before it kills the child.
const ACKS_BEFORE_KILL: usize = 2_000;
/// Upper bound on each child appender's loop, in case nobody kills it.
const MAX_APPENDS_PER_WRITER: u64 = 100_000;
/// How long the parent waits for the acks before it gives up.
const ACK_DEADLINE: Duration = Duration::from_secs(90);

/// What the child appends as the `n`th message of `room`; the store gives it offset `n`.
fn new_message(room: &str, n: u64) -> NewMessage {
    NewMessage {
        room: room.into(),
        time_unix_micros: n as i64,
        sender: "writer".into(),
        content_type: String::new(),
        client_id: String::new(),
        key: String::new(),
        payload: Bytes::from(format!("{room}/{n}")),
    }
}

/// The `offset`th message of `room`, as stored.
fn message(room: &str, offset: Offset) -> StoredMessage {
    StoredMessage::from_new(new_message(room, offset), offset)
}

#[test]
#[ignore = "the writer half of acked_appends_survive_sigkill, which runs it"]
fn sigkill_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Arc::new(RedbStore::open(dir.as_ref(), Retention::default()).unwrap());
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let store = store.clone();
                tokio::spawn(async move {
                    let room = format!("room-{writer}");
                    for n in 1..=MAX_APPENDS_PER_WRITER {
                        let appended = store.append(vec![new_message(&room, n)]).await.unwrap();
                        let offset = appended[0].offset;
                        assert_eq!(offset, n, "one writer per room: offsets follow its count");
                        // One write per line, so a kill cannot tear a line.
                        println!("ack {room} {offset}");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
    });
}

#[test]
fn acked_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "sigkill_child_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    let stdout = child.stdout.take().unwrap();
    let (acks_tx, acks) = mpsc::channel::<(String, Offset)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut words = line.split(' ');
            if let (Some("ack"), Some(room), Some(offset), None) =
                (words.next(), words.next(), words.next(), words.next())
                && let Ok(offset) = offset.parse()
                && acks_tx.send((room.to_owned(), offset)).is_err()
            {
                break;
            }
        }
    });

    let mut acked: BTreeMap<String, Vec<Offset>> = BTreeMap::new();
    let mut count = 0;
    let deadline = Instant::now() + ACK_DEADLINE;
    let mut checked_lock = false;
    while count < ACKS_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((room, offset)) = acks.recv_timeout(left) else {
            let _ = child.kill();
            panic!("only {count} acks within {ACK_DEADLINE:?}");
        };
        acked.entry(room).or_default().push(offset);
        count += 1;
        if !checked_lock {
            // While the child holds it, the directory cannot be opened from here.
            let error = RedbStore::open(dir.path(), Retention::default()).unwrap_err();
            assert!(matches!(error, StoreError::Locked { .. }), "{error:?}");
            checked_lock = true;
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the child was killed, not finished: {status:?}"
    );
    // Acks printed before the kill but not read yet are acks too.
    reader.join().unwrap();
    for (room, offset) in acks.try_iter() {
        acked.entry(room).or_default().push(offset);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = RedbStore::open(dir.path(), Retention::default()).unwrap();
    let (mut total_acked, mut total_found, mut lost, mut gaps) = (0, 0, 0, 0);
    for (room, offsets) in &acked {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{room}: acks out of order"
        );
        let found: Vec<Offset> = runtime
            .block_on(store.read_after(room, 0, usize::MAX))
            .unwrap()
            .into_iter()
            .map(|m| {
                assert_eq!(m, message(room, m.offset), "content of {room}/{}", m.offset);
                m.offset
            })
            .collect();
        // Offsets were appended 1, 2, 3, ... so what is found must be 1..=n.
        gaps += found
            .iter()
            .enumerate()
            .filter(|&(i, &offset)| offset != i as u64 + 1)
            .count();
        let found_set: std::collections::BTreeSet<_> = found.iter().copied().collect();
        lost += offsets.iter().filter(|o| !found_set.contains(o)).count();
        total_acked += offsets.len();
        total_found += found.len();
        assert_eq!(
            runtime.block_on(store.last_offset(room)).unwrap(),
            found.last().copied().unwrap_or(0)
        );
    }
    eprintln!(
        "sigkill: acked={total_acked} found={total_found} lost={lost} gaps={gaps} \
         (committed but not yet acked when killed: {})",
        total_found - total_acked
    );
    assert!(total_acked >= ACKS_BEFORE_KILL);
    assert_eq!(lost, 0, "acked messages lost after SIGKILL");
    assert_eq!(gaps, 0, "gaps in the recovered log");
}

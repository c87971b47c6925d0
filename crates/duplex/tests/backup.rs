//! The production guide's backup and restore, done as an operator would: copy the data
//! directory of a stopped node (or a crash image of it, as a filesystem snapshot of a
//! running node is), lose the original, start a node on the copy. Every acked message is
//! there with its offset, and new publishes continue after them.

mod common;

use std::path::Path;

use common::{STEP, hub_client, spawn_duplex_serve_durable};
use duplex_proto::hub::{HistoryRequest, PublishRequest};

/// `cp -a SRC DST` for a flat directory (the store keeps one file).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        assert!(entry.file_type().unwrap().is_file(), "{entry:?}");
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Publishes 20 messages to a durable node, stops it with `signal`, copies its data
/// directory, deletes the original, starts a node on the copy and checks that every acked
/// message is there with its offset and that offsets go on after them.
async fn restore_after(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, addr) = spawn_duplex_serve_durable(&data, &[]);
    let mut client = hub_client(addr, 4 << 20).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let ack = client
            .publish(PublishRequest {
                room: "orders".into(),
                payload: format!("order {i}").into(),
                ..Default::default()
            })
            .await
            .expect("publish")
            .into_inner();
        acked.push((ack.offset, format!("order {i}")));
    }
    drop(client);

    server.signal(signal);
    let status = server.wait_for_exit(STEP).expect("the node stops");
    if signal == "TERM" {
        assert!(status.success(), "{status:?}");
    }
    let backup = dir.path().join("backup");
    copy_dir(&data, &backup);
    // The disaster: the original is gone.
    std::fs::remove_dir_all(&data).unwrap();

    let (_restored, addr) = spawn_duplex_serve_durable(&backup, &[]);
    let mut client = hub_client(addr, 4 << 20).await;
    let history = client
        .history(HistoryRequest {
            room: "orders".into(),
            after_offset: 0,
            limit: 100,
        })
        .await
        .expect("history")
        .into_inner();
    let restored: Vec<(u64, String)> = history
        .messages
        .iter()
        .map(|message| {
            (
                message.offset,
                String::from_utf8(message.payload.to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(restored, acked);

    // Offsets go on after the restored ones: no restored offset is handed out again.
    let next = client
        .publish(PublishRequest {
            room: "orders".into(),
            payload: "after the restore".into(),
            ..Default::default()
        })
        .await
        .expect("publish")
        .into_inner()
        .offset;
    assert!(next > acked.last().unwrap().0, "{next} after {acked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_stopped_nodes_data_directory_restores_every_acked_message() {
    // SIGTERM drains, flushes the store and exits 0: the stopped file is complete.
    restore_after("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_image_of_the_data_directory_restores_every_acked_message() {
    // What an atomic filesystem snapshot of a running node holds: the file as a crash
    // leaves it. redb opens it as after a power cut, every acked message in it.
    restore_after("KILL").await;
}

//! Dedupe by client message id, against real `duplex serve --store redb` processes: the
//! log remembers ids for a time window, not for a count of messages, and durably.
//!
//! A client that publishes with an id, loses the ack and retries must get the original's
//! offset back and nothing stored twice, however busy the room was meanwhile and even if
//! the server restarted in between; once the window has passed, the id is new again.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{STEP, spawn_duplex_serve_durable};
use duplex_proto::hub::hub_client::HubClient;
use duplex_proto::hub::{HistoryRequest, PublishAck, PublishRequest};
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::time::timeout;
use tonic::transport::Channel;

const ROOM: &str = "orders";

async fn hub_client(addr: SocketAddr) -> HubClient<Channel> {
    common::hub_client(addr, 8 << 20).await
}

async fn publish(client: &HubClient<Channel>, payload: &str, id: &str) -> PublishAck {
    let request = PublishRequest {
        room: ROOM.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        client_message_id: id.into(),
        ..Default::default()
    };
    timeout(STEP, client.clone().publish(request))
        .await
        .unwrap_or_else(|_| panic!("publish {id:?} not acked within {STEP:?}"))
        .unwrap_or_else(|status| panic!("publish {id:?}: {status}"))
        .into_inner()
}

/// The room's last offset and how many messages it retains (all of them here).
async fn last_offset(client: &HubClient<Channel>) -> u64 {
    let request = HistoryRequest {
        room: ROOM.into(),
        after_offset: 0,
        limit: 1,
    };
    timeout(STEP, client.clone().history(request))
        .await
        .expect("history within the step")
        .expect("history")
        .into_inner()
        .last_offset
}

/// The payload stored at `offset`.
async fn payload_at(client: &HubClient<Channel>, offset: u64) -> Bytes {
    let request = HistoryRequest {
        room: ROOM.into(),
        after_offset: offset - 1,
        limit: 1,
    };
    let page = timeout(STEP, client.clone().history(request))
        .await
        .expect("history within the step")
        .expect("history")
        .into_inner();
    assert_eq!(page.messages[0].offset, offset);
    page.messages[0].payload.clone()
}

/// Issue 12's acceptance case: a publish retried after 10,000 other messages to the room
/// within the window is acked as a duplicate with its original offset, and again after a
/// restart of the server on the same data directory; nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_10000_other_messages_is_a_duplicate_also_after_a_restart() {
    const OTHERS: usize = 10_000;
    const IN_FLIGHT: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = spawn_duplex_serve_durable(dir.path(), &[]);
    let client = hub_client(addr).await;

    let original = publish(&client, "the order", "order-42").await;
    assert!(!original.duplicate);

    // 10,000 others, each with its own id, pipelined so the burst takes seconds.
    let started = Instant::now();
    let acks: Vec<PublishAck> = futures::stream::iter(0..OTHERS)
        .map(|i| {
            let client = client.clone();
            async move {
                let request = PublishRequest {
                    room: ROOM.into(),
                    payload: Bytes::from(format!("other {i}")),
                    client_message_id: format!("other-{i}"),
                    ..Default::default()
                };
                timeout(STEP, client.clone().publish(request))
                    .await
                    .map_err(|_| tonic::Status::deadline_exceeded("not acked within the step"))?
                    .map(tonic::Response::into_inner)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await
        .expect("every other publish is acked");
    println!("{OTHERS} publishes acked in {:?}", started.elapsed());
    assert!(acks.iter().all(|ack| !ack.duplicate));
    let last = last_offset(&client).await;
    assert_eq!(last, original.offset + OTHERS as u64);

    let retry = publish(&client, "the order", "order-42").await;
    assert!(retry.duplicate, "the retry is a duplicate: {retry:?}");
    assert_eq!(retry.offset, original.offset);
    assert_eq!(last_offset(&client).await, last, "nothing new stored");
    assert_eq!(payload_at(&client, original.offset).await, "the order");

    // Restart on the same data directory: the index is durable.
    server.signal("TERM");
    let status = server.wait_for_exit(STEP).expect("the server exits");
    assert!(status.success(), "clean shutdown: {status:?}");
    let (_server, addr) = spawn_duplex_serve_durable(dir.path(), &[]);
    let client = hub_client(addr).await;
    let after_restart = publish(&client, "the order", "order-42").await;
    assert!(
        after_restart.duplicate,
        "still a duplicate after the restart: {after_restart:?}"
    );
    assert_eq!(after_restart.offset, original.offset);
    assert_eq!(last_offset(&client).await, last, "nothing new stored");
    // Another of the burst's ids is remembered too; a new id is not a repeat.
    let other = publish(&client, "other 9999", "other-9999").await;
    assert!(other.duplicate);
    let fresh = publish(&client, "a new order", "order-43").await;
    assert_eq!((fresh.offset, fresh.duplicate), (last + 1, false));
}

/// With a short `--dedupe-window`, a retry inside it is a duplicate and one after it is
/// stored anew at a new offset. What is inside or after the window is decided from the
/// client's own clock bounds, so a slow machine cannot make the test lie.
#[tokio::test]
async fn after_the_window_the_same_id_is_stored_anew() {
    const WINDOW: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = spawn_duplex_serve_durable(dir.path(), &["--dedupe-window", "2s"]);
    let client = hub_client(addr).await;

    let sent = Instant::now();
    let first = publish(&client, "ping", "ping-1").await;
    let acked = Instant::now();
    let retry = publish(&client, "ping", "ping-1").await;
    // Both were stamped by the server between `sent` and now.
    if sent.elapsed() < WINDOW {
        assert_eq!((retry.offset, retry.duplicate), (first.offset, true));
    } else {
        println!("the machine was too slow to check the retry inside the window");
    }

    // Wait until the window since the first ack has surely passed.
    tokio::time::sleep((acked + WINDOW + Duration::from_millis(200)) - Instant::now()).await;
    let later = publish(&client, "ping", "ping-1").await;
    assert!(!later.duplicate, "stored anew after the window: {later:?}");
    assert!(later.offset > first.offset);
    assert_eq!(last_offset(&client).await, later.offset);
    assert_eq!(payload_at(&client, later.offset).await, "ping");
}

//! The hard guarantees of rooms, against real servers and real files: resume under load
//! with no gap and no duplicate, no acked message lost to SIGKILL, and a stalled subscriber
//! that cannot grow server memory past its queue bound.

mod common;

use common::session::SessionSteps as _;

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use common::session::Session;
use common::{InProcessServer, STEP, spawn_duplex_serve_durable};
use duplex_hub::LagPolicy;
use duplex_proto::hub::hub_client::HubClient;
use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{HistoryRequest, Join, Ping, Publish, client_frame::Command};
use tokio::time::timeout;
use tonic::transport::Channel;

/// Publishes `count` messages `m0..` to `room` from a hidden session, reading its frames
/// concurrently; returns the acked offsets in publish order.
async fn publish_all(
    channel: Channel,
    room: &'static str,
    count: usize,
    payload_size: usize,
) -> Vec<u64> {
    let mut session = Session::open(&channel, "publisher").await;
    session
        .send(Command::Join(Join {
            room: room.into(),
            after_offset: None,
            hidden: true,
            replay_last: 0,
        }))
        .await;
    assert!(matches!(session.next().await, Frame::Joined(_)));
    let Session {
        commands,
        mut frames,
        ..
    } = session;
    let reader = tokio::spawn(async move {
        let mut acks = HashMap::new();
        while acks.len() < count {
            let frame = timeout(STEP, frames.message())
                .await
                .expect("acks keep coming");
            match frame
                .expect("publisher stream healthy")
                .and_then(|f| f.frame)
            {
                Some(Frame::PublishAck(ack)) => {
                    acks.insert(ack.command_id, ack.offset);
                }
                Some(Frame::Error(error)) => panic!("publish failed: {error:?}"),
                Some(_) => {}
                None => panic!("publisher stream ended early"),
            }
        }
        (1..=count as u64).map(|id| acks[&id]).collect::<Vec<_>>()
    });
    for i in 0..count {
        let mut payload = format!("m{i}").into_bytes();
        payload.resize(payload_size.max(payload.len()), b'.');
        commands
            .send(duplex_proto::hub::ClientFrame {
                command_id: i as u64 + 1,
                command: Some(Command::Publish(Publish {
                    room: room.into(),
                    payload: Bytes::from(payload),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
    }
    let offsets = timeout(STEP * 6, reader)
        .await
        .expect("all acked in time")
        .unwrap();
    drop(commands);
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnect_mid_burst_has_no_gap_and_no_duplicate() {
    const TOTAL: usize = 100_000;
    let data = tempfile::tempdir().unwrap();
    let server = InProcessServer::start_with(|config| {
        config.store = duplex_server::StoreKind::Redb;
        config.data_dir = data.path().to_owned();
        // A load test: no per-session publish rate.
        config.publish_rate = 0;
    })
    .await;
    let channel = server.channel().await;

    let mut subscriber = Session::open(&channel, "reader").await;
    subscriber.join("burst", None).await;
    let publisher = tokio::spawn(publish_all(server.channel().await, "burst", TOTAL, 16));

    let started = Instant::now();
    let mut offsets: Vec<u64> = Vec::with_capacity(TOTAL);
    let mut resumes = 0;
    while offsets.len() < TOTAL {
        match subscriber.next().await {
            Frame::Message(message) => offsets.push(message.offset),
            Frame::Presence(_) | Frame::Joined(_) => {}
            other => panic!("unexpected {other:?}"),
        }
        // Drop the connection mid-burst, three times, and resume from the last offset seen.
        if offsets.len().is_multiple_of(25_000) && offsets.len() < TOTAL {
            drop(subscriber);
            resumes += 1;
            let channel = server.channel().await;
            subscriber = Session::open(&channel, "reader").await;
            let last = *offsets.last().unwrap();
            let joined = subscriber.join("burst", Some(last)).await;
            assert!(joined.last_offset >= last);
        }
    }
    let acked = publisher.await.unwrap();
    let expected: Vec<u64> = (1..=TOTAL as u64).collect();
    let gaps = offsets.windows(2).filter(|w| w[1] > w[0] + 1).count();
    let duplicates = offsets.windows(2).filter(|w| w[1] <= w[0]).count();
    eprintln!(
        "resume under load: {} messages, {resumes} resumes, {gaps} gaps, {duplicates} duplicates, {:?}",
        offsets.len(),
        started.elapsed()
    );
    assert_eq!((gaps, duplicates), (0, 0));
    assert_eq!(offsets, expected);
    assert_eq!(
        acked, expected,
        "acks carry each message's offset, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_acked_publishes_loses_nothing() {
    const TOTAL: usize = 10_000;
    let data = tempfile::tempdir().unwrap();
    let (mut server, addr) = spawn_duplex_serve_durable(data.path(), &[]);
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut session = Session::open(&channel, "writer").await;
    session.join("ledger", None).await;
    let Session {
        commands,
        mut frames,
        ..
    } = session;
    let writer = tokio::spawn(async move {
        for i in 0..TOTAL {
            let frame = duplex_proto::hub::ClientFrame {
                command_id: i as u64 + 1,
                command: Some(Command::Publish(Publish {
                    room: "ledger".into(),
                    payload: Bytes::from(format!("entry {i}")),
                    ..Default::default()
                })),
            };
            if commands.send(frame).await.is_err() {
                return;
            }
        }
    });
    // Record every ack until the stream breaks; kill the server once 3000 are in.
    let mut acked: Vec<(u64, u64)> = Vec::new(); // (offset, publish index)
    let mut killed = false;
    loop {
        let frame = match timeout(STEP, frames.message())
            .await
            .expect("frames or an error")
        {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => break,
        };
        if let Some(Frame::PublishAck(ack)) = frame.frame {
            acked.push((ack.offset, ack.command_id - 1));
            if acked.len() == 3000 && !killed {
                server.signal("KILL");
                killed = true;
            }
        }
    }
    assert!(killed, "the server was killed mid-burst");
    writer.abort();
    server.wait_for_exit(STEP).expect("killed");

    let (_server, addr) = spawn_duplex_serve_durable(data.path(), &[]);
    let mut client = HubClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .history(HistoryRequest {
                room: "ledger".into(),
                after_offset: after,
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner();
        let Some(last) = page.messages.last() else {
            break;
        };
        after = last.offset;
        stored.extend(page.messages);
    }
    let by_offset: HashMap<u64, String> = stored
        .iter()
        .map(|m| (m.offset, String::from_utf8(m.payload.to_vec()).unwrap()))
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(offset, index)| by_offset.get(offset) != Some(&format!("entry {index}")))
        .collect();
    let in_order = stored.windows(2).all(|w| w[0].offset < w[1].offset);
    let publish_order = stored
        .iter()
        .enumerate()
        .all(|(i, m)| m.payload == format!("entry {i}"));
    eprintln!(
        "sigkill: {} acked before the kill, {} stored after restart, {} lost",
        acked.len(),
        stored.len(),
        lost.len()
    );
    assert!(acked.len() >= 3000);
    assert!(
        lost.is_empty(),
        "acked but lost: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert!(stored.len() >= acked.len());
    assert!(in_order && publish_order, "stored in publish order");
}

/// Subscribers on their own connections with small windows, so a stalled one fills fast.
async fn small_window_channel(server: &InProcessServer) -> Channel {
    Channel::from_shared(server.url())
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(64 * 1024)
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_stays_bounded_and_is_disconnected_with_lagged() {
    const TOTAL: usize = 5000;
    let server = InProcessServer::start_with(|config| {
        config.queue_frames = 1024;
        config.queue_bytes = 1 << 20;
    })
    .await;
    let mut stalled = Session::open(&small_window_channel(&server).await, "stalled").await;
    stalled.join("firehose", None).await;
    let mut healthy = Session::open(&server.channel().await, "healthy").await;
    healthy.join("firehose", None).await;

    // The healthy subscriber gets everything while the other one reads nothing. The
    // publisher goes a chunk at a time, each once the healthy subscriber has had the last:
    // on a loaded machine a healthy reader may be slower than the publisher, and it must
    // not fall a whole queue behind (and be lagged out itself) while the stalled one falls
    // behind by all of it.
    const CHUNK: usize = 250;
    let mut peak_queued = 0;
    let mut received = 0;
    while received < TOTAL {
        publish_all(server.channel().await, "firehose", CHUNK, 1024).await;
        let chunk_end = received + CHUNK;
        while received < chunk_end {
            if let Frame::Message(_) = healthy.next().await {
                received += 1;
            }
            if received.is_multiple_of(50) {
                peak_queued = peak_queued.max(server.hub.stats().queued_bytes);
            }
        }
    }
    let stats = server.hub.stats();
    eprintln!("stalled subscriber: peak queued {peak_queued} bytes across sessions, now {stats:?}");
    // At most each subscriber's bound (1 MiB of live frames), plus in-flight acks.
    assert!(peak_queued <= 3 << 20, "queued {peak_queued} bytes");

    // The stalled reader wakes up: what was buffered, then `lagged`, then RESOURCE_EXHAUSTED.
    let mut last_seen = 0;
    let lagged = loop {
        match timeout(STEP, stalled.frames.message()).await.unwrap() {
            Ok(Some(frame)) => match frame.frame.unwrap() {
                Frame::Message(message) => {
                    assert_eq!(message.offset, last_seen + 1, "no gap before the lag");
                    last_seen = message.offset;
                }
                Frame::Lagged(lagged) => break lagged,
                _ => {}
            },
            other => panic!("expected lagged before the end, got {other:?}"),
        }
    };
    assert_eq!(lagged.last_offset, last_seen);
    assert!(last_seen < TOTAL as u64, "the policy fired before the end");
    let status = timeout(STEP, async {
        loop {
            match stalled.frames.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended OK instead of RESOURCE_EXHAUSTED"),
                Err(status) => return status,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);

    // Resuming from `lagged.last_offset` loses nothing.
    let mut resumed = Session::open(&server.channel().await, "stalled").await;
    resumed.join("firehose", Some(lagged.last_offset)).await;
    let rest = resumed.messages(TOTAL - last_seen as usize).await;
    let offsets: Vec<u64> = rest.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (last_seen + 1..=TOTAL as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_and_latest_per_key_keep_the_stream_open() {
    for policy in [LagPolicy::DropOldest, LagPolicy::LatestPerKey] {
        const TOTAL: usize = 4000;
        let server = InProcessServer::start_with(|config| {
            config.queue_frames = 32;
            config.lag_policy = policy;
        })
        .await;
        let mut stalled = Session::open(&small_window_channel(&server).await, "slow").await;
        stalled.join("state", None).await;

        // Ten keys, each updated TOTAL/10 times; payload "k<key>:<i>".
        let mut publisher = Session::open(&server.channel().await, "game").await;
        publisher.join("state", None).await;
        let Session {
            commands,
            mut frames,
            ..
        } = publisher;
        let drain = tokio::spawn(async move {
            let mut acks = 0;
            while acks < TOTAL {
                if let Ok(Ok(Some(frame))) = timeout(STEP, frames.message()).await {
                    if let Some(Frame::PublishAck(_)) = frame.frame {
                        acks += 1;
                    }
                } else {
                    panic!("publisher stream failed");
                }
            }
        });
        for i in 0..TOTAL {
            let key = format!("k{}", i % 10);
            commands
                .send(duplex_proto::hub::ClientFrame {
                    command_id: i as u64 + 1,
                    command: Some(Command::Publish(Publish {
                        room: "state".into(),
                        payload: Bytes::from(format!("{key}:{i}:{}", ".".repeat(500))),
                        key,
                        ..Default::default()
                    })),
                })
                .await
                .unwrap();
        }
        timeout(STEP * 3, drain).await.unwrap().unwrap();
        assert!(
            server.hub.stats().queued_frames <= 32 + 8,
            "{:?}",
            server.hub.stats()
        );

        let mut dropped = 0;
        let mut latest: HashMap<String, usize> = HashMap::new();
        let mut last_offset = 0;
        while last_offset < TOTAL as u64 {
            match stalled.next().await {
                Frame::Message(message) => {
                    assert!(message.offset > last_offset, "{policy:?}: order kept");
                    last_offset = message.offset;
                    let text = String::from_utf8(message.payload.to_vec()).unwrap();
                    let mut parts = text.split(':');
                    let key = parts.next().unwrap().to_owned();
                    latest.insert(key, parts.next().unwrap().parse().unwrap());
                }
                Frame::Lagged(lagged) => dropped += lagged.dropped,
                _ => {}
            }
        }
        assert!(
            dropped > 0,
            "{policy:?}: messages were dropped and reported"
        );
        if policy == LagPolicy::LatestPerKey {
            for k in 0..10 {
                let newest = TOTAL - 10 + k;
                assert_eq!(
                    latest[&format!("k{k}")],
                    newest,
                    "latest value of k{k} survives"
                );
            }
        }
        // The stream is still open and working.
        stalled
            .send(Command::Ping(Ping {
                client_time_unix_micros: 7,
            }))
            .await;
        loop {
            if let Frame::Pong(pong) = stalled.next().await {
                assert_eq!(pong.client_time_unix_micros, 7);
                break;
            }
        }
        eprintln!("{policy:?}: {dropped} dropped and reported, stream open");
    }
}

//! duplex on NATS JetStream (`--cluster`): real nats-server processes (see `common::nats`),
//! real `duplex serve --cluster` processes and real clients. Each test starts its own NATS
//! servers (a 3-node cluster takes a few seconds) and shares them among its steps.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::nats::NatsCluster;
use common::session::{Session, SessionSteps as _};
use common::{ChildGuard, STEP, duplex, free_port, spawn_listening};
use duplex_cluster::{Cluster, ClusterConfig};
use duplex_proto::hub::hub_client::HubClient;
use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{HistoryRequest, Message, PublishAck, PublishRequest};
use duplex_store::Store as _;
use tonic::transport::Channel;

fn config(nats: &NatsCluster, replicas: usize) -> ClusterConfig {
    let mut config = ClusterConfig::new(nats.urls().split(',').map(str::to_owned).collect());
    config.replicas = replicas;
    config.startup_timeout = Duration::from_secs(40);
    config
}

#[tokio::test]
async fn a_node_creates_the_room_stream_and_a_second_node_joins_it() {
    let nats = NatsCluster::single();
    let first = Cluster::connect(config(&nats, 1)).await.expect("join");
    let info = first
        .jetstream()
        .get_stream("DUPLEX")
        .await
        .expect("the stream exists")
        .cached_info()
        .clone();
    assert_eq!(info.config.subjects, ["duplex.room.>"]);
    assert!(info.config.allow_direct);
    let republish = info
        .config
        .republish
        .expect("republish to the live subjects");
    assert_eq!(republish.destination, "duplex.live.>");
    // NATS' default max_payload (1 MiB) leaves room for the record around a payload.
    assert!(first.max_payload() < 1 << 20);
    Cluster::connect(config(&nats, 1))
        .await
        .expect("a second node joins the same stream");
}

#[tokio::test]
async fn three_replicas_survive_one_server_killed_and_restarted() {
    let mut nats = NatsCluster::start(3);
    let cluster = Cluster::connect(config(&nats, 3)).await.expect("join");
    let info = cluster
        .jetstream()
        .get_stream("DUPLEX")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    nats.nodes[0].kill();
    nats.nodes[0].restart();
    nats.wait_for_jetstream();
}

#[tokio::test]
async fn a_node_without_nats_fails_to_start_with_what_it_tried() {
    let mut config = ClusterConfig::new(vec!["nats://127.0.0.1:1".into()]);
    config.startup_timeout = Duration::from_millis(200);
    let error = Cluster::connect(config).await.expect_err("no NATS there");
    let message = error.to_string();
    assert!(message.contains("nats://127.0.0.1:1"), "{message}");
}

fn message(room: &str, client_id: &str, text: &str) -> duplex_store::NewMessage {
    duplex_store::NewMessage {
        room: room.into(),
        time_unix_micros: 1_700_000_000_000_000,
        sender: "ada".into(),
        content_type: "text/plain".into(),
        client_id: client_id.into(),
        key: String::new(),
        payload: bytes::Bytes::from(text.to_owned()),
    }
}

#[tokio::test]
async fn the_log_assigns_stream_sequences_dedupes_and_reads_rooms_back() {
    let nats = NatsCluster::single();
    let cluster = Cluster::connect(config(&nats, 1)).await.expect("join");
    let log = duplex_cluster::JetStreamLog::new(cluster.clone());
    let appended = log
        .append(vec![
            message("a.b", "x", "one"),
            message("a.b", "", "two"),
            message("c", "", "other room"),
            // A repeat within the batch: the original's offset.
            message("a.b", "x", "one again"),
            // The same client id in another room is another message.
            message("c", "x", "other x"),
        ])
        .await
        .expect("append");
    let offsets: Vec<(u64, bool)> = appended.iter().map(|a| (a.offset, a.duplicate)).collect();
    assert_eq!(
        offsets,
        [(1, false), (2, false), (3, false), (1, true), (4, false)]
    );
    let read = log.read_after("a.b", 0, 10).await.unwrap();
    let texts: Vec<(u64, &[u8])> = read.iter().map(|m| (m.offset, &m.payload[..])).collect();
    assert_eq!(texts, [(1, &b"one"[..]), (2, &b"two"[..])]);
    assert_eq!(read[0].sender, "ada");
    assert_eq!(read[0].client_id, "x");
    assert_eq!(log.read_after("a.b", 1, 10).await.unwrap().len(), 1);
    assert!(log.read_after("a.b", 2, 10).await.unwrap().is_empty());
    assert_eq!(log.read_after("a.b", 0, 1).await.unwrap().len(), 1);
    // A page over its byte bound still brings its first message, and no more.
    assert_eq!(log.read_page("a.b", 0, 10, 1).await.unwrap().len(), 1);
    let bounds = log.bounds("a.b").await.unwrap().expect("a.b has messages");
    assert_eq!((bounds.earliest, bounds.last), (1, 2));
    assert_eq!(log.bounds("empty").await.unwrap(), None);
    // The room's own last offset (other rooms' messages take the numbers between).
    assert_eq!(log.last_offset("a.b").await.unwrap(), 2);
    assert_eq!(log.last_offset("c").await.unwrap(), 4);
    assert_eq!(log.last_offset("empty").await.unwrap(), 0);
    assert!(log.commits() >= 1);
    assert!(log.counters().expect("counters").available());
}

#[tokio::test]
async fn a_room_emptied_by_retention_reads_empty_and_keeps_the_offset_this_node_saw() {
    let nats = NatsCluster::single();
    let mut config = config(&nats, 1);
    config.max_age = Some(Duration::from_secs(1));
    let cluster = Cluster::connect(config).await.expect("join");
    let log = duplex_cluster::JetStreamLog::new(cluster);
    let offset = log
        .append(vec![message("brief", "", "gone soon")])
        .await
        .unwrap()[0]
        .offset;
    let deadline = Instant::now() + STEP;
    while log.bounds("brief").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "max_age did not remove the message"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The node saw `offset`, but the stream's leader says the room ends before it: an
    // empty answer, at once, not a wait for a replica to catch up.
    let started = Instant::now();
    assert!(log.read_after("brief", 0, 10).await.unwrap().is_empty());
    assert!(started.elapsed() < Duration::from_secs(4));
    // Offsets never go back here: live delivery and a resume still start after `offset`.
    assert_eq!(log.last_offset("brief").await.unwrap(), offset);
}

#[tokio::test]
async fn reads_right_after_a_paused_replica_resumes_reach_what_the_node_saw() {
    // nats-server 2.15 has no `min_last_seq`: a direct get is answered by whichever
    // replica gets it (the one on the client's own server first), caught up or not. A
    // follower that was paused answers from its own state while it catches up; the log
    // must not take that for the room's end.
    let nats = NatsCluster::start(3);
    let admin = Cluster::connect(config(&nats, 3)).await.expect("join");
    let info = admin
        .jetstream()
        .get_stream("DUPLEX")
        .await
        .unwrap()
        .cached_info()
        .clone();
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("a stream leader");
    let follower = nats
        .nodes
        .iter()
        .position(|n| n.name() != leader)
        .expect("a follower");
    let leader = nats
        .nodes
        .iter()
        .position(|n| n.name() == leader)
        .expect("the leader's node");
    // Each client on one server only: the writer's keeps working while the follower is
    // paused; the reader's direct gets go to the follower's replica first.
    let on = |node: usize| {
        let mut config = config(&nats, 3);
        config.servers = vec![nats.nodes[node].url()];
        config
    };
    let writer = Cluster::connect(on(leader)).await.expect("join");
    let reader = Cluster::connect(on(follower)).await.expect("join");
    let reader_log = duplex_cluster::JetStreamLog::new(reader.clone());
    let writer_log = duplex_cluster::JetStreamLog::new(writer.clone());
    let raw_last = || async {
        let reply = reader
            .client()
            .request(
                "$JS.API.DIRECT.GET.DUPLEX",
                serde_json::json!({ "last_by_subj": reader.subjects().room("r") })
                    .to_string()
                    .into(),
            )
            .await
            .expect("direct get");
        reply
            .headers
            .and_then(|h| {
                h.get("Nats-Sequence")
                    .map(|v| v.as_str().parse::<u64>().unwrap())
            })
            .unwrap_or(0)
    };
    let mut stale_raw = 0;
    let mut rounds = 0;
    for round in 0..3 {
        let pid = nats.nodes[follower].pid().unwrap().to_string();
        let signal = |name: &str| {
            std::process::Command::new("kill")
                .args([name, &pid])
                .status()
                .unwrap()
        };
        assert!(signal("-STOP").success());
        let mut last = 0;
        for batch in 0..20 {
            let messages = (0..100)
                .map(|k| message("r", "", &format!("{round}-{batch}-{k}")))
                .collect();
            last = writer_log
                .append(messages)
                .await
                .expect("append")
                .last()
                .unwrap()
                .offset;
        }
        // What the reader's node knows of the room (its feed delivered it, say).
        reader.saw("r", last);
        assert!(signal("-CONT").success());
        for _ in 0..20 {
            rounds += 1;
            if raw_last().await < last {
                stale_raw += 1;
            }
            let read = reader_log
                .read_after("r", last - 1, 10)
                .await
                .expect("read");
            assert_eq!(offsets_of(&read), [last], "round {round}");
            assert_eq!(reader_log.bounds("r").await.unwrap().unwrap().last, last);
        }
    }
    println!("direct gets without the check: {stale_raw} of {rounds} answered short");
}

fn offsets_of(messages: &[duplex_store::StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.offset).collect()
}

// ------------------------------------------------------------------ duplex serve --cluster

/// One `duplex serve --cluster` process.
struct Node {
    process: ChildGuard,
    addr: SocketAddr,
}

impl Node {
    fn start(nats: &NatsCluster, replicas: usize, name: &str, extra: &[&str]) -> Node {
        Node::start_on(&nats.urls(), replicas, name, extra)
    }

    /// A node given only `urls` (it learns the cluster's other servers from them).
    fn start_on(urls: &str, replicas: usize, name: &str, extra: &[&str]) -> Node {
        let mut command = duplex();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--cluster"])
            .arg(urls)
            .args([
                "--nats-replicas",
                &replicas.to_string(),
                "--node-name",
                name,
            ])
            .args(extra);
        let (process, addr, _stdout) = spawn_listening(command);
        Node { process, addr }
    }

    async fn channel(&self) -> Channel {
        common::connect(self.addr).await
    }
}

/// Three nodes named node0..node2 on `nats` with three replicas, and a channel to each.
async fn three_nodes(nats: &NatsCluster) -> (Vec<Node>, Vec<Channel>) {
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(nats, 3, &format!("node{i}"), &[]))
        .collect();
    let mut channels = Vec::new();
    for node in &nodes {
        channels.push(node.channel().await);
    }
    (nodes, channels)
}

impl Node {
    fn kill(&mut self) {
        self.process.signal("KILL");
        self.process.wait_for_exit(STEP);
    }
}

async fn publish(
    channel: &Channel,
    room: &str,
    text: &str,
    id: &str,
) -> Result<PublishAck, tonic::Status> {
    HubClient::new(channel.clone())
        .publish(PublishRequest {
            room: room.into(),
            payload: text.as_bytes().to_vec().into(),
            client_message_id: id.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every retained message of `room`, by pages.
async fn history(channel: &Channel, room: &str) -> Vec<Message> {
    let mut client = HubClient::new(channel.clone());
    let mut after = 0;
    let mut all = Vec::new();
    for _ in 0..1000 {
        let page = client
            .history(HistoryRequest {
                room: room.into(),
                after_offset: after,
                limit: 0,
            })
            .await
            .expect("history")
            .into_inner();
        all.extend(page.messages);
        after = page.next_after_offset;
        if !page.more {
            return all;
        }
    }
    panic!("history of {room} did not end");
}

/// The next `count` messages of a session, or what it got before its stream ended.
async fn collect(session: &mut Session, count: usize) -> Vec<Message> {
    let mut messages = Vec::new();
    while messages.len() < count {
        match tokio::time::timeout(STEP, session.frames.message()).await {
            Ok(Ok(Some(frame))) => {
                if let Some(Frame::Message(message)) = frame.frame {
                    messages.push(message);
                }
            }
            Ok(_) => break,
            Err(_) => panic!("no frame within {STEP:?} after {} messages", messages.len()),
        }
    }
    messages
}

fn text(message: &Message) -> String {
    String::from_utf8_lossy(&message.payload).into_owned()
}

fn offsets(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.offset).collect()
}

fn assert_strictly_increasing(messages: &[Message]) {
    assert!(
        messages.windows(2).all(|w| w[0].offset < w[1].offset),
        "offsets not strictly increasing: {:?}",
        offsets(messages)
    );
}

/// Publishes `per_node` messages through each channel at once (ids `<tag>-<node>-<k>`).
async fn burst(channels: &[Channel], room: &str, tag: &str, per_node: usize) {
    let mut tasks = Vec::new();
    for (index, channel) in channels.iter().enumerate() {
        let channel = channel.clone();
        let room = room.to_owned();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            for k in 0..per_node {
                let id = format!("{tag}-{index}-{k}");
                publish(&channel, &room, &id, &id).await.expect("publish");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn nodes_share_one_order_per_room_and_resume_elsewhere_without_gap_or_duplicate() {
    let nats = NatsCluster::start(3);
    let (mut nodes, channels) = three_nodes(&nats).await;
    let room = "chat.one";
    let mut sessions = Vec::new();
    for (i, channel) in channels.iter().enumerate() {
        let mut session = Session::open(channel, &format!("reader{i}")).await;
        session.join(room, Some(0)).await;
        sessions.push(session);
    }

    // Publishers on every node at once: every node's readers see one order.
    burst(&channels, room, "first", 20).await;
    let mut seen = Vec::new();
    for session in &mut sessions {
        let messages = collect(session, 60).await;
        assert_eq!(messages.len(), 60);
        assert_strictly_increasing(&messages);
        seen.push(messages);
    }
    assert_eq!(offsets(&seen[0]), offsets(&seen[1]));
    assert_eq!(offsets(&seen[0]), offsets(&seen[2]));
    let texts = |m: &[Message]| m.iter().map(text).collect::<Vec<_>>();
    assert_eq!(texts(&seen[0]), texts(&seen[1]));
    assert_eq!(texts(&seen[0]), texts(&seen[2]));

    // Node 0's reader goes away; it resumes on node 2 while publishers are busy.
    let resume_after = seen[0].last().unwrap().offset;
    drop(sessions.remove(0));
    let publishing = {
        let channels = channels.clone();
        tokio::spawn(async move { burst(&channels, room, "second", 20).await })
    };
    let mut resumed = Session::open(&channels[2], "reader0-again").await;
    resumed.join(room, Some(resume_after)).await;
    let after_resume = collect(&mut resumed, 60).await;
    publishing.await.unwrap();
    let reference = collect(&mut sessions[0], 60).await;
    assert_eq!(offsets(&after_resume), offsets(&reference));
    assert_eq!(texts(&after_resume), texts(&reference));
    assert!(after_resume[0].offset > resume_after);

    // A publish whose node dies is retried on another node: stored once.
    let first = publish(&channels[0], room, "retried", "retry-1")
        .await
        .expect("publish on node 0");
    nodes[0].kill();
    let retry = publish(&channels[1], room, "retried", "retry-1")
        .await
        .expect("retry on node 1");
    assert!(retry.duplicate);
    assert_eq!(retry.offset, first.offset);
    let stored = history(&channels[1], room).await;
    assert_eq!(
        stored
            .iter()
            .filter(|m| m.client_message_id == "retry-1")
            .count(),
        1
    );
    assert_eq!(stored.len(), 121);
}

/// What a run of acked publishes left in a room: acked ids missing from its history, and
/// ids stored more than once.
fn tally(acked: &HashMap<String, u64>, stored: &[Message]) -> (usize, usize) {
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for message in stored {
        *copies
            .entry(message.client_message_id.as_str())
            .or_default() += 1;
    }
    let lost = acked
        .iter()
        .filter(|(id, offset)| {
            !stored
                .iter()
                .any(|m| m.client_message_id == **id && m.offset == **offset)
        })
        .count();
    let duplicated = copies.values().filter(|&&n| n > 1).count();
    (lost, duplicated)
}

/// Publishes `count` messages (ids `<tag>-<k>`) one after another, each retried with its
/// id until acked, through the first channel that works; returns id → acked offset and
/// how many attempts failed.
async fn publish_until_acked(
    channels: Vec<Channel>,
    room: String,
    tag: String,
    count: usize,
    acked_so_far: tokio::sync::watch::Sender<usize>,
) -> (HashMap<String, u64>, usize) {
    let mut acked = HashMap::new();
    let mut failures = 0;
    let mut current = 0;
    for k in 0..count {
        let id = format!("{tag}-{k}");
        let deadline = Instant::now() + 3 * STEP;
        loop {
            match publish(&channels[current], &room, &id, &id).await {
                Ok(ack) => {
                    acked.insert(id, ack.offset);
                    acked_so_far.send_replace(acked.len());
                    break;
                }
                Err(status) => {
                    failures += 1;
                    assert!(
                        Instant::now() < deadline,
                        "{id} not acked within {:?}: {status:?}",
                        3 * STEP
                    );
                    // The node may be gone: the next one.
                    current = (current + 1) % channels.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    (acked, failures)
}

/// Reads a session until it has seen every offset in `want` (or panics); when its stream
/// ends (its node died), resumes on `fallback` after the last offset it saw.
async fn read_all_resuming(
    mut session: Session,
    fallback: &Channel,
    room: &str,
    want: usize,
) -> (Vec<Message>, usize) {
    let mut seen: Vec<Message> = Vec::new();
    let mut resumes = 0;
    let deadline = Instant::now() + 6 * STEP;
    while seen.len() < want {
        assert!(Instant::now() < deadline, "saw {} of {want}", seen.len());
        let more = collect(&mut session, want - seen.len()).await;
        let ended = more.len() < want - seen.len();
        seen.extend(more);
        if ended {
            resumes += 1;
            session = Session::open(fallback, "resumed").await;
            let after = seen.last().map_or(0, |m| m.offset);
            session.join(room, Some(after)).await;
        }
    }
    (seen, resumes)
}

#[tokio::test]
async fn a_duplex_node_killed_mid_burst_loses_and_duplicates_no_acked_message() {
    let nats = NatsCluster::start(3);
    let (mut nodes, channels) = three_nodes(&nats).await;
    let room = "burst";
    // A reader on the node that dies, and one on a node that stays.
    let mut doomed_reader = Session::open(&channels[0], "doomed").await;
    doomed_reader.join(room, Some(0)).await;
    let mut steady_reader = Session::open(&channels[2], "steady").await;
    steady_reader.join(room, Some(0)).await;

    let (progress, mut acked_so_far) = tokio::sync::watch::channel(0);
    const PUBLISHERS: usize = 4;
    const EACH: usize = 60;
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        // Each publisher starts on node 0, then moves on when it dies.
        let channels = vec![channels[0].clone(), channels[1].clone()];
        publishers.push(tokio::spawn(publish_until_acked(
            channels,
            room.into(),
            format!("p{p}"),
            EACH,
            progress.clone(),
        )));
    }
    let total = PUBLISHERS * EACH;
    // Mid-burst: each publisher is some way in.
    tokio::time::timeout(3 * STEP, acked_so_far.wait_for(|&n| n >= 20))
        .await
        .expect("publishes acked")
        .unwrap();
    nodes[0].kill();
    let doomed = tokio::spawn({
        let fallback = channels[1].clone();
        async move { read_all_resuming(doomed_reader, &fallback, room, total).await }
    });
    let mut acked = HashMap::new();
    let mut failures = 0;
    for publisher in publishers {
        let (ids, failed) = publisher.await.unwrap();
        acked.extend(ids);
        failures += failed;
    }
    let (doomed_seen, resumes) = doomed.await.unwrap();
    let steady_seen = collect(&mut steady_reader, total).await;
    let stored = history(&channels[1], room).await;
    let (lost, duplicated) = tally(&acked, &stored);
    println!(
        "duplex node SIGKILLed mid-burst: acked {} lost {lost} duplicated {duplicated} \
         (failed attempts retried elsewhere: {failures}; reader resumed {resumes}x)",
        acked.len()
    );
    assert_eq!(acked.len(), total);
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(stored.len(), total);
    assert!(
        resumes >= 1,
        "the doomed reader's stream ended with its node"
    );
    // Both readers saw exactly the stored log, in its order.
    assert_eq!(offsets(&doomed_seen), offsets(&stored));
    assert_eq!(offsets(&steady_seen), offsets(&stored));
}

#[tokio::test]
async fn nats_servers_killed_and_restarted_lose_no_acked_message() {
    let mut nats = NatsCluster::start(3);
    // The reader's node is on the NATS server killed first, so live messages published
    // while it reconnects elsewhere never reach it over core NATS: its feed must read
    // them back. The writer's node is on the other two.
    let writer_urls = format!("{},{}", nats.nodes[1].url(), nats.nodes[2].url());
    let nodes = [
        Node::start_on(&writer_urls, 3, "writer", &[]),
        Node::start_on(&nats.nodes[0].url(), 3, "reader", &[]),
    ];
    let writer = nodes[0].channel().await;
    let reader_channel = nodes[1].channel().await;
    let room = "outage";
    let mut reader = Session::open(&reader_channel, "reader").await;
    reader.join(room, Some(0)).await;

    // One NATS server of three SIGKILLed mid-run, then restarted: the publisher may see
    // a failure or two while its node reconnects, retries with the same id, loses nothing.
    let (progress, mut acked_so_far) = tokio::sync::watch::channel(0);
    let run = tokio::spawn(publish_until_acked(
        vec![writer.clone()],
        room.into(),
        "one-down".into(),
        150,
        progress,
    ));
    tokio::time::timeout(3 * STEP, acked_so_far.wait_for(|&n| n >= 30))
        .await
        .expect("publishes acked")
        .unwrap();
    nats.nodes[0].kill();
    tokio::time::timeout(3 * STEP, acked_so_far.wait_for(|&n| n >= 90))
        .await
        .expect("publishes acked with one NATS server down")
        .unwrap();
    nats.nodes[0].restart();
    let (mut acked, mut failures) = run.await.unwrap();

    // All three down: publishes fail with UNAVAILABLE, clearly.
    for node in &mut nats.nodes {
        node.kill();
    }
    let mut refused = None;
    for attempt in 0..20 {
        match publish(
            &writer,
            room,
            "during the outage",
            &format!("outage-{attempt}"),
        )
        .await
        {
            Err(status) => {
                refused = Some(status);
                break;
            }
            // The node may not have noticed yet; such an ack came from JetStream.
            Ok(ack) => {
                acked.insert(format!("outage-{attempt}"), ack.offset);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let refused = refused.expect("a publish fails while every NATS server is down");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("NATS"), "{refused:?}");
    // Sessions are told, and stay open (messages that arrive meanwhile are kept).
    let mut seen = Vec::new();
    let told = tokio::time::timeout(STEP, async {
        loop {
            match reader.frames.message().await {
                Ok(Some(frame)) => match frame.frame {
                    Some(Frame::Message(message)) => seen.push(message),
                    Some(Frame::Error(error)) if error.command_id == 0 => return error,
                    _ => {}
                },
                other => panic!("the reader's session ended: {other:?}"),
            }
        }
    })
    .await
    .expect("sessions are told that NATS is gone");
    assert_eq!(told.code, duplex_proto::hub::Code::Unavailable as i32);
    assert!(told.message.contains("NATS"), "{told:?}");
    // The node reports it: health NOT_SERVING while NATS is gone.
    let health = tonic_health::pb::health_client::HealthClient::new(writer.clone());
    let serving = |mut health: tonic_health::pb::health_client::HealthClient<Channel>| async move {
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "duplex.v1.Hub".into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .ok()
    };
    let deadline = Instant::now() + STEP;
    while serving(health.clone()).await != Some(2) {
        assert!(
            Instant::now() < deadline,
            "health still SERVING without NATS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back: publishes succeed again (after the servers elect leaders) with no lost ack.
    for node in &mut nats.nodes {
        node.restart();
    }
    nats.wait_for_jetstream();
    let (progress, _) = tokio::sync::watch::channel(0);
    let (after, failed) = publish_until_acked(
        vec![writer.clone()],
        room.into(),
        "after-restart".into(),
        30,
        progress,
    )
    .await;
    acked.extend(after);
    failures += failed;
    let deadline = Instant::now() + STEP;
    while serving(health.clone()).await != Some(1) {
        assert!(
            Instant::now() < deadline,
            "health not SERVING with NATS back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stored = history(&reader_channel, room).await;
    let (lost, duplicated) = tally(&acked, &stored);
    println!(
        "NATS server SIGKILLed and restarted, then all three: acked {} lost {lost} \
         duplicated {duplicated} (failed attempts, retried: {failures})",
        acked.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
    // Nothing else was stored, but maybe the refused outage publish: one sent just before
    // the servers died may be stored without its ack reaching the node.
    assert!(
        stored
            .iter()
            .all(|m| acked.contains_key(&m.client_message_id)
                || m.client_message_id.starts_with("outage-")),
        "unexpected messages stored"
    );
    // The reader on the other node got everything, in order, once: its feed read back
    // what was published while its node was away from NATS.
    let rest = stored.len() - seen.len();
    seen.extend(collect(&mut reader, rest).await);
    assert_eq!(offsets(&seen), offsets(&stored));
}

#[tokio::test]
async fn room_names_with_every_special_character_round_trip_and_oversized_payloads_stop_at_the_node()
 {
    let nats = NatsCluster::single();
    let node = Node::start(&nats, 1, "solo", &[]);
    let channel = node.channel().await;
    let names = [
        "a.b",
        ".a",
        "a.",
        "a..b",
        "a:b",
        "::",
        "-_-",
        "A.b:c-d_e.9",
        &"x".repeat(128),
        &".".repeat(128),
    ];
    let mut session = Session::open(&channel, "names").await;
    for name in names {
        session.join(name, Some(0)).await;
    }
    for name in names {
        publish(&channel, name, &format!("to {name}"), "")
            .await
            .unwrap_or_else(|e| panic!("publish to {name:?}: {e:?}"));
    }
    let mut received = collect(&mut session, names.len()).await;
    received.sort_by_key(|m| m.offset);
    for (name, message) in names.iter().zip(&received) {
        assert_eq!(message.room, *name);
        assert_eq!(text(message), format!("to {name}"));
        let stored = history(&channel, name).await;
        assert_eq!(stored.len(), 1, "{name:?}");
        assert_eq!(stored[0].room, *name);
    }

    // A room never used, in a stream holding other rooms' messages: a join replaying its
    // (empty) history, by offset or by backlog, is served, then live.
    let fresh = session.join("fresh", Some(0)).await;
    assert_eq!((fresh.earliest_offset, fresh.last_offset), (0, 0));
    session
        .send(duplex_proto::hub::client_frame::Command::Join(
            duplex_proto::hub::Join {
                room: "fresh.backlog".into(),
                after_offset: None,
                hidden: false,
                replay_last: 20,
            },
        ))
        .await;
    match session.next_non_presence().await {
        Frame::Joined(joined) => assert_eq!(joined.room, "fresh.backlog"),
        other => panic!("expected joined, got {other:?}"),
    }
    publish(&channel, "fresh.backlog", "first", "")
        .await
        .unwrap();
    publish(&channel, "fresh", "first", "").await.unwrap();
    let firsts = collect(&mut session, 2).await;
    assert_eq!(
        firsts.iter().map(text).collect::<Vec<_>>(),
        ["first", "first"]
    );

    // The largest payload the node takes fits in NATS with its record; one byte more is
    // refused by the node, and NATS never sees it.
    let cluster = Cluster::connect(config(&nats, 1)).await.expect("join");
    let max = cluster.max_payload();
    let stream_messages = || async {
        cluster
            .jetstream()
            .get_stream("DUPLEX")
            .await
            .unwrap()
            .cached_info()
            .state
            .messages
    };
    let before = stream_messages().await;
    let refused = publish(&channel, "big", &"y".repeat(max + 1), "")
        .await
        .expect_err("over the cluster's limit");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert_eq!(stream_messages().await, before);
    publish(&channel, "big", &"y".repeat(max), "")
        .await
        .expect("the largest payload is stored");
    assert_eq!(stream_messages().await, before + 1);
}

#[tokio::test]
async fn scripts_cluster_runs_three_nodes_that_share_rooms_and_stops_them_all() {
    use std::io::BufRead as _;
    let ports = |n: usize| {
        (0..n)
            .map(|_| free_port().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(common::repo_root().join("scripts/cluster"));
    command
        .arg("--dir")
        .arg(dir.path())
        .args(["--nats-ports", &ports(3), "--route-ports", &ports(3)])
        .args(["--grpc-ports", &ports(3), "--web-ports", &ports(3)])
        .env("DUPLEX_BIN", env!("CARGO_BIN_EXE_duplex"))
        .env("DUPLEX_NATS_SERVER", common::nats::nats_server_bin())
        .stdout(std::process::Stdio::piped());
    let mut script = ChildGuard(command.spawn().expect("run scripts/cluster"));
    let stdout = std::io::BufReader::new(script.0.stdout.take().unwrap());
    let lines = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in stdout.lines() {
            let line = line.unwrap();
            let ready = line.starts_with("cluster ready");
            lines.push(line);
            if ready {
                break;
            }
        }
        lines
    });
    let deadline = Instant::now() + 3 * STEP;
    while !lines.is_finished() {
        assert!(
            Instant::now() < deadline,
            "scripts/cluster not ready in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = lines.join().unwrap();
    let grpc: Vec<SocketAddr> = lines
        .iter()
        .filter_map(|line| line.split(" grpc ").nth(1))
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(grpc.len(), 3, "{lines:?}");
    assert!(lines.iter().any(|l| l.contains(" web http://127.0.0.1:")));

    // Published on node 1, read on node 3.
    let first = common::connect(grpc[0]).await;
    let third = common::connect(grpc[2]).await;
    let mut reader = Session::open(&third, "reader").await;
    reader.join("across", Some(0)).await;
    publish(&first, "across", "from node 1", "")
        .await
        .expect("publish on node 1");
    let got = collect(&mut reader, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(text(&got[0]), "from node 1");

    // Ctrl-C (or TERM) stops every process the script started.
    script.signal("INT");
    assert!(
        script.wait_for_exit(STEP).is_some(),
        "scripts/cluster exits"
    );
    for addr in grpc {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still listening"
        );
    }
}

/// A message on a room's subject that duplex did not write (a foreign publisher, another
/// version's record) is skipped by live delivery, resume and history alike, instead of
/// stopping the room on every node.
#[tokio::test]
async fn a_message_duplex_cannot_read_is_skipped_and_the_room_goes_on() {
    let nats = NatsCluster::single();
    let node = Node::start(&nats, 1, "node0", &[]);
    let channel = node.channel().await;
    let room = "mixed";
    let mut reader = Session::open(&channel, "reader").await;
    reader.join(room, None).await;
    publish(&channel, room, "before", "")
        .await
        .expect("publish");

    let foreign = async_nats::connect(nats.urls()).await.unwrap();
    let subject = duplex_cluster::Subjects::new("duplex").room(room);
    let stored = async_nats::jetstream::new(foreign)
        .publish(subject, "not a duplex record".into())
        .await
        .unwrap()
        .await
        .expect("JetStream stores it");

    let after = publish(&channel, room, "after", "")
        .await
        .expect("publish")
        .offset;
    assert!(after > stored.sequence);
    let live = reader.messages(2).await;
    assert_eq!(common::session::texts(&live), ["before", "after"]);

    let mut resumer = Session::open(&channel, "resumer").await;
    resumer.join(room, Some(0)).await;
    assert_eq!(
        common::session::texts(&resumer.messages(2).await),
        ["before", "after"]
    );
    let texts: Vec<String> = history(&channel, room)
        .await
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(texts, ["before", "after"]);
}

/// A room's first offset is a stream sequence, above 1 when other rooms came first: a
/// resume "from the start" (offset 0) replays the room, not a "too old" error.
#[tokio::test]
async fn a_resume_from_the_start_replays_a_room_whose_first_offset_is_not_one() {
    let nats = NatsCluster::single();
    let node = Node::start(&nats, 1, "node0", &[]);
    let channel = node.channel().await;
    publish(&channel, "earlier", "first of the stream", "")
        .await
        .expect("publish");
    let first = publish(&channel, "later", "hello", "")
        .await
        .expect("publish")
        .offset;
    assert!(first > 1);
    let mut reader = Session::open(&channel, "reader").await;
    let joined = reader.join("later", Some(0)).await;
    assert_eq!(joined.earliest_offset, first);
    assert_eq!(common::session::texts(&reader.messages(1).await), ["hello"]);
}

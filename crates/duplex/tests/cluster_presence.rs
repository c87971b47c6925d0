//! Presence across nodes (`KvPresence`): several hubs in this process, each a "node" with
//! its own NATS connection and node name, on one real nats-server (see `common::nats`).
//! Each hub has its own memory store: only presence is shared, through the KV bucket.
//! Last, the same through real `duplex serve --cluster` processes and `Hub.Connect`
//! sessions, one of them SIGKILLed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::nats::NatsCluster;
use common::session::{Session, SessionSteps as _};
use common::{ChildGuard, STEP, duplex, spawn_listening};
use duplex_cluster::{Cluster, ClusterConfig, KvPresence};
use duplex_hub::{Hub, HubConfig, Identity, LocalFeed, Outbound, SessionOrigin, Subscription};
use duplex_proto::hub::presence_event::Kind;
use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{Joined, Member, ServerFrame};
use duplex_store::MemoryStore;
use futures::StreamExt as _;
use prost::Message as _;

/// Heartbeat of the test nodes: entries live three of these (3 s) without a refresh.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A room name with the characters that break subjects and KV keys.
const ROOM: &str = "lobby:1.x-_";

/// A node's cluster settings: its name, the test heartbeat.
fn config(nats: &NatsCluster, node: &str) -> ClusterConfig {
    let mut config = ClusterConfig::new(nats.urls().split(',').map(str::to_owned).collect());
    config.node = node.to_owned();
    config.presence_heartbeat = HEARTBEAT;
    config.startup_timeout = Duration::from_secs(40);
    config
}

/// A hub whose presence is the cluster's, listing `max_listed` members per room.
async fn node(nats: &NatsCluster, name: &str, max_listed: usize) -> Hub {
    let cluster = Cluster::connect(config(nats, name))
        .await
        .expect("join NATS");
    let presence = KvPresence::start(&cluster, max_listed)
        .await
        .expect("presence bucket");
    Hub::with_seams(
        Arc::new(MemoryStore::new(Default::default())),
        Arc::new(LocalFeed),
        Arc::new(presence),
        HubConfig {
            max_presence_listed: max_listed,
            ..HubConfig::default()
        },
    )
}

/// The next frame of `outbound`, decoded; fails the test after a step.
async fn next_frame(outbound: &mut Outbound) -> Frame {
    let bytes = tokio::time::timeout(STEP, outbound.next())
        .await
        .expect("a frame within the step")
        .expect("the stream is open")
        .expect("not an error");
    ServerFrame::decode(&bytes[..]).unwrap().frame.unwrap()
}

/// `name` subscribes to `room` on `hub` (visible, or hidden when `name` is empty); returns
/// its stream and its `joined`.
async fn join(hub: &Hub, name: &str, room: &str) -> (Outbound, Joined) {
    let identity = Identity::anonymous(if name.is_empty() { "hidden" } else { name });
    let subscription = Subscription {
        room: room.to_owned(),
        after: None,
        name: name.to_owned(),
    };
    let mut outbound = hub
        .subscribe(identity, subscription, SessionOrigin::default())
        .await
        .expect("join");
    let Frame::Joined(joined) = next_frame(&mut outbound).await else {
        panic!("expected joined");
    };
    (outbound, joined)
}

/// The presence event `frame` is: the member and whether it joined.
fn presence_event(frame: Frame) -> (Member, bool) {
    let Frame::Presence(event) = frame else {
        panic!("expected a presence event, got {frame:?}");
    };
    (event.member.unwrap(), event.kind == Kind::Joined as i32)
}

fn names(members: &[Member]) -> Vec<&str> {
    let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    names
}

/// Waits until `hub` lists `listed` members and counts `unlisted` in `room` (bounded).
async fn wait_for_presence(hub: &Hub, room: &str, listed: usize, unlisted: u64) {
    let start = std::time::Instant::now();
    loop {
        let presence = hub
            .presence(&Identity::anonymous("probe"), room)
            .await
            .unwrap();
        if (presence.members.len(), presence.unlisted) == (listed, unlisted) {
            return;
        }
        assert!(
            start.elapsed() < STEP,
            "expected {listed} listed and {unlisted} counted in {room}, have {presence:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the bucket holds `count` member entries of `room` (bounded): a join is
/// written behind the session's back, so a joiner on another node may come before it.
async fn wait_for_entries(nats: &NatsCluster, room: &str, count: usize) {
    let client = async_nats::connect(nats.urls().split(',').next().unwrap())
        .await
        .unwrap();
    let bucket = async_nats::jetstream::new(client)
        .get_key_value(duplex_cluster::bucket_name("duplex"))
        .await
        .unwrap();
    let prefix = format!("{}.", duplex_cluster::subject::room_token(room));
    let start = std::time::Instant::now();
    loop {
        let keys: Vec<String> = bucket
            .keys()
            .await
            .unwrap()
            .filter_map(|key| std::future::ready(key.ok()))
            .collect()
            .await;
        let have = keys.iter().filter(|key| key.starts_with(&prefix)).count();
        if have == count {
            return;
        }
        assert!(
            start.elapsed() < STEP,
            "expected {count} entries of {room}, have {have}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts nothing more arrives on `outbound` for a moment.
async fn assert_quiet(outbound: &mut Outbound) {
    let more = tokio::time::timeout(Duration::from_millis(300), outbound.next()).await;
    assert!(more.is_err(), "no other frame: {more:?}");
}

#[tokio::test]
async fn a_member_on_one_node_is_listed_on_another_and_its_join_and_leave_reach_it() {
    let nats = NatsCluster::single();
    let a = node(&nats, "node-a", 1000).await;
    let c = node(&nats, "node-c", 1000).await;

    let (mut carol, joined) = join(&c, "carol", ROOM).await;
    assert!(joined.members.is_empty(), "{joined:?}");
    wait_for_entries(&nats, ROOM, 1).await;

    // Alice joins on A: her `joined` lists carol (from C), carol sees her join.
    let (mut alice, joined) = join(&a, "alice", ROOM).await;
    assert_eq!(names(&joined.members), ["carol"]);
    assert!(
        joined.members[0].session_id.starts_with("node-c/"),
        "a member of another node carries its node: {:?}",
        joined.members[0]
    );
    let (member, joined_event) = presence_event(next_frame(&mut carol).await);
    assert!(joined_event);
    assert_eq!(member.name, "alice");
    assert!(member.session_id.starts_with("node-a/"), "{member:?}");

    // Dave joins on C later: his `joined` lists alice and carol.
    let (mut dave, joined) = join(&c, "dave", ROOM).await;
    assert_eq!(names(&joined.members), ["alice", "carol"]);
    assert_eq!(
        presence_event(next_frame(&mut carol).await),
        (joined_member(&c, "dave").await, true)
    );
    let (member, joined_event) = presence_event(next_frame(&mut alice).await);
    assert_eq!((member.name.as_str(), joined_event), ("dave", true));
    // A node where nobody joined the room lists its members too (the unary Presence call).
    let b = node(&nats, "node-b", 1000).await;
    let listed = b
        .presence(&Identity::anonymous("probe"), ROOM)
        .await
        .unwrap();
    assert_eq!(names(&listed.members), ["alice", "carol", "dave"]);

    // Alice leaves A: both C sessions see her go, and C no longer lists her.
    drop(alice);
    for outbound in [&mut carol, &mut dave] {
        let (member, joined_event) = presence_event(next_frame(outbound).await);
        assert_eq!((member.name.as_str(), joined_event), ("alice", false));
    }
    let listed = c
        .presence(&Identity::anonymous("probe"), ROOM)
        .await
        .unwrap();
    assert_eq!(names(&listed.members), ["carol", "dave"]);
    assert_quiet(&mut carol).await;
    // A member of A the heartbeat keeps refreshing does not leave: over one TTL no event.
    let (_bob, _) = join(&a, "bob", ROOM).await;
    let (member, _) = presence_event(next_frame(&mut carol).await);
    assert_eq!(member.name, "bob");
    let quiet = tokio::time::timeout(4 * HEARTBEAT, carol.next()).await;
    assert!(quiet.is_err(), "a refreshed member stays: {quiet:?}");
}

/// The member `name` of `hub`'s room as listed there (a local member: its own session id).
async fn joined_member(hub: &Hub, name: &str) -> Member {
    let listed = hub
        .presence(&Identity::anonymous("probe"), ROOM)
        .await
        .unwrap();
    listed
        .members
        .into_iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} is listed"))
}

/// A node `name` on a tokio runtime of its own, so that it can die at once (no leave, no
/// delete: shut its runtime down), with one member `member` joined to [`ROOM`]; returns
/// the runtime and the member's `joined`.
async fn node_on_own_runtime(
    nats: &NatsCluster,
    name: &str,
    member: &str,
) -> (tokio::runtime::Runtime, Joined) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
    let config = config(nats, name);
    let member = member.to_owned();
    runtime.spawn(async move {
        let cluster = Cluster::connect(config).await.expect("join NATS");
        let presence = KvPresence::start(&cluster, 1000).await.expect("bucket");
        let hub = Hub::with_seams(
            Arc::new(MemoryStore::new(Default::default())),
            Arc::new(LocalFeed),
            Arc::new(presence),
            HubConfig::default(),
        );
        let (outbound, joined) = join(&hub, &member, ROOM).await;
        let _ = joined_tx.send(joined);
        // Holds the node until its runtime dies.
        let _node = (hub, outbound, cluster);
        std::future::pending::<()>().await;
    });
    let joined = tokio::time::timeout(STEP, joined_rx)
        .await
        .expect("joined within the step")
        .unwrap();
    (runtime, joined)
}

#[tokio::test]
async fn a_node_that_dies_has_its_members_leave_everywhere_within_the_ttl() {
    let nats = NatsCluster::single();
    let c = node(&nats, "node-c", 1000).await;
    let (mut carol, _) = join(&c, "carol", ROOM).await;
    wait_for_entries(&nats, ROOM, 1).await;

    let (node_a, joined) = node_on_own_runtime(&nats, "node-a", "alice").await;
    assert_eq!(names(&joined.members), ["carol"]);
    let (member, joined_event) = presence_event(next_frame(&mut carol).await);
    assert_eq!((member.name.as_str(), joined_event), ("alice", true));

    // Watch the bucket as an operator would, to see how alice's entry goes.
    let client = async_nats::connect(nats.urls().split(',').next().unwrap())
        .await
        .unwrap();
    let bucket = async_nats::jetstream::new(client)
        .get_key_value(duplex_cluster::bucket_name("duplex"))
        .await
        .unwrap();
    let room_token = duplex_cluster::subject::room_token(ROOM);
    let mut entries = bucket.watch(format!("{room_token}.>")).await.unwrap();

    let killed = std::time::Instant::now();
    node_a.shutdown_background();

    // Alice leaves carol's room once her entry ages out: within the TTL of her last
    // refresh (plus the server's expiry check), never before the kill.
    let (member, joined_event) = presence_event(next_frame(&mut carol).await);
    assert_eq!((member.name.as_str(), joined_event), ("alice", false));
    let ttl = 3 * HEARTBEAT;
    eprintln!(
        "alice left {:?} after the kill (TTL {ttl:?})",
        killed.elapsed()
    );
    assert!(
        c.presence(&Identity::anonymous("probe"), ROOM)
            .await
            .unwrap()
            .members
            .iter()
            .all(|m| m.name != "alice")
    );

    // What carol saw was the server's MaxAge marker (a purge), not a delete by node A.
    let node_a_token = duplex_cluster::subject::room_token("node-a");
    let gone = tokio::time::timeout(STEP, async {
        while let Some(entry) = entries.next().await {
            let entry = entry.unwrap();
            if entry.key.contains(&node_a_token)
                && entry.operation != async_nats::jetstream::kv::Operation::Put
            {
                return entry.operation;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("alice's entry went within the step");
    assert_eq!(gone, async_nats::jetstream::kv::Operation::Purge);
    assert_quiet(&mut carol).await;
}

/// A node restarted under the same name within a TTL numbers its sessions from 1 again, so
/// its first member writes the entry of the dead node's first member: the other nodes
/// show the old member leaving and the new one joining, not the old name forever.
#[tokio::test]
async fn a_node_restarted_under_its_name_replaces_its_dead_members() {
    let nats = NatsCluster::single();
    let c = node(&nats, "node-c", 1000).await;
    let (mut carol, _) = join(&c, "carol", ROOM).await;
    wait_for_entries(&nats, ROOM, 1).await;

    let (first, _) = node_on_own_runtime(&nats, "node-a", "alice").await;
    let (alice, joined_event) = presence_event(next_frame(&mut carol).await);
    assert_eq!((alice.name.as_str(), joined_event), ("alice", true));
    first.shutdown_background();

    let (second, joined) = node_on_own_runtime(&nats, "node-a", "dave").await;
    // Alice's entry has not aged out yet, so the new node's mirror lists nobody of its own
    // name (skipped as its own keys) but carol.
    assert_eq!(names(&joined.members), ["carol"]);
    let (gone, joined_event) = presence_event(next_frame(&mut carol).await);
    assert_eq!((gone, joined_event), (alice.clone(), false));
    let (dave, joined_event) = presence_event(next_frame(&mut carol).await);
    assert_eq!((dave.name.as_str(), joined_event), ("dave", true));
    assert_eq!(dave.session_id, alice.session_id, "the same entry, reused");
    wait_for_presence(&c, ROOM, 2, 0).await;
    assert_quiet(&mut carol).await;
    second.shutdown_background();
}

#[tokio::test]
async fn members_of_other_nodes_past_the_cap_are_counted_not_listed() {
    let nats = NatsCluster::single();
    let a = node(&nats, "node-a", 1000).await;
    let c = node(&nats, "node-c", 2).await;

    // C follows the room through a hidden session (never listed, never counted).
    let (mut hidden, joined) = join(&c, "", ROOM).await;
    assert!(joined.members.is_empty());
    let mut on_a = Vec::new();
    for name in ["a1", "a2", "a3"] {
        on_a.push(join(&a, name, ROOM).await.0);
    }
    wait_for_presence(&c, ROOM, 2, 1).await;
    // The hidden session saw the two listed joins and nothing of the counted one.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (member, joined_event) = presence_event(next_frame(&mut hidden).await);
        assert!(joined_event);
        seen.push(member);
    }
    assert_quiet(&mut hidden).await;

    // Carol joins on C: two listed, one counted; she is counted herself.
    let (mut carol, joined) = join(&c, "carol", ROOM).await;
    assert_eq!((joined.members.len(), joined.unlisted_members), (2, 1));
    wait_for_presence(&c, ROOM, 2, 2).await;
    assert_quiet(&mut hidden).await;

    // A fourth on A: counted on C, no event.
    on_a.push(join(&a, "a4", ROOM).await.0);
    wait_for_presence(&c, ROOM, 2, 3).await;
    assert_quiet(&mut carol).await;

    // A listed member leaves: its event goes out, and nobody is promoted into the list.
    let listed_name = seen[0].name.clone();
    let index = ["a1", "a2", "a3"]
        .iter()
        .position(|n| *n == listed_name)
        .unwrap();
    drop(on_a.remove(index));
    let (member, joined_event) = presence_event(next_frame(&mut carol).await);
    assert_eq!((member.name, joined_event), (listed_name, false));
    wait_for_presence(&c, ROOM, 1, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_catches_up_after_nats_comes_back() {
    let mut nats = NatsCluster::single();
    let a = node(&nats, "node-a", 1000).await;
    let c = node(&nats, "node-c", 1000).await;
    let (mut carol, _) = join(&c, "carol", ROOM).await;
    wait_for_entries(&nats, ROOM, 1).await;
    // A hidden session keeps the room loaded on A through the outage (loading a room needs
    // NATS; joining a loaded one does not).
    let (_keeper, _) = join(&a, "", ROOM).await;
    let (alice, _) = join(&a, "alice", ROOM).await;
    let (member, joined_event) = presence_event(next_frame(&mut carol).await);
    assert_eq!((member.name.as_str(), joined_event), ("alice", true));

    // NATS goes away; meanwhile alice leaves A and bob joins it: neither can be written.
    tokio::task::block_in_place(|| nats.nodes[0].kill());
    drop(alice);
    wait_for_presence(&a, ROOM, 1, 0).await;
    let (_bob, joined) = join(&a, "bob", ROOM).await;
    assert_eq!(
        names(&joined.members),
        ["carol"],
        "A's mirror still lists carol"
    );
    assert_quiet(&mut carol).await;

    // NATS comes back: A writes what changed, C re-syncs; carol sees both, once each.
    tokio::task::block_in_place(|| {
        nats.nodes[0].restart();
        nats.wait_for_jetstream();
    });
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (member, joined_event) = presence_event(next_frame(&mut carol).await);
        seen.push((member.name, joined_event));
    }
    seen.sort();
    assert_eq!(seen, [("alice".into(), false), ("bob".into(), true)]);
    wait_for_presence(&c, ROOM, 2, 0).await;
    let listed = c
        .presence(&Identity::anonymous("probe"), ROOM)
        .await
        .unwrap();
    assert_eq!(names(&listed.members), ["bob", "carol"]);
    assert_quiet(&mut carol).await;
}

// ------------------------------------------------------------------ duplex serve --cluster

/// A `duplex serve --cluster` node with a 1 s presence heartbeat; returns it and its
/// gRPC address.
fn serve_node(nats: &NatsCluster, name: &str) -> (ChildGuard, std::net::SocketAddr) {
    let mut command = duplex();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--cluster"])
        .arg(nats.urls())
        .args(["--node-name", name, "--presence-heartbeat", "1s"]);
    let (process, addr, _stdout) = spawn_listening(command);
    (process, addr)
}

/// The next presence event of `session`: the member's name and whether it joined.
async fn next_presence(session: &mut Session) -> (String, bool) {
    let (member, joined) = presence_event(session.next().await);
    (member.name, joined)
}

#[tokio::test]
async fn a_member_on_a_killed_node_leaves_every_other_node_within_the_ttl() {
    let nats = NatsCluster::single();
    let (mut node_a, addr_a) = serve_node(&nats, "node-a");
    let (_node_b, addr_b) = serve_node(&nats, "node-b");
    let (_node_c, addr_c) = serve_node(&nats, "node-c");
    let channel_c = common::connect(addr_c).await;

    let mut bob = Session::open(&common::connect(addr_b).await, "bob").await;
    assert!(bob.join(ROOM, None).await.members.is_empty());
    wait_for_entries(&nats, ROOM, 1).await;
    let mut carol = Session::open(&channel_c, "carol").await;
    let joined = carol.join(ROOM, None).await;
    assert_eq!(names(&joined.members), ["bob"]);
    assert_eq!(next_presence(&mut bob).await, ("carol".into(), true));
    wait_for_entries(&nats, ROOM, 2).await;

    // Alice on A is listed with bob and carol, and both see her join.
    let mut alice = Session::open(&common::connect(addr_a).await, "alice").await;
    let joined = alice.join(ROOM, None).await;
    assert_eq!(names(&joined.members), ["bob", "carol"]);
    for session in [&mut bob, &mut carol] {
        assert_eq!(next_presence(session).await, ("alice".into(), true));
    }

    // A dies without a word: alice leaves B and C once her entry ages out.
    let killed = std::time::Instant::now();
    node_a.signal("KILL");
    node_a.wait_for_exit(STEP);
    for session in [&mut bob, &mut carol] {
        assert_eq!(next_presence(session).await, ("alice".into(), false));
    }
    eprintln!(
        "alice left B and C {:?} after node A was killed (TTL 3s)",
        killed.elapsed()
    );
    let listed = duplex_proto::hub::hub_client::HubClient::new(channel_c)
        .presence(duplex_proto::hub::PresenceRequest { room: ROOM.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&listed.members), ["bob", "carol"]);
}

#[test]
fn the_presence_heartbeat_is_a_setting_of_at_least_100ms() {
    let output = duplex()
        .args(["serve", "--presence-heartbeat", "2s", "--print-config"])
        .output()
        .unwrap();
    let config = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        config.contains("presence-heartbeat = \"2s\"  # flag"),
        "{config}"
    );

    let output = duplex()
        .args(["serve", "--presence-heartbeat", "50ms", "--print-config"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("at least 100ms"), "{stderr}");
}

//! duplex on NATS JetStream (`--cluster`): real nats-server processes (see `common::nats`).

mod common;

use std::time::Duration;

use common::nats::NatsCluster;
use duplex_cluster::{Cluster, ClusterConfig};

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

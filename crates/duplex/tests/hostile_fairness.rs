//! Hostile cases where one client tries to take the server from the others (issue 10,
//! items 6 and 7): publishes into cold rooms that once stalled the one sequencer, and
//! publishers that spread over sessions and unary calls to get around the rate limit.
//!
//! Each case runs its own `duplex serve` process on a loopback port, bounds every loop in
//! count and in time, and asserts what a bystander sees (a probe's publish latency, an
//! identity that is not limited) rather than speed.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{STEP, spawn_duplex_serve_durable};
use duplex_proto::hub::PublishRequest;
use duplex_proto::hub::hub_client::HubClient;
use duplex_store::{RedbStore, Retention, Store, StoredMessage};
use tonic::transport::Channel;

async fn hub_client(addr: std::net::SocketAddr) -> HubClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the server");
    HubClient::new(channel).max_decoding_message_size(8 << 20)
}

/// Fills `rooms` of a store in `dir` with `count` messages of `size` bytes each, every one
/// with a client message id (the dedupe window the hub reloads), then closes the store.
async fn fill_cold_rooms(dir: &std::path::Path, rooms: &[String], count: u64, size: usize) {
    let store = RedbStore::open(dir, Retention::default()).expect("open the store");
    let payload = Bytes::from(vec![b'x'; size]);
    for room in rooms {
        let mut offset = 0;
        while offset < count {
            let batch = (offset + 1..=(offset + 256).min(count))
                .map(|offset| StoredMessage {
                    room: room.clone(),
                    offset,
                    time_unix_micros: 1,
                    sender: "filler".into(),
                    content_type: String::new(),
                    client_id: format!("fill-{offset}"),
                    key: String::new(),
                    payload: payload.clone(),
                })
                .collect::<Vec<_>>();
            offset += batch.len() as u64;
            store.append(batch).await.expect("fill the store");
        }
    }
}

/// Issue 10 item 6. Before the fix, a unary publish into a room nobody held made the
/// sequencer reload the room's last 4096 messages, payloads and all, while every other
/// room's publishes waited: with 3 cold rooms of 1024 × 16 KiB, a probe's publish took
/// seconds. Now the load runs in the publisher's own call and reads only the client ids,
/// so the probe is served within a bound far above its normal few milliseconds.
#[tokio::test]
async fn publishes_into_cold_rooms_do_not_stall_other_rooms() {
    const COLD_ROOMS: usize = 3;
    const STORED_PER_ROOM: u64 = 1024;
    const STORED_SIZE: usize = 16 * 1024;
    const ATTACK: Duration = Duration::from_secs(4);
    const PROBE_BOUND: Duration = Duration::from_secs(1);

    let dir = tempfile::tempdir().unwrap();
    let rooms: Vec<String> = (0..COLD_ROOMS).map(|i| format!("cold-{i}")).collect();
    let filling = Instant::now();
    fill_cold_rooms(dir.path(), &rooms, STORED_PER_ROOM, STORED_SIZE).await;
    println!("filled the cold rooms in {:?}", filling.elapsed());
    let (mut server, addr) = spawn_duplex_serve_durable(dir.path(), &[]);

    // One attacker per cold room, each publishing one byte at a time, so each publish
    // finds its room released by the previous one and makes the server load it again.
    let started = Instant::now();
    let attackers: Vec<_> = rooms
        .iter()
        .map(|room| {
            let room = room.clone();
            tokio::spawn(async move {
                let mut client = hub_client(addr).await;
                let mut acked = 0u32;
                while started.elapsed() < ATTACK && acked < 10_000 {
                    let request = PublishRequest {
                        room: room.clone(),
                        payload: Bytes::from_static(b"x"),
                        ..Default::default()
                    };
                    match tokio::time::timeout(STEP, client.publish(request)).await {
                        Ok(Ok(_)) => acked += 1,
                        Ok(Err(status)) => panic!("attacker publish into {room} failed: {status}"),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();

    let mut probe = hub_client(addr).await;
    let mut worst = Duration::ZERO;
    let mut probes = 0u32;
    // Let the attack start before the first probe.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while started.elapsed() < ATTACK && probes < 10_000 {
        let sent = Instant::now();
        let request = PublishRequest {
            room: "probe".into(),
            payload: Bytes::from_static(b"still here?"),
            ..Default::default()
        };
        let ack = tokio::time::timeout(STEP, probe.publish(request))
            .await
            .expect("the probe's publish is answered within STEP")
            .expect("the probe's publish is acked");
        worst = worst.max(sent.elapsed());
        probes += 1;
        assert_eq!(ack.into_inner().offset, u64::from(probes));
    }
    let mut attacker_acks = 0;
    for attacker in attackers {
        attacker_acks += attacker.await.unwrap();
    }
    println!(
        "| {COLD_ROOMS} cold rooms of {STORED_PER_ROOM} × {} KiB, unary publish loops | probe \
         publish < {PROBE_BOUND:?} | worst probe {worst:?} over {probes} probes; {attacker_acks} \
         attacker publishes |",
        STORED_SIZE / 1024
    );
    assert!(
        attacker_acks >= COLD_ROOMS as u32,
        "the attack must have run (each attacker publish acked)"
    );
    assert!(
        worst < PROBE_BOUND,
        "a probe publish took {worst:?} while cold rooms were being loaded (bound {PROBE_BOUND:?})"
    );
    assert!(server.0.try_wait().unwrap().is_none(), "server still runs");
}

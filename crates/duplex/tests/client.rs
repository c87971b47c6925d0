//! The client library and `duplex chat` against a server that dies and comes back:
//! reconnect, resume without gap or duplicate, unacked publishes landing exactly once.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{ChatTerminal, ChildGuard, STEP, duplex, spawn_listening};
use duplex_client::{Client, ClientOptions, Event};
use duplex_proto::hub::HistoryRequest;
use duplex_proto::hub::hub_client::HubClient;
use tokio::time::timeout;

/// `duplex serve` with redb in `dir`, on `listen` (port 0 the first time, then the same port).
fn serve(dir: &std::path::Path, listen: &str) -> (ChildGuard, SocketAddr) {
    let mut command = duplex();
    command
        .args(["serve", "--listen", listen, "--store", "redb", "--data-dir"])
        .arg(dir)
        .args(["--shutdown-grace", "1s"]);
    let (child, addr, _stdout) = spawn_listening(command);
    (child, addr)
}

fn options(addr: SocketAddr, name: &str) -> ClientOptions {
    let mut options = ClientOptions::new(addr.to_string(), name);
    options.initial_backoff = Duration::from_millis(50);
    options.max_backoff = Duration::from_millis(500);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_resumes_across_a_server_crash_without_gap_or_duplicate() {
    const TOTAL: usize = 2000;
    let data = tempfile::tempdir().unwrap();
    let (mut server, addr) = serve(data.path(), "127.0.0.1:0");

    let (reader, mut events) = Client::connect(options(addr, "reader")).await.unwrap();
    reader.join("journal", None).await.unwrap();
    let (writer, writer_events) = Client::connect(options(addr, "writer")).await.unwrap();
    drop(writer_events);
    writer.join("journal", None).await.unwrap();

    // Publish with 32 in flight; the server is killed after the first 500 acks.
    let publishing = tokio::spawn(async move {
        let mut acks = Vec::new();
        let mut in_flight = tokio::task::JoinSet::new();
        for i in 0..TOTAL {
            let writer = writer.clone();
            in_flight.spawn(async move {
                let offset = writer
                    .publish("journal", Bytes::from(format!("entry {i}")), "text/plain")
                    .await
                    .expect("every publish lands, across the crash");
                (i, offset)
            });
            if in_flight.len() >= 32 {
                acks.push(in_flight.join_next().await.unwrap().unwrap());
            }
        }
        while let Some(ack) = in_flight.join_next().await {
            acks.push(ack.unwrap());
        }
        acks
    });

    let mut offsets = Vec::new();
    let mut payloads = HashSet::new();
    let mut disconnected = false;
    let mut resumed = false;
    while offsets.len() < TOTAL {
        match timeout(STEP, events.next())
            .await
            .expect("events keep coming")
            .unwrap()
        {
            Event::Message(message) => {
                offsets.push(message.offset);
                payloads.insert(message.payload);
                if offsets.len() == 500 {
                    server.signal("KILL");
                    server.wait_for_exit(STEP).unwrap();
                    let (restarted, _) = serve(data.path(), &addr.to_string());
                    server = restarted;
                }
            }
            Event::Disconnected { .. } => disconnected = true,
            Event::Resumed { room, .. } => {
                resumed = true;
                assert_eq!(room, "journal");
            }
            _ => {}
        }
    }
    let acks = timeout(STEP * 3, publishing).await.unwrap().unwrap();
    assert!(
        disconnected && resumed,
        "the reader saw the crash and the resume"
    );
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "no duplicate, in order"
    );
    assert_eq!(payloads.len(), TOTAL, "no message missing");
    let acked: HashSet<u64> = acks.iter().map(|(_, offset)| *offset).collect();
    assert_eq!(acked.len(), TOTAL, "each publish has its own offset");

    // What is stored is each message exactly once.
    let mut hub = HubClient::new(
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut stored = 0;
    let mut after = 0;
    loop {
        let page = hub
            .history(HistoryRequest {
                room: "journal".into(),
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
        stored += page.messages.len();
    }
    assert_eq!(stored, TOTAL, "re-sent publishes were deduplicated");
}

#[test]
fn two_chat_terminals_talk_and_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let (mut server, addr) = serve(data.path(), "127.0.0.1:0");

    let mut alice = ChatTerminal::open(addr, "alice", &[]);
    alice.expect("-- joined lobby as alice");
    let mut bob = ChatTerminal::open(addr, "bob", &[]);
    bob.expect("-- joined lobby as bob (1 here: alice)");
    alice.expect("-- bob joined");

    alice.type_line("hello bob");
    bob.expect("[alice] hello bob");
    bob.type_line("hi alice ✓");
    alice.expect("[bob] hi alice ✓");

    // The server restarts; both terminals say so and carry on where they were.
    server.signal("TERM");
    server.wait_for_exit(STEP).expect("server stops");
    alice.expect("-- connection lost");
    let (_server, _) = serve(data.path(), &addr.to_string());
    // Each says who is in the room again: the first back sees nobody and then the other
    // rejoin; the second back finds the first there.
    let mut alice_saw = alice.expect("-- reconnected: resumed lobby after offset 2");
    let mut bob_saw = bob.expect("-- reconnected: resumed lobby after offset 2");
    if !alice_saw.last().unwrap().contains("(1 here: bob)") {
        alice_saw = alice.expect("-- bob joined");
    }
    if !bob_saw.last().unwrap().contains("(1 here: alice)") {
        bob_saw = bob.expect("-- alice joined");
    }
    assert!(!alice_saw.is_empty() && !bob_saw.is_empty());
    bob.type_line("still here?");
    alice.expect("[bob] still here?");

    // A newcomer gets the backlog.
    let carol = ChatTerminal::open(addr, "carol", &[]);
    let backlog = carol.expect("[bob] still here?");
    assert!(
        backlog.iter().any(|l| l == "[alice] hello bob"),
        "{backlog:?}"
    );
    assert!(
        backlog.iter().any(|l| l == "[bob] hi alice ✓"),
        "{backlog:?}"
    );

    // A line typed right before EOF still lands; EOF leaves the room and exits 0.
    alice.type_line("bye");
    drop(alice.child.0.stdin.take());
    let status = alice.child.wait_for_exit(STEP).expect("alice exits at EOF");
    assert!(status.success());
    let last_lines = bob.expect("-- alice left");
    assert!(
        last_lines.iter().any(|l| l == "[alice] bye"),
        "{last_lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_age_rotates_sessions_without_loss() {
    let (_server, addr) = common::spawn_duplex_serve(&[
        "--max-connection-age",
        "1s",
        "--max-connection-age-grace",
        "2s",
    ]);
    let (reader, mut events) = Client::connect(options(addr, "reader")).await.unwrap();
    reader.join("ticker", None).await.unwrap();
    let (writer, writer_events) = Client::connect(options(addr, "writer")).await.unwrap();
    drop(writer_events);
    writer.join("ticker", None).await.unwrap();
    let publishing = tokio::spawn(async move {
        for i in 0..60 {
            writer
                .publish("ticker", Bytes::from(format!("tick {i}")), "text/plain")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut offsets = Vec::new();
    let (mut told, mut resumed) = (false, false);
    while offsets.len() < 60 {
        match timeout(STEP, events.next()).await.unwrap().unwrap() {
            Event::Message(message) => offsets.push(message.offset),
            Event::ServerShutdown { reason } => {
                assert!(reason.contains("maximum age"), "{reason}");
                told = true;
            }
            Event::Resumed { .. } => resumed = true,
            _ => {}
        }
    }
    timeout(STEP, publishing).await.unwrap().unwrap();
    assert!(told && resumed, "the reader was told to move and resumed");
    assert_eq!(
        offsets,
        (1..=60).collect::<Vec<u64>>(),
        "no gap, no duplicate across rotations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_age_and_grace_are_cut() {
    use tokio::io::AsyncReadExt as _;
    use tokio::io::AsyncWriteExt as _;

    let (_server, addr) = common::spawn_duplex_serve(&[
        "--max-connection-age",
        "300ms",
        "--max-connection-age-grace",
        "300ms",
    ]);
    // A connection that speaks HTTP/2 and then just holds on.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    let closed = timeout(STEP, async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before its age"
    );
    // A GOAWAY (type 7) came first, at the age.
    let mut rest = &seen[..];
    let mut goaway = false;
    while rest.len() >= 9 {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        goaway |= rest[3] == 0x7;
        rest = rest.get(9 + length..).unwrap_or(&[]);
    }
    assert!(goaway, "a GOAWAY before the cut");
}

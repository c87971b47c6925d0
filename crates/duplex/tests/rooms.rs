//! Rooms end to end: real servers on loopback ports, real `Hub.Connect` session streams.
//! Ordering across clients and rooms, presence, resume without gap or duplicate under
//! load, lag policies with bounded memory, and per-command errors.

mod common;

use common::session::SessionSteps as _;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::session::{Session, texts};
use common::{InProcessServer, STEP};
use duplex_proto::hub::hub_client::HubClient;
use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{
    HistoryRequest, Join, Leave, Publish, PublishRequest, SubscribeRequest, client_frame::Command,
    presence_event,
};
use tokio::time::timeout;

#[tokio::test]
async fn clients_in_one_room_see_the_same_order() {
    let server = InProcessServer::start().await;
    let channel = server.channel().await;
    let mut readers = Vec::new();
    for i in 0..4 {
        let mut session = Session::open(&channel, &format!("reader{i}")).await;
        session.join("lobby", None).await;
        readers.push(session);
    }
    let mut publishers = Vec::new();
    for p in 0..2 {
        let mut session = Session::open(&server.channel().await, &format!("pub{p}")).await;
        session.join("lobby", None).await;
        publishers.push(session);
    }
    let tasks: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, mut session)| {
            tokio::spawn(async move {
                for i in 0..500 {
                    session.publish("lobby", format!("p{p}-{i}")).await;
                }
                let mut acks = 0;
                while acks < 500 {
                    if let Frame::PublishAck(_) = session.next().await {
                        acks += 1;
                    }
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    for reader in &mut readers {
        seen.push(reader.messages(1000).await);
    }
    for task in tasks {
        timeout(STEP, task).await.unwrap().unwrap();
    }
    let first: Vec<u64> = seen[0].iter().map(|m| m.offset).collect();
    assert!(
        first.windows(2).all(|w| w[0] < w[1]),
        "offsets strictly increase"
    );
    for other in &seen[1..] {
        assert_eq!(texts(other), texts(&seen[0]), "every reader sees one order");
    }
    // Each publisher's own messages keep their publish order.
    for p in 0..2 {
        let own: Vec<String> = texts(&seen[0])
            .into_iter()
            .filter(|t| t.starts_with(&format!("p{p}-")))
            .collect();
        let expected: Vec<String> = (0..500).map(|i| format!("p{p}-{i}")).collect();
        assert_eq!(own, expected);
    }
    assert!(seen[0].iter().all(|m| m.sender.starts_with("pub")));
}

#[tokio::test]
async fn three_rooms_interleaved_keep_their_own_orders() {
    let server = InProcessServer::start().await;
    let channel = server.channel().await;
    let mut session = Session::open(&channel, "multi").await;
    let rooms = ["red", "green", "blue"];
    for room in rooms {
        session.join(room, None).await;
    }
    for i in 0..300 {
        let room = rooms[i % 3];
        session.publish(room, format!("{room}-{}", i / 3)).await;
    }
    let mut by_room: HashMap<String, Vec<duplex_proto::hub::Message>> = HashMap::new();
    for message in session.messages(300).await {
        by_room
            .entry(message.room.clone())
            .or_default()
            .push(message);
    }
    for room in rooms {
        let messages = &by_room[room];
        let expected: Vec<String> = (0..100).map(|i| format!("{room}-{i}")).collect();
        assert_eq!(texts(messages), expected, "{room}");
        let offsets: Vec<u64> = messages.iter().map(|m| m.offset).collect();
        assert_eq!(
            offsets,
            (1..=100).collect::<Vec<_>>(),
            "{room} has its own offsets"
        );
    }
}

#[tokio::test]
async fn presence_announces_joins_and_leaves() {
    let server = InProcessServer::start().await;
    let channel = server.channel().await;
    let mut alice = Session::open(&channel, "alice").await;
    let joined = alice.join("tea", None).await;
    assert!(joined.members.is_empty());

    let mut bob = Session::open(&channel, "bob").await;
    let joined = bob.join("tea", None).await;
    assert_eq!(joined.members.len(), 1);
    assert_eq!(joined.members[0].name, "alice");
    match alice.next().await {
        Frame::Presence(event) => {
            assert_eq!(event.kind, presence_event::Kind::Joined as i32);
            assert_eq!(event.member.unwrap().name, "bob");
        }
        other => panic!("expected presence, got {other:?}"),
    }

    // A hidden observer joins without an event.
    let mut observer = Session::open(&channel, "observer").await;
    observer
        .send(Command::Join(Join {
            room: "tea".into(),
            after_offset: None,
            hidden: true,
            replay_last: 0,
        }))
        .await;
    assert!(matches!(observer.next().await, Frame::Joined(_)));

    let mut client = HubClient::new(channel.clone());
    let members = client
        .presence(duplex_proto::hub::PresenceRequest { room: "tea".into() })
        .await
        .unwrap()
        .into_inner()
        .members;
    let mut names: Vec<_> = members.into_iter().map(|m| m.name).collect();
    names.sort();
    assert_eq!(names, ["alice", "bob"]);

    bob.send(Command::Leave(Leave { room: "tea".into() })).await;
    assert!(matches!(bob.next().await, Frame::Left(_)));
    match alice.next().await {
        Frame::Presence(event) => {
            assert_eq!(event.kind, presence_event::Kind::Left as i32);
            assert_eq!(event.member.unwrap().name, "bob");
        }
        other => panic!("expected presence, got {other:?}"),
    }
    // A session that just goes away leaves too.
    drop(observer);
    drop(alice);
    let mut carol = Session::open(&channel, "carol").await;
    let joined = timeout(STEP, async {
        loop {
            let joined = carol.join("tea", None).await;
            if joined.members.is_empty() {
                return joined;
            }
            carol
                .send(Command::Leave(Leave { room: "tea".into() }))
                .await;
            let _ = carol.next_non_presence().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("alice's presence ends when her stream does");
    assert!(joined.members.is_empty());
}

#[tokio::test]
async fn bad_commands_get_errors_and_the_session_goes_on() {
    let server = InProcessServer::start_with(|config| config.max_payload = 1024).await;
    let channel = server.channel().await;
    let mut session = Session::open(&channel, "tester").await;

    let expect_error = |frame: Frame, code: tonic::Code| match frame {
        Frame::Error(error) => {
            assert_eq!(error.code, code as i32, "{error:?}");
            error
        }
        other => panic!("expected {code:?}, got {other:?}"),
    };

    session
        .send(Command::Join(Join {
            room: "no spaces/allowed".into(),
            ..Default::default()
        }))
        .await;
    let error = expect_error(session.next().await, tonic::Code::InvalidArgument);
    assert!(error.message.contains("room name"), "{}", error.message);

    session.publish("elsewhere", "hi").await;
    let error = expect_error(session.next().await, tonic::Code::FailedPrecondition);
    assert!(
        error.message.contains("join room elsewhere"),
        "{}",
        error.message
    );

    session.join("ok", None).await;
    session
        .send(Command::Join(Join {
            room: "ok".into(),
            ..Default::default()
        }))
        .await;
    expect_error(session.next().await, tonic::Code::AlreadyExists);
    session
        .send(Command::Leave(Leave {
            room: "never".into(),
        }))
        .await;
    expect_error(session.next().await, tonic::Code::NotFound);

    session.publish("ok", Bytes::new()).await;
    let error = expect_error(session.next().await, tonic::Code::InvalidArgument);
    assert!(error.message.contains("empty"), "{}", error.message);

    session.publish("ok", vec![b'x'; 1025]).await;
    let error = expect_error(session.next().await, tonic::Code::ResourceExhausted);
    assert!(error.message.contains("1024"), "{}", error.message);

    session
        .send(Command::Join(Join {
            room: "ok2".into(),
            after_offset: Some(5),
            hidden: false,
            replay_last: 0,
        }))
        .await;
    let error = expect_error(session.next().await, tonic::Code::InvalidArgument);
    assert!(error.message.contains("beyond"), "{}", error.message);

    // Duplicate client ids are acked with the original offset and stored once.
    let publish = |id: &str, text: &str| {
        Command::Publish(Publish {
            room: "ok".into(),
            payload: Bytes::from(text.to_owned()),
            client_message_id: id.into(),
            ..Default::default()
        })
    };
    let first_id = session.send(publish("m-1", "first")).await;
    session.send(publish("m-1", "again")).await;
    let mut acks = Vec::new();
    let mut delivered = Vec::new();
    while acks.len() < 2 || delivered.is_empty() {
        match session.next().await {
            Frame::PublishAck(ack) => acks.push(ack),
            Frame::Message(message) => delivered.push(message),
            other => panic!("unexpected {other:?}"),
        }
    }
    acks.sort_by_key(|ack| ack.command_id);
    assert_eq!(acks[0].command_id, first_id);
    assert_eq!(acks[0].offset, acks[1].offset);
    assert!(!acks[0].duplicate && acks[1].duplicate);
    assert_eq!(texts(&delivered), ["first"]);

    // After all that, the session still works.
    session
        .send(Command::Ping(duplex_proto::hub::Ping {
            client_time_unix_micros: 42,
        }))
        .await;
    match session.next().await {
        Frame::Pong(pong) => assert_eq!(pong.client_time_unix_micros, 42),
        other => panic!("expected pong, got {other:?}"),
    }
    let id = session.publish("ok", "last").await;
    let ack = loop {
        match session.next().await {
            Frame::PublishAck(ack) => break ack,
            _ => continue,
        }
    };
    assert_eq!(ack.command_id, id);
    assert_eq!(ack.offset, acks[0].offset + 1);
}

#[tokio::test]
async fn unary_publish_history_and_subscribe() {
    let server = InProcessServer::start().await;
    let mut client = HubClient::new(server.channel().await);
    for i in 0..5 {
        let ack = client
            .publish(PublishRequest {
                room: "feed".into(),
                payload: Bytes::from(format!("item {i}")),
                sender: "script".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.offset, i + 1);
    }
    let history = client
        .history(HistoryRequest {
            room: "feed".into(),
            after_offset: 2,
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(texts(&history.messages), ["item 2", "item 3"]);
    assert_eq!((history.earliest_offset, history.last_offset), (1, 5));
    assert_eq!(history.messages[0].sender, "script");

    let mut stream = client
        .subscribe(SubscribeRequest {
            room: "feed".into(),
            after_offset: Some(3),
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while got.len() < 3 {
        if got.len() == 2 {
            client
                .publish(PublishRequest {
                    room: "feed".into(),
                    payload: "live".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let frame = timeout(STEP, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(Frame::Message(message)) = frame.frame {
            got.push(message);
        }
    }
    assert_eq!(texts(&got), ["item 3", "item 4", "live"]);

    let status = client
        .publish(PublishRequest {
            room: "bad room".into(),
            payload: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn resume_older_than_retention_names_the_earliest_offset() {
    let server = InProcessServer::start_with(|config| config.retention_messages = 10).await;
    let mut client = HubClient::new(server.channel().await);
    for i in 0..25 {
        client
            .publish(PublishRequest {
                room: "short".into(),
                payload: Bytes::from(format!("n{i}")),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let history = client
        .history(HistoryRequest {
            room: "short".into(),
            after_offset: 0,
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (history.earliest_offset, history.last_offset),
        (16, 25),
        "count retention keeps 10"
    );
    assert_eq!(history.messages.len(), 10);

    let mut session = Session::open(&server.channel().await, "late").await;
    session
        .send(Command::Join(Join {
            room: "short".into(),
            after_offset: Some(3),
            hidden: false,
            replay_last: 0,
        }))
        .await;
    match session.next().await {
        Frame::Error(error) => {
            assert_eq!(error.code, tonic::Code::FailedPrecondition as i32);
            assert_eq!(error.earliest_offset, 16);
            assert!(
                error.message.contains("earliest available offset is 16"),
                "{}",
                error.message
            );
        }
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    // Resuming from just before the earliest works, and replay_last gives a backlog.
    let joined = session.join("short", Some(15)).await;
    assert_eq!(joined.earliest_offset, 16);
    let replayed = session.messages(10).await;
    assert_eq!(replayed.first().unwrap().offset, 16);
    let mut viewer = Session::open(&server.channel().await, "viewer").await;
    viewer
        .send(Command::Join(Join {
            room: "short".into(),
            after_offset: None,
            hidden: true,
            replay_last: 3,
        }))
        .await;
    assert!(matches!(viewer.next().await, Frame::Joined(_)));
    assert_eq!(texts(&viewer.messages(3).await), ["n22", "n23", "n24"]);
}

#[test]
fn sigterm_sends_shutdown_frames_before_closing() {
    sigterm_sends_shutdown_frames_before_closing_with(&[]);
}

/// The acceptor and the one connection worker on the server's only thread.
#[test]
fn sigterm_sends_shutdown_frames_before_closing_on_one_worker() {
    sigterm_sends_shutdown_frames_before_closing_with(&[
        "--workers",
        "1",
        "--runtime",
        "current-thread",
    ]);
}

fn sigterm_sends_shutdown_frames_before_closing_with(args: &[&str]) {
    let (mut server, addr) =
        common::spawn_duplex_serve(&[&["--shutdown-grace", "5s"], args].concat());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut session = Session::open(&channel, "resident").await;
        session.join("home", None).await;
        server.signal("TERM");
        match session.next().await {
            Frame::Shutdown(shutdown) => {
                assert!(shutdown.reason.contains("shutting down"), "{shutdown:?}");
                assert!(shutdown.retry_after_ms > 0);
            }
            other => panic!("expected a shutdown frame, got {other:?}"),
        }
        // The session still works during the grace period.
        session.publish("home", "last words").await;
        loop {
            if let Frame::PublishAck(_) = session.next().await {
                break;
            }
        }
    });
    drop(runtime);
    let status = server
        .wait_for_exit(STEP)
        .expect("exits after the grace period");
    assert!(status.success());
}

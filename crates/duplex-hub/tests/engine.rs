//! The engine without a network: acks and deliveries wait for the store's commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use duplex_hub::Presence as _;
use duplex_hub::{
    Code, Hub, HubConfig, Identity, Naming, PublishInput, Rights, SessionOrigin, Subscription,
};
use duplex_proto::hub::client_frame::Command;
use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{ClientFrame, Join, Member, ServerFrame};
use duplex_store::{
    Appended, BoxFuture, MemoryStore, NewMessage, Offset, RoomBounds, Store, StoreError,
    StoredMessage,
};
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::Semaphore;

/// A caller with every right (auth off).
fn anyone() -> Identity {
    Identity::anonymous("test")
}

/// A memory store whose commits wait for the test to allow each one.
struct GatedStore {
    inner: MemoryStore,
    gate: Semaphore,
    committed: AtomicU64,
}

impl Store for GatedStore {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        Box::pin(async move {
            self.gate.acquire().await.unwrap().forget();
            let count = batch.len() as u64;
            let appended = self.inner.append(batch).await?;
            self.committed.fetch_add(count, Ordering::SeqCst);
            Ok(appended)
        })
    }
    fn read_after(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        self.inner.read_after(room, after, limit)
    }
    fn bounds(&self, room: &str) -> BoxFuture<'_, Result<Option<RoomBounds>, StoreError>> {
        self.inner.bounds(room)
    }
    fn last_offset(&self, room: &str) -> BoxFuture<'_, Result<Offset, StoreError>> {
        self.inner.last_offset(room)
    }
    fn enforce_retention(&self, now: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.inner.enforce_retention(now)
    }
    fn commits(&self) -> u64 {
        self.inner.commits()
    }
}

/// Opens an anonymous session that joins room `r` live and hidden, and waits for its
/// `joined`: what follows on the returned stream is the room's live messages.
async fn watch_room_r(hub: &Hub) -> duplex_hub::Outbound {
    let (session, mut outbound) = hub.open_session(duplex_hub::Identity::anonymous("watcher"));
    let join = ClientFrame {
        command_id: 1,
        command: Some(Command::Join(Join {
            room: "r".into(),
            after_offset: None,
            hidden: true,
            replay_last: 0,
        })),
    };
    tokio::spawn(
        session.drive(futures::stream::iter([Ok(join)]).chain(futures::stream::pending())),
    );
    let joined = ServerFrame::decode(&outbound.next().await.unwrap().unwrap()[..]).unwrap();
    assert!(matches!(joined.frame, Some(Frame::Joined(_))));
    outbound
}

#[tokio::test]
async fn no_ack_and_no_delivery_before_the_commit() {
    let store = Arc::new(GatedStore {
        inner: MemoryStore::new(Default::default()),
        gate: Semaphore::new(0),
        committed: AtomicU64::new(0),
    });
    let hub = Hub::new(store.clone(), HubConfig::default());

    let mut outbound = watch_room_r(&hub).await;

    let publisher = hub.clone();
    let ack = tokio::spawn(async move {
        publisher
            .publish(
                &anyone(),
                PublishInput {
                    room: "r".into(),
                    payload: "x".into(),
                    ..Default::default()
                },
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!ack.is_finished(), "acked before the store committed");
    let early = tokio::time::timeout(Duration::from_millis(50), outbound.next()).await;
    assert!(early.is_err(), "delivered before the store committed");

    store.gate.add_permits(1);
    let outcome = ack.await.unwrap().unwrap();
    assert_eq!(
        store.committed.load(Ordering::SeqCst),
        1,
        "the ack follows the commit"
    );
    assert_eq!(outcome.offset, 1);
    let delivered = ServerFrame::decode(&outbound.next().await.unwrap().unwrap()[..]).unwrap();
    match delivered.frame {
        Some(Frame::Message(message)) => assert_eq!(message.offset, 1),
        other => panic!("expected the message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_commit_acks_nothing_and_reuses_the_offsets() {
    struct FailingOnce(MemoryStore, AtomicU64);
    impl Store for FailingOnce {
        fn append(
            &self,
            batch: Vec<NewMessage>,
        ) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
            if self.1.fetch_add(1, Ordering::SeqCst) == 0 {
                return Box::pin(async { Err(StoreError::Closed) });
            }
            self.0.append(batch)
        }
        fn read_after(
            &self,
            room: &str,
            after: Offset,
            limit: usize,
        ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
            self.0.read_after(room, after, limit)
        }
        fn bounds(&self, room: &str) -> BoxFuture<'_, Result<Option<RoomBounds>, StoreError>> {
            self.0.bounds(room)
        }
        fn last_offset(&self, room: &str) -> BoxFuture<'_, Result<Offset, StoreError>> {
            self.0.last_offset(room)
        }
        fn enforce_retention(&self, now: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.0.enforce_retention(now)
        }
        fn commits(&self) -> u64 {
            self.0.commits()
        }
    }
    let hub = Hub::new(
        Arc::new(FailingOnce(
            MemoryStore::new(Default::default()),
            AtomicU64::new(0),
        )),
        HubConfig::default(),
    );
    let input = || PublishInput {
        room: "r".into(),
        payload: "x".into(),
        client_id: "id-1".into(),
        ..Default::default()
    };
    let error = hub.publish(&anyone(), input()).await.unwrap_err();
    assert_eq!(
        error.code(),
        Code::Unavailable,
        "UNAVAILABLE: retry is safe"
    );
    // The retry with the same client id is stored (not mistaken for a duplicate) at offset 1.
    let outcome = hub.publish(&anyone(), input()).await.unwrap();
    assert_eq!((outcome.offset, outcome.duplicate), (1, false));
    let again = hub.publish(&anyone(), input()).await.unwrap();
    assert_eq!((again.offset, again.duplicate), (1, true));
}

#[tokio::test]
async fn rooms_nobody_uses_are_dropped_from_the_table() {
    let hub = Hub::new(
        Arc::new(MemoryStore::new(Default::default())),
        HubConfig::default(),
    );
    for i in 0..100 {
        hub.publish(
            &anyone(),
            PublishInput {
                room: format!("room-{i}"),
                payload: "x".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(hub.stats().rooms, 0, "unary publishes leave no room behind");

    let (mut session, _outbound) = hub.open_session(duplex_hub::Identity::anonymous("s"));
    let join = Join {
        room: "kept".into(),
        after_offset: None,
        hidden: false,
        replay_last: 0,
    };
    session.join(1, join).await.unwrap();
    assert_eq!(hub.stats().rooms, 1);
    // Offsets continue from the store after a room was dropped and loaded again.
    let outcome = hub
        .publish(
            &anyone(),
            PublishInput {
                room: "room-7".into(),
                payload: "y".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome.offset, 2);
    session.leave("kept").unwrap();
    assert_eq!(hub.stats().rooms, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_join_during_a_burst_misses_nothing_after_its_last_offset() {
    let hub = Hub::new(
        Arc::new(MemoryStore::new(Default::default())),
        HubConfig::default(),
    );
    let publisher = hub.clone();
    let burst = tokio::spawn(async move {
        for i in 0..3000 {
            publisher
                .publish(
                    &anyone(),
                    PublishInput {
                        room: "r".into(),
                        payload: format!("{i}").into(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (session, mut outbound) = hub.open_session(duplex_hub::Identity::anonymous("late"));
    let join = ClientFrame {
        command_id: 1,
        command: Some(Command::Join(Join {
            room: "r".into(),
            after_offset: None,
            hidden: true,
            replay_last: 0,
        })),
    };
    tokio::spawn(
        session.drive(futures::stream::iter([Ok(join)]).chain(futures::stream::pending())),
    );
    let mut last = None;
    let mut expected = 0;
    let mut seen = 0;
    while seen < 200 {
        let frame = ServerFrame::decode(&outbound.next().await.unwrap().unwrap()[..]).unwrap();
        match frame.frame {
            Some(Frame::Joined(joined)) => {
                last = Some(joined.last_offset);
                expected = joined.last_offset + 1;
            }
            Some(Frame::Message(message)) => {
                assert!(last.is_some(), "joined comes first");
                assert_eq!(
                    message.offset, expected,
                    "no gap after the announced last offset"
                );
                expected += 1;
                seen += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    burst.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_publishes_leave_no_rooms_behind_on_a_multi_thread_runtime() {
    let hub = Hub::new(
        Arc::new(MemoryStore::new(Default::default())),
        HubConfig::default(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2000 {
        let hub = hub.clone();
        tasks.spawn(async move {
            hub.publish(
                &anyone(),
                PublishInput {
                    room: format!("r{i}"),
                    payload: "x".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        });
    }
    while tasks.join_next().await.is_some() {}
    assert_eq!(hub.stats().rooms, 0);
}

#[tokio::test]
async fn members_past_the_presence_bound_are_counted_not_listed() {
    let config = HubConfig {
        max_presence_listed: 2,
        ..HubConfig::default()
    };
    let hub = Hub::new(Arc::new(MemoryStore::new(Default::default())), config);
    let join = || Join {
        room: "crowd".into(),
        after_offset: None,
        hidden: false,
        replay_last: 0,
    };
    let mut sessions = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let (mut session, mut outbound) = hub.open_session(duplex_hub::Identity::anonymous(name));
        session.join(1, join()).await.unwrap();
        let joined = ServerFrame::decode(&outbound.next().await.unwrap().unwrap()[..]).unwrap();
        let Some(Frame::Joined(joined)) = joined.frame else {
            panic!("expected joined");
        };
        // Who was there before: at most two listed, the rest counted.
        let before = sessions.len() as u64;
        assert_eq!(joined.members.len() as u64, before.min(2), "{name}");
        assert_eq!(joined.unlisted_members, before.saturating_sub(2), "{name}");
        sessions.push((session, outbound));
    }
    let presence = hub.presence(&anyone(), "crowd").await.unwrap();
    assert_eq!((presence.members.len(), presence.unlisted), (2, 2));
    // A counted member leaves: the count drops; a listed one: the list does (no promotion).
    let (mut d, _) = sessions.pop().unwrap();
    d.leave("crowd").unwrap();
    assert_eq!(hub.presence(&anyone(), "crowd").await.unwrap().unlisted, 1);
    let (mut a, _) = sessions.remove(0);
    a.leave("crowd").unwrap();
    let presence = hub.presence(&anyone(), "crowd").await.unwrap();
    assert_eq!((presence.members.len(), presence.unlisted), (1, 1));
    assert_eq!(presence.members[0].name, "b");
}

/// A memory store whose reads of one room wait for the test to allow each one: a room that
/// is slow to load, or (`history_only`) whose history reads are slow while its position
/// and bounds answer at once, so a replay stays in progress, deterministically.
struct SlowRoomStore {
    inner: MemoryStore,
    slow_room: String,
    history_only: bool,
    reads: Semaphore,
}

impl SlowRoomStore {
    fn new(slow_room: &str, history_only: bool) -> Self {
        Self {
            inner: MemoryStore::new(Default::default()),
            slow_room: slow_room.into(),
            history_only,
            reads: Semaphore::new(0),
        }
    }

    async fn wait_if_slow(&self, room: &str, history: bool) {
        if room == self.slow_room && (history || !self.history_only) {
            self.reads.acquire().await.unwrap().forget();
        }
    }
}

impl Store for SlowRoomStore {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        self.inner.append(batch)
    }
    fn read_after(
        &self,
        room: &str,
        after: Offset,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, StoreError>> {
        let room = room.to_owned();
        Box::pin(async move {
            self.wait_if_slow(&room, true).await;
            self.inner.read_after(&room, after, limit).await
        })
    }
    fn bounds(&self, room: &str) -> BoxFuture<'_, Result<Option<RoomBounds>, StoreError>> {
        let room = room.to_owned();
        Box::pin(async move {
            self.wait_if_slow(&room, false).await;
            self.inner.bounds(&room).await
        })
    }
    fn last_offset(&self, room: &str) -> BoxFuture<'_, Result<Offset, StoreError>> {
        let room = room.to_owned();
        Box::pin(async move {
            self.wait_if_slow(&room, false).await;
            self.inner.last_offset(&room).await
        })
    }
    fn enforce_retention(&self, now: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.inner.enforce_retention(now)
    }
    fn commits(&self) -> u64 {
        self.inner.commits()
    }
}

/// Issue 10 item 6, without timing: while every read of one room's state from the store
/// hangs, publishes to it and to other rooms are still sequenced and acked, because the
/// publish path reads nothing (the log assigns offsets and dedupes) and no store read runs
/// in the sequencer that orders every room.
#[tokio::test]
async fn a_room_slow_to_load_does_not_hold_up_other_rooms() {
    let store = Arc::new(SlowRoomStore::new("cold", false));
    let hub = Hub::new(store.clone(), HubConfig::default());
    let publish = |room: &'static str| {
        let hub = hub.clone();
        tokio::spawn(async move {
            hub.publish(
                &anyone(),
                PublishInput {
                    room: room.into(),
                    payload: "x".into(),
                    client_id: format!("{room}-1"),
                    ..Default::default()
                },
            )
            .await
        })
    };

    let cold = tokio::time::timeout(Duration::from_secs(20), publish("cold"))
        .await
        .expect("a publish to the cold room needs no read of it")
        .unwrap()
        .unwrap();
    assert_eq!(cold.offset, 1);
    for _ in 0..3 {
        let warm = tokio::time::timeout(Duration::from_secs(20), publish("warm"))
            .await
            .expect("a publish to another room is acked while the cold room loads")
            .unwrap()
            .unwrap();
        assert!(warm.offset >= 1);
    }

    let repeat = tokio::time::timeout(Duration::from_secs(20), publish("cold"))
        .await
        .expect("a repeat is answered by the log alone")
        .unwrap()
        .unwrap();
    assert_eq!((repeat.offset, repeat.duplicate), (1, true));
}

/// A feed standing in for a cluster's: it keeps the delivery of every room it is asked
/// to follow, so the test can deliver messages "appended by another node".
#[derive(Default)]
struct RecordingFeed {
    followed: std::sync::Mutex<Vec<(String, Offset, duplex_hub::RoomDelivery)>>,
}

impl duplex_hub::LiveFeed for RecordingFeed {
    fn follow(
        &self,
        room: &str,
        after: Offset,
        delivery: duplex_hub::RoomDelivery,
    ) -> BoxFuture<'_, Result<duplex_hub::FeedHandle, duplex_hub::HubError>> {
        self.followed
            .lock()
            .unwrap()
            .push((room.to_owned(), after, delivery));
        Box::pin(async { Ok(duplex_hub::FeedHandle::none()) })
    }
}

/// The delivery seam: a room joined on this node follows the feed from the log's last
/// offset, and what the feed delivers reaches the room's subscribers once, in order,
/// ignoring what the room already has.
#[tokio::test]
async fn messages_from_the_live_feed_reach_subscribers_once() {
    let store = Arc::new(MemoryStore::new(Default::default()));
    let feed = Arc::new(RecordingFeed::default());
    let hub = Hub::with_feed(store.clone(), feed.clone(), HubConfig::default());
    hub.publish(
        &anyone(),
        PublishInput {
            room: "r".into(),
            payload: "local".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let mut outbound = watch_room_r(&hub).await;
    let delivery = {
        let followed = feed.followed.lock().unwrap();
        assert_eq!(followed.len(), 1, "followed once, on the room's load");
        assert_eq!((followed[0].0.as_str(), followed[0].1), ("r", 1));
        followed[0].2.clone()
    };

    let remote = |offset| StoredMessage {
        room: "r".into(),
        offset,
        time_unix_micros: 0,
        sender: "elsewhere".into(),
        content_type: String::new(),
        client_id: String::new(),
        key: String::new(),
        payload: bytes::Bytes::from(format!("remote {offset}")),
    };
    // Offset 1 is the room's own, already there: ignored. 5 and 9 go out; 5 again does not.
    for offset in [1, 5, 5, 9] {
        assert!(delivery.deliver(&remote(offset)));
    }
    let mut offsets = Vec::new();
    while offsets.len() < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(20), outbound.next())
            .await
            .expect("delivered within the step")
            .unwrap()
            .unwrap();
        if let Some(Frame::Message(message)) = ServerFrame::decode(&frame[..]).unwrap().frame {
            assert_eq!(message.sender, "elsewhere");
            offsets.push(message.offset);
        }
    }
    assert_eq!(offsets, [5, 9]);
    let nothing_more = tokio::time::timeout(Duration::from_millis(100), outbound.next()).await;
    assert!(nothing_more.is_err(), "no duplicate: {nothing_more:?}");
}

/// A resume from an offset the log has but this node's feed has not delivered yet (a
/// client that saw it on another node of a cluster) waits for the feed instead of being
/// refused as beyond the room's end, and then replays nothing twice.
#[tokio::test]
async fn a_resume_ahead_of_the_live_feed_waits_for_it() {
    let store = Arc::new(MemoryStore::new(Default::default()));
    let feed = Arc::new(RecordingFeed::default());
    let hub = Hub::with_feed(store.clone(), feed.clone(), HubConfig::default());
    let _watcher = watch_room_r(&hub).await;
    let delivery = feed.followed.lock().unwrap()[0].2.clone();
    // "Another node" appends 1..=3; this node's feed has not brought them yet.
    let messages: Vec<NewMessage> = (1..=3)
        .map(|n| NewMessage {
            room: "r".into(),
            time_unix_micros: 0,
            sender: "elsewhere".into(),
            content_type: String::new(),
            client_id: String::new(),
            key: String::new(),
            payload: bytes::Bytes::from(format!("remote {n}")),
        })
        .collect();
    let appended = store.append(messages.clone()).await.unwrap();
    let stored: Vec<StoredMessage> = messages
        .into_iter()
        .zip(&appended)
        .map(|(message, appended)| StoredMessage::from_new(message, appended.offset))
        .collect();

    let (session, mut outbound) = hub.open_session(duplex_hub::Identity::anonymous("resumer"));
    let resume = ClientFrame {
        command_id: 1,
        command: Some(Command::Join(Join {
            room: "r".into(),
            after_offset: Some(3),
            hidden: true,
            replay_last: 0,
        })),
    };
    tokio::spawn(
        session.drive(futures::stream::iter([Ok(resume)]).chain(futures::stream::pending())),
    );
    // The feed catches up a moment later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for message in &stored {
        assert!(delivery.deliver(message));
    }
    let first = tokio::time::timeout(Duration::from_secs(20), outbound.next())
        .await
        .expect("an answer within the step")
        .unwrap()
        .unwrap();
    match ServerFrame::decode(&first[..]).unwrap().frame {
        Some(Frame::Joined(joined)) => assert_eq!(joined.last_offset, 3),
        other => panic!("expected joined, got {other:?}"),
    }
    let mut next = stored[2].clone();
    next.offset = 4;
    next.payload = bytes::Bytes::from_static(b"remote 4");
    assert!(delivery.deliver(&next));
    let frame = tokio::time::timeout(Duration::from_secs(20), outbound.next())
        .await
        .expect("the next live message within the step")
        .unwrap()
        .unwrap();
    match ServerFrame::decode(&frame[..]).unwrap().frame {
        Some(Frame::Message(message)) => assert_eq!(message.offset, 4, "nothing replayed twice"),
        other => panic!("expected message 4, got {other:?}"),
    }
}

#[tokio::test]
async fn every_call_checks_the_callers_rights_and_the_room_name() {
    let hub = Hub::new(
        Arc::new(MemoryStore::new(Default::default())),
        HubConfig::default(),
    );
    let reader = Identity {
        rights: Rights::new(&["lobby"], &["lobby.chat"]).unwrap(),
        ..Identity::anonymous("reader")
    };
    let publish = |room: &str| PublishInput {
        room: room.into(),
        payload: "x".into(),
        ..Default::default()
    };
    let subscription = |room: &str| Subscription {
        room: room.into(),
        ..Default::default()
    };
    for (room, code) in [
        ("vault", Code::PermissionDenied),
        ("bad room", Code::InvalidArgument),
    ] {
        let error = hub.publish(&reader, publish(room)).await.unwrap_err();
        assert_eq!(error.code(), code, "publish {room}");
        let error = hub.history(&reader, room, 0, 10).await.unwrap_err();
        assert_eq!(error.code(), code, "history {room}");
        let error = hub.presence(&reader, room).await.unwrap_err();
        assert_eq!(error.code(), code, "presence {room}");
        let error = hub
            .subscribe(reader.clone(), subscription(room), SessionOrigin::default())
            .await
            .expect_err("refused");
        assert_eq!(error.code(), code, "subscribe {room}");
    }
    // Reading the lobby is not writing to it.
    let error = hub.publish(&reader, publish("lobby")).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    // What the rights cover works, and an anonymous caller names its sender.
    let outcome = hub
        .publish(
            &reader,
            PublishInput {
                sender: "guest".into(),
                ..publish("lobby.chat")
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome.offset, 1);
    let anyone = anyone();
    let page = hub.history(&anyone, "lobby.chat", 0, 10).await.unwrap();
    assert_eq!(page.messages[0].sender, "guest");
    hub.subscribe(reader, subscription("lobby"), SessionOrigin::default())
        .await
        .expect("a readable room");
}

#[tokio::test]
async fn a_verified_identity_cannot_rename_itself() {
    let hub = Hub::new(
        Arc::new(MemoryStore::new(Default::default())),
        HubConfig::default(),
    );
    let alice = Identity {
        naming: Naming::Verified,
        ..Identity::anonymous("alice")
    };
    let input = PublishInput {
        room: "r".into(),
        sender: "mallory".into(),
        payload: "x".into(),
        ..Default::default()
    };
    hub.publish(&alice, input).await.unwrap();
    let page = hub.history(&alice, "r", 0, 10).await.unwrap();
    assert_eq!(page.messages[0].sender, "alice");
    let long = PublishInput {
        room: "r".into(),
        sender: "x".repeat(duplex_hub::MAX_NAME_LEN + 1),
        payload: "x".into(),
        ..Default::default()
    };
    let error = hub.publish(&anyone(), long).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
}

/// Log output captured in memory.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_sessions_log_lines_carry_its_id_name_and_peer() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let hub = Hub::new(
        Arc::new(MemoryStore::new(Default::default())),
        HubConfig::default(),
    );
    let origin = SessionOrigin {
        peer: Some("192.0.2.7:4000".parse().unwrap()),
        ..SessionOrigin::default()
    };
    let (session, mut outbound) = hub.open_session_from(Identity::anonymous("alice"), origin);
    let ping = ClientFrame {
        command_id: 1,
        command: Some(Command::Ping(Default::default())),
    };
    tokio::spawn(session.drive(futures::stream::iter([Ok(ping)])));
    // The pong, then the end of the stream once the client's side is closed.
    let mut frames = 0;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), outbound.next())
        .await
        .expect("the session ends")
    {
        frame.unwrap();
        frames += 1;
    }
    assert_eq!(frames, 1);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|line| line.contains("session ended"))
        .unwrap_or_else(|| panic!("no session end logged:\n{text}"));
    for field in ["session{session=", "name=alice", "peer=192.0.2.7:4000"] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}

/// A presence standing in for a cluster's: it keeps members in a [`LocalPresence`], records
/// every call the hub makes, and keeps the events handle of every room it is asked to
/// follow, so the test can report joins and leaves "made on another node".
#[derive(Default)]
struct RecordingPresence {
    inner: duplex_hub::LocalPresence,
    calls: std::sync::Mutex<Vec<String>>,
    followed: std::sync::Mutex<Vec<(String, duplex_hub::PresenceEvents)>>,
}

impl RecordingPresence {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl duplex_hub::Presence for RecordingPresence {
    fn members(&self, room: &str) -> duplex_hub::RoomPresence {
        self.record(format!("members {room}"));
        self.inner.members(room)
    }

    fn join(&self, room: &str, member: &Member, max_listed: usize) -> duplex_hub::Listing {
        let listing = self.inner.join(room, member, max_listed);
        self.record(format!("join {room} {} {listing:?}", member.name));
        listing
    }

    fn leave(&self, room: &str, member: &Member, listing: duplex_hub::Listing) -> bool {
        self.record(format!("leave {room} {} {listing:?}", member.name));
        self.inner.leave(room, member, listing)
    }

    fn follow(
        &self,
        room: &str,
        events: duplex_hub::PresenceEvents,
    ) -> BoxFuture<'_, Result<duplex_hub::FeedHandle, duplex_hub::HubError>> {
        self.followed
            .lock()
            .unwrap()
            .push((room.to_owned(), events));
        Box::pin(async { Ok(duplex_hub::FeedHandle::none()) })
    }
}

/// The next frame of `outbound`, decoded; fails the test after a generous step.
async fn next_frame(outbound: &mut duplex_hub::Outbound) -> Frame {
    let bytes = tokio::time::timeout(Duration::from_secs(20), outbound.next())
        .await
        .expect("a frame within the step")
        .expect("the stream is open")
        .expect("not an error");
    ServerFrame::decode(&bytes[..]).unwrap().frame.unwrap()
}

/// The presence event `frame` is: the member's name and whether it joined.
fn presence_event(frame: Frame) -> (String, bool) {
    let Frame::Presence(event) = frame else {
        panic!("expected a presence event, got {frame:?}");
    };
    let joined = event.kind == duplex_proto::hub::presence_event::Kind::Joined as i32;
    (event.member.unwrap().name, joined)
}

/// The presence seam: joins, leaves and lists go through the hub's presence, hidden joins
/// never reach it, a room joined here follows it once, and the changes it reports from
/// elsewhere reach the room's subscribers as presence events, in order.
#[tokio::test]
async fn joins_leaves_and_lists_go_through_the_presence_and_its_events_reach_members() {
    let presence = Arc::new(RecordingPresence::default());
    let hub = Hub::with_seams(
        Arc::new(MemoryStore::new(Default::default())),
        Arc::new(duplex_hub::LocalFeed),
        presence.clone(),
        HubConfig::default(),
    );
    let join = |hidden| Join {
        room: "r".into(),
        after_offset: None,
        hidden,
        replay_last: 0,
    };

    // The watcher joins, visible, and is driven (registered for live frames).
    let (watcher, mut watcher_out) = hub.open_session(Identity::anonymous("watcher"));
    let frame = ClientFrame {
        command_id: 1,
        command: Some(Command::Join(join(false))),
    };
    let watcher_task = tokio::spawn(
        watcher.drive(futures::stream::iter([Ok(frame)]).chain(futures::stream::pending())),
    );
    let Frame::Joined(joined) = next_frame(&mut watcher_out).await else {
        panic!("expected joined");
    };
    assert!(joined.members.is_empty());
    // The list for `joined`, the join; then (when its switch to live has run) the list its
    // registration compares with what `joined` said.
    assert_eq!(
        presence.calls()[..2],
        ["members r", "join r watcher Listed"]
    );
    let events = {
        let followed = presence.followed.lock().unwrap();
        assert_eq!(followed.len(), 1, "followed once, on the room's load");
        assert_eq!(followed[0].0, "r");
        followed[0].1.clone()
    };

    // A second member joins: its `joined` lists what the presence holds, and the watcher
    // gets the event the engine fans out.
    let (mut b, mut b_out) = hub.open_session(Identity::anonymous("b"));
    drop(b.join(1, join(false)).await.unwrap());
    let Frame::Joined(joined) = next_frame(&mut b_out).await else {
        panic!("expected joined");
    };
    let names: Vec<_> = joined.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["watcher"]);
    assert_eq!(
        presence_event(next_frame(&mut watcher_out).await),
        ("b".into(), true)
    );

    // A member joins on "another node": the presence reports it through the room's events.
    let remote = Member {
        name: "remote".into(),
        session_id: "n2-s7".into(),
    };
    assert!(events.apply(|| {
        presence.inner.join("r", &remote, 1000);
        Some(duplex_hub::PresenceChange::Joined(remote.clone()))
    }));
    assert_eq!(
        presence_event(next_frame(&mut watcher_out).await),
        ("remote".into(), true)
    );
    // A change with no event (say, a counted member) sends nothing.
    assert!(events.apply(|| None));

    // The unary `Presence` call reads the presence.
    let listed = hub.presence(&anyone(), "r").await.unwrap();
    let names: Vec<_> = listed.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["watcher", "b", "remote"]);
    assert_eq!(presence.calls().last().unwrap(), "members r");

    // A hidden join reads the list but never joins the presence.
    let (mut hidden, mut hidden_out) = hub.open_session(Identity::anonymous("hidden"));
    drop(hidden.join(1, join(true)).await.unwrap());
    let Frame::Joined(joined) = next_frame(&mut hidden_out).await else {
        panic!("expected joined");
    };
    assert_eq!(joined.members.len(), 3);
    assert!(!presence.calls().iter().any(|call| call.contains("hidden")));

    // Leaves undo the joins: b's through the presence, the remote one through the events.
    b.leave("r").unwrap();
    assert_eq!(presence.calls().last().unwrap(), "leave r b Listed");
    assert_eq!(
        presence_event(next_frame(&mut watcher_out).await),
        ("b".into(), false)
    );
    assert!(events.apply(|| {
        presence
            .inner
            .leave("r", &remote, duplex_hub::Listing::Listed)
            .then(|| duplex_hub::PresenceChange::Left(remote.clone()))
    }));
    assert_eq!(
        presence_event(next_frame(&mut watcher_out).await),
        ("remote".into(), false)
    );
    let nothing_more = tokio::time::timeout(Duration::from_millis(100), watcher_out.next()).await;
    assert!(nothing_more.is_err(), "no other frame: {nothing_more:?}");

    // Once every session is gone, so is the room: its events say so.
    drop(hidden);
    drop(watcher_out);
    watcher_task.await.unwrap();
    assert_eq!(presence.calls().last().unwrap(), "leave r watcher Listed");
    assert!(
        hub.presence(&anyone(), "r")
            .await
            .unwrap()
            .members
            .is_empty()
    );
    assert!(!events.apply(|| panic!("not run for a room that is gone")));
}

/// A session that joins `room` as `name` (visible), resuming after `after` if given, and
/// waits for its `joined`; returns its stream and the members `joined` listed.
async fn join_visible(
    hub: &Hub,
    name: &str,
    room: &str,
    after: Option<Offset>,
) -> (duplex_hub::Outbound, Vec<String>) {
    let (session, mut outbound) = hub.open_session(Identity::anonymous(name));
    let join = ClientFrame {
        command_id: 1,
        command: Some(Command::Join(Join {
            room: room.into(),
            after_offset: after,
            hidden: false,
            replay_last: 0,
        })),
    };
    tokio::spawn(
        session.drive(futures::stream::iter([Ok(join)]).chain(futures::stream::pending())),
    );
    let Frame::Joined(joined) = next_frame(&mut outbound).await else {
        panic!("expected joined");
    };
    (
        outbound,
        joined.members.into_iter().map(|m| m.name).collect(),
    )
}

/// Someone who joins while another member is still replaying shows up for that member:
/// the replaying member registers for live delivery after the join was announced, and is
/// told then what changed since its own `joined` list — after its replay, never before
/// its `joined`.
#[tokio::test]
async fn a_join_during_anothers_replay_reaches_it_when_it_goes_live() {
    let store = Arc::new(SlowRoomStore::new("r", true));
    let hub = Hub::new(store.clone(), HubConfig::default());
    let input = PublishInput {
        room: "r".into(),
        payload: "before".into(),
        ..Default::default()
    };
    hub.publish(&anyone(), input).await.unwrap();

    // Bob resumes from the start: his replay waits on the store.
    let (mut bob, bob_saw) = join_visible(&hub, "bob", "r", Some(0)).await;
    assert!(bob_saw.is_empty(), "{bob_saw:?}");
    // Alice joins live meanwhile; she sees Bob, but he is not registered yet.
    let (_alice, alice_saw) = join_visible(&hub, "alice", "r", None).await;
    assert_eq!(alice_saw, ["bob"]);

    store.reads.add_permits(16);
    let Frame::Message(replayed) = next_frame(&mut bob).await else {
        panic!("expected the replayed message first");
    };
    assert_eq!(replayed.offset, 1);
    assert_eq!(
        presence_event(next_frame(&mut bob).await),
        ("alice".into(), true)
    );
}

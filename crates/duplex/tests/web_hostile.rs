//! Hostile input on the web listener's `/ws` (issue 14), each case against a real `duplex
//! serve` process: an oversized message, a binary message that is not a `ClientFrame`, a
//! text message, slowloris on the upgrade request, a client that never reads its socket
//! in a busy room, and 10 000 idle WebSockets. Each ends with a clear close (or a bound
//! held) and checks that the server still serves a new WebSocket session.
//!
//! Rules as in `hostile.rs`: loopback only, every loop bounded in count and time, resident
//! memory read from `/proc/<pid>/status`.

mod common;

use common::session::SessionSteps as _;

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::ws::WsSession;
use common::{ChildGuard, STEP, spawn_duplex_serve_web};
use duplex_proto::hub::hub_client::HubClient;
use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{Code, PublishRequest};
use futures::StreamExt as _;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// Resident memory of `pid` now and at its peak, in KiB (`VmRSS`, `VmHWM`).
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status (is the server alive?): {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The server is alive and serves a new WebSocket session: join, publish, receive.
async fn still_serves(server: &mut ChildGuard, web: SocketAddr) {
    assert!(
        server.0.try_wait().expect("poll the server").is_none(),
        "the server is still running"
    );
    let mut probe = WsSession::open(web, &["duplex.v1"]).await;
    probe.join("probe", None).await;
    probe.publish("probe", "still here").await;
    let message = probe.messages(1).await.remove(0);
    assert_eq!(&message.payload[..], b"still here");
}

/// Sends `message` on a fresh session and returns how the server ended it.
async fn ended_after(web: SocketAddr, message: Message) -> common::ws::Ended {
    let mut session = WsSession::open(web, &["duplex.v1"]).await;
    session.join("room", None).await;
    session.send_raw(message).await;
    session.ended().await
}

#[tokio::test]
async fn an_oversized_message_gets_resource_exhausted_and_close_1009() {
    let (mut server, _grpc, web) = spawn_duplex_serve_web(&["--max-message-size", "64KiB"]);
    let ended = ended_after(web, Message::Binary(vec![0u8; 100 * 1024].into())).await;
    let end = ended.end.expect("a session_end frame");
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    let close = ended.close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    still_serves(&mut server, web).await;
}

#[tokio::test]
async fn a_message_that_is_not_a_client_frame_gets_close_1007() {
    let (mut server, _grpc, web) = spawn_duplex_serve_web(&[]);
    // A field tag with wire type 7, which protobuf does not have.
    let ended = ended_after(web, Message::Binary(vec![0x0f, 0xff, 0xff].into())).await;
    let end = ended.end.expect("a session_end frame");
    assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
    assert!(end.message.contains("ClientFrame"), "{end:?}");
    assert_eq!(ended.close.map(|c| u16::from(c.code)), Some(1007));
    still_serves(&mut server, web).await;
}

#[tokio::test]
async fn a_text_message_gets_close_1003() {
    let (mut server, _grpc, web) = spawn_duplex_serve_web(&[]);
    let ended = ended_after(web, Message::Text("{\"join\":\"room\"}".into())).await;
    let end = ended.end.expect("a session_end frame");
    assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
    assert!(end.message.contains("binary"), "{end:?}");
    assert_eq!(ended.close.map(|c| u16::from(c.code)), Some(1003));
    still_serves(&mut server, web).await;
}

#[tokio::test]
async fn upgrade_requests_whose_headers_never_finish_are_cut_and_others_are_served() {
    let (mut server, _grpc, web) = spawn_duplex_serve_web(&["--preface-timeout", "1s"]);
    // Fifty slowloris clients: an upgrade request cut in the middle of its headers.
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut tcp = TcpStream::connect(web).expect("connect");
            tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n")
                .unwrap();
            tcp.set_read_timeout(Some(STEP)).unwrap();
            tcp
        })
        .collect();
    // Meanwhile a real client gets a session.
    still_serves(&mut server, web).await;
    for tcp in &mut slow {
        let mut reply = Vec::new();
        let read = std::io::Read::read_to_end(tcp, &mut reply);
        assert!(read.is_ok(), "the server closed the connection: {read:?}");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < STEP,
        "cut after {waited:?}"
    );
    still_serves(&mut server, web).await;
}

#[tokio::test]
async fn a_websocket_that_never_reads_holds_bounded_memory_and_its_lag_policy_fires() {
    const PAYLOAD: usize = 32 * 1024;
    const MESSAGES: usize = 3000;
    let (mut server, grpc, web) = spawn_duplex_serve_web(&[
        "--queue-bytes",
        "1MiB",
        "--retention-messages",
        "100",
        "--send-stall-timeout",
        "2m",
    ]);
    let pid = server.pid();
    let mut stalled = WsSession::open(web, &["duplex.v1"]).await;
    stalled.join("busy", None).await;
    let (before, _) = memory_kib(pid);

    // A busy room: 3000 × 32 KiB = ~94 MiB published (unary, eight at a time) while the
    // WebSocket client reads nothing.
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = HubClient::new(channel);
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let publishes = (0..MESSAGES).map(|_| {
        let mut client = client.clone();
        let request = PublishRequest {
            room: "busy".into(),
            payload: payload.clone(),
            ..Default::default()
        };
        async move { client.publish(request).await.expect("publish").into_inner() }
    });
    timeout(
        STEP * 6,
        futures::stream::iter(publishes)
            .buffer_unordered(8)
            .for_each(|_| async {}),
    )
    .await
    .expect("the publisher is served while a subscriber stalls");
    let (after, peak) = memory_kib(pid);
    let growth_mib = (peak.saturating_sub(before)) as f64 / 1024.0;
    println!(
        "| never-reading WebSocket, {MESSAGES} × 32 KiB | RSS {:.1} → {:.1} MiB, peak {:.1} MiB |",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    // The stalled socket may pin its 1 MiB queue, one write buffer (64 KiB + a message)
    // and 100 retained messages (3 MiB); holding the backlog would be ~90 MiB.
    assert!(growth_mib < 40.0, "peak RSS grew {growth_mib:.1} MiB");

    // The client reads at last: what its socket buffers held, then `lagged` with the last
    // offset delivered, then RESOURCE_EXHAUSTED and the close.
    let ended = stalled.ended().await;
    let lagged = ended
        .before
        .iter()
        .find_map(|frame| match frame {
            Frame::Lagged(lagged) => Some(lagged.clone()),
            _ => None,
        })
        .expect("a lagged frame before the end");
    assert_eq!(lagged.room, "busy");
    let delivered = ended
        .before
        .iter()
        .filter(|frame| matches!(frame, Frame::Message(_)))
        .count();
    assert!(delivered < MESSAGES, "delivered {delivered} of {MESSAGES}");
    let end = ended.end.expect("a session_end frame");
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    assert_eq!(ended.close.map(|c| u16::from(c.code)), Some(1008));
    still_serves(&mut server, web).await;
}

/// The soft limit on open descriptors of this process (`Max open files`).
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(1024)
}

#[tokio::test]
async fn ten_thousand_idle_websockets_stay_open_and_the_server_serves_others() {
    // The test holds one descriptor per socket and so does the server (which inherits the
    // limit): keep 512 spare for everything else.
    let limit = open_files_limit();
    let target = 10_000usize.min(limit.saturating_sub(512) as usize);
    println!("| idle WebSockets | open files limit {limit}: opening {target} |");
    assert!(
        target >= 1000,
        "`ulimit -n` is {limit}: raise it to 10512 for this test"
    );
    let (mut server, _grpc, web) = spawn_duplex_serve_web(&[
        "--max-connections",
        "20000",
        "--max-connections-per-ip",
        "20000",
    ]);
    let pid = server.pid();
    let (before, _) = memory_kib(pid);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(target);
    // Sixteen handshakes at a time.
    let mut opening = futures::stream::iter(0..target)
        .map(|_| WsSession::try_open(web, &["duplex.v1"]))
        .buffer_unordered(16);
    while let Some(opened) = timeout(STEP, opening.next())
        .await
        .expect("a handshake in time")
    {
        sockets.push(opened.expect("the server accepts the WebSocket"));
    }
    drop(opening);
    assert_eq!(sockets.len(), target);
    // Let the server settle (sessions opened, buffers at rest).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after, _) = memory_kib(pid);
    let per_socket = (after.saturating_sub(before)) as f64 * 1024.0 / target as f64;
    println!(
        "| {target} idle WebSockets in {:.1?} | RSS {:.1} → {:.1} MiB: {per_socket:.0} bytes per socket |",
        started.elapsed(),
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    // A socket's read buffer starts at 4 KiB; 64 KiB each would mean the defaults are back.
    assert!(
        per_socket < 40_000.0,
        "{per_socket:.0} bytes per idle WebSocket"
    );
    still_serves(&mut server, web).await;
    // Every socket is still open: a ping on the last one is answered.
    let last = sockets.last_mut().unwrap();
    last.send(duplex_proto::hub::client_frame::Command::Ping(
        duplex_proto::hub::Ping {
            client_time_unix_micros: 7,
        },
    ))
    .await;
    match last.next_non_presence().await {
        Frame::Pong(pong) => assert_eq!(pong.client_time_unix_micros, 7),
        other => panic!("expected a pong, got {other:?}"),
    }
}

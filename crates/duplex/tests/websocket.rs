//! `/ws` on the web listener: a `Hub.Connect` session over a WebSocket, one binary message
//! per frame, against a real `duplex serve` process — the same room order as a gRPC
//! session, resume after reconnect, per-room rights by token, and the end status in a
//! `session_end` frame before the close.

mod common;

use common::session::SessionSteps as _;

use std::collections::BTreeSet;

use common::session::Session;
use common::ws::WsSession;
use common::{STEP, spawn_duplex_serve_web};
use duplex_proto::hub::client_frame::Command;
use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{Code, Ping};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes-length";

/// A server checking HS256 tokens with [`SECRET`]; the secret file lives as long as it.
fn spawn_with_auth() -> (common::ChildGuard, std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let (server, _grpc, web) =
        spawn_duplex_serve_web(&["--jwt-secret-file", secret.to_str().unwrap()]);
    (server, web, dir)
}

#[tokio::test]
async fn a_websocket_session_and_a_grpc_session_see_one_room_order() {
    let (_server, grpc, web) = spawn_duplex_serve_web(&[]);
    let mut browser = WsSession::open(web, &["duplex.v1", "duplex.name.page"]).await;
    assert_eq!(browser.protocol.as_deref(), Some("duplex.v1"));
    browser.join("lobby", None).await;
    let mut native = Session::open(&common::connect(grpc).await, "native").await;
    native.join("lobby", None).await;

    // Both publish, interleaved; both see every message in one order.
    for n in 0..10 {
        browser.publish("lobby", format!("ws-{n}")).await;
        native.publish("lobby", format!("grpc-{n}")).await;
    }
    let seen_by_browser = browser.messages(20).await;
    let seen_by_native = native.messages(20).await;
    let order = |messages: &[duplex_proto::hub::Message]| {
        messages
            .iter()
            .map(|m| (m.offset, m.payload.clone(), m.sender.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        order(&seen_by_browser),
        order(&seen_by_native),
        "one order for both"
    );
    assert!(
        seen_by_browser
            .windows(2)
            .all(|w| w[0].offset < w[1].offset)
    );
    assert!(seen_by_native.iter().any(|m| m.sender == "page"));

    // The client closes: the server answers the close at once (RFC 6455), with no
    // session_end, since nothing may follow a close.
    browser
        .send_raw(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await;
    let ended = browser.ended().await;
    assert!(ended.end.is_none(), "{ended:?}");
    assert_eq!(
        ended.close.as_ref().map(|c| u16::from(c.code)),
        Some(1000),
        "{ended:?}"
    );
}

#[tokio::test]
async fn a_websocket_client_resumes_after_reconnect_with_no_gap_and_no_duplicate() {
    let (_server, grpc, web) = spawn_duplex_serve_web(&[]);
    let mut publisher = Session::open(&common::connect(grpc).await, "publisher").await;
    publisher.join("feed", None).await;

    let mut reader = WsSession::open(web, &["duplex.v1"]).await;
    reader.join("feed", Some(0)).await;
    for n in 0..30 {
        publisher.publish("feed", format!("m{n}")).await;
    }
    let first = reader.messages(10).await;
    let last_seen = first.last().unwrap().offset;
    drop(reader);

    // More messages while the reader is away, then a new socket resumes after the last
    // offset it saw.
    for n in 30..40 {
        publisher.publish("feed", format!("m{n}")).await;
    }
    let mut reader = WsSession::open(web, &["duplex.v1"]).await;
    reader.join("feed", Some(last_seen)).await;
    let rest = reader.messages(30).await;

    let texts: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    let expected: Vec<String> = (0..40).map(|n| format!("m{n}")).collect();
    assert_eq!(texts, expected, "no gap, no duplicate, in order");
    let offsets: BTreeSet<u64> = first.iter().chain(&rest).map(|m| m.offset).collect();
    assert_eq!(offsets.len(), 40);
}

#[tokio::test]
async fn a_token_without_write_rights_gets_a_per_command_error_frame() {
    let (_server, web, _dir) = spawn_with_auth();
    let reader_token = common::hs256_token(SECRET, "reader", &["news"], &[]);
    let bearer = format!("duplex.bearer.{reader_token}");
    let mut session = WsSession::open(web, &["duplex.v1", &bearer]).await;
    assert_eq!(
        session.protocol.as_deref(),
        Some("duplex.v1"),
        "only duplex.v1 is echoed"
    );
    session.join("news", None).await;
    let publish = session.publish("news", "not allowed").await;
    match session.next_non_presence().await {
        Frame::Error(error) => {
            assert_eq!(error.command_id, publish);
            assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");
        }
        other => panic!("expected a command error, got {other:?}"),
    }
    // The session goes on.
    let ping = session
        .send(Command::Ping(Ping {
            client_time_unix_micros: 1,
        }))
        .await;
    match session.next_non_presence().await {
        Frame::Pong(pong) => assert_eq!(pong.command_id, ping),
        other => panic!("expected a pong, got {other:?}"),
    }
    // A token with write rights publishes; its sender is the token's subject.
    let writer = format!(
        "duplex.bearer.{}",
        common::hs256_token(SECRET, "writer", &["news"], &["news"])
    );
    let mut writer = WsSession::open(web, &["duplex.v1", &writer]).await;
    writer.join("news", None).await;
    writer.publish("news", "hello").await;
    let message = session.messages(1).await.remove(0);
    assert_eq!(message.sender, "writer");
}

#[tokio::test]
async fn a_refused_token_gets_session_end_unauthenticated_then_a_close() {
    let (_server, web, _dir) = spawn_with_auth();
    for protocols in [
        vec!["duplex.v1", "duplex.bearer.not.a.jwt"],
        vec!["duplex.v1"],
    ] {
        let session = WsSession::open(web, &protocols).await;
        let ended = tokio::time::timeout(STEP, session.ended())
            .await
            .expect("ended in time");
        let end = ended.end.expect("a session_end frame");
        assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
        assert!(!end.message.contains("not.a.jwt"), "{end:?}");
        let close = ended.close.expect("a close frame");
        assert_eq!(u16::from(close.code), 1008);
        assert_eq!(close.reason.as_str(), "UNAUTHENTICATED");
    }
    // A valid token still gets in.
    let good = format!(
        "duplex.bearer.{}",
        common::hs256_token(SECRET, "ann", &["any"], &["any"])
    );
    let mut session = WsSession::open(web, &["duplex.v1", &good]).await;
    session.join("any", None).await;
}

#[tokio::test]
async fn a_websocket_session_is_told_to_move_before_its_connection_age_then_closed_1001() {
    let (_server, _grpc, web) = spawn_duplex_serve_web(&[
        "--max-connection-age",
        "2s",
        "--max-connection-age-grace",
        "1s",
    ]);
    let mut session = WsSession::open(web, &["duplex.v1"]).await;
    session.join("aging", None).await;
    assert_told_to_move(session.ended().await);
}

#[tokio::test]
async fn an_idle_websocket_session_ends_with_deadline_exceeded() {
    let (_server, _grpc, web) = spawn_duplex_serve_web(&["--idle-timeout", "1s"]);
    let session = WsSession::open(web, &["duplex.v1"]).await;
    let ended = session.ended().await;
    let end = ended.end.expect("a session_end frame");
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
    assert_eq!(ended.close.map(|c| u16::from(c.code)), Some(1008));
}

#[tokio::test]
async fn a_websocket_keeps_its_place_in_the_per_ip_connection_cap_until_it_closes() {
    let (_server, _grpc, web) = spawn_duplex_serve_web(&["--max-connections-per-ip", "2"]);
    let mut first = WsSession::open(web, &["duplex.v1"]).await;
    first.join("capped", None).await;
    let mut second = WsSession::open(web, &["duplex.v1"]).await;
    second.join("capped", None).await;
    // Upgraded connections still count: a third from the IP is refused.
    assert!(
        WsSession::try_open(web, &["duplex.v1"]).await.is_err(),
        "a third WebSocket from one IP is refused"
    );
    // Once one closes, its place is free again.
    drop(first);
    let deadline = std::time::Instant::now() + STEP;
    loop {
        if let Ok(mut third) = WsSession::try_open(web, &["duplex.v1"]).await {
            third.join("capped", None).await;
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place is never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    second.publish("capped", "still served").await;
    assert_eq!(&second.messages(1).await[0].payload[..], b"still served");
}

#[tokio::test]
async fn sigterm_sends_shutdown_then_session_end_unavailable_and_close_1001() {
    let (mut server, _grpc, web) = spawn_duplex_serve_web(&["--shutdown-grace", "10s"]);
    let mut session = WsSession::open(web, &["duplex.v1"]).await;
    session.join("leaving", None).await;
    server.signal("TERM");
    assert_told_to_move(session.ended().await);
    let status = server.wait_for_exit(STEP).expect("the server exits");
    assert!(status.success(), "{status:?}");
}

/// How a session the server moves away (shutdown, connection age) ends: a `shutdown`
/// frame, then `session_end` UNAVAILABLE, then close 1001 (going away).
fn assert_told_to_move(ended: common::ws::Ended) {
    assert!(
        ended
            .before
            .iter()
            .any(|frame| matches!(frame, Frame::Shutdown(_))),
        "a shutdown frame first: {ended:?}"
    );
    let end = ended.end.expect("a session_end frame");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert_eq!(ended.close.map(|c| u16::from(c.code)), Some(1001));
}

/// One masked binary WebSocket frame from a client (RFC 6455 §5.2), payload under 64 KiB.
fn masked_binary_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x82u8];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The payload of the first complete unmasked server frame in `buffer`, if there is one,
/// and the bytes it took.
fn server_frame_payload(buffer: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buffer.len() < 2 {
        return None;
    }
    let opcode = buffer[0] & 0x0f;
    let (length, start) = match buffer[1] & 0x7f {
        126 if buffer.len() >= 4 => (u16::from_be_bytes([buffer[2], buffer[3]]) as usize, 4),
        127 if buffer.len() >= 10 => (
            u64::from_be_bytes(buffer[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        short => (short as usize, 2),
    };
    (buffer.len() >= start + length).then(|| {
        (
            opcode,
            buffer[start..start + length].to_vec(),
            start + length,
        )
    })
}

#[tokio::test]
async fn a_websocket_over_http2_extended_connect_runs_a_session() {
    use prost::Message as _;
    let (_server, _grpc, web) = spawn_duplex_serve_web(&[]);
    let tcp = tokio::net::TcpStream::connect(web).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = tokio::time::timeout(STEP, client.ready())
        .await
        .expect("ready in time")
        .unwrap();
    // A first request's answer comes after the server's SETTINGS, which must announce
    // SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441).
    let health = http::Request::get(format!("http://{web}/healthz"))
        .body(())
        .unwrap();
    let (health, _) = client.send_request(health, true).unwrap();
    let health = tokio::time::timeout(STEP, health)
        .await
        .expect("healthz in time")
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(client.is_extended_connect_protocol_enabled());
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{web}/ws"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "duplex.v1")
        .body(())
        .unwrap();
    request
        .extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (response, mut send) = client.send_request(request, false).unwrap();
    let response = tokio::time::timeout(STEP, response)
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["sec-websocket-protocol"], "duplex.v1");
    let mut body = response.into_body();

    let join = duplex_proto::hub::ClientFrame {
        command_id: 1,
        command: Some(Command::Join(duplex_proto::hub::Join {
            room: "over-h2".into(),
            ..Default::default()
        })),
    };
    send.send_data(masked_binary_frame(&join.encode_to_vec()).into(), false)
        .unwrap();
    let mut buffer = Vec::new();
    let joined = loop {
        if let Some((opcode, payload, used)) = server_frame_payload(&buffer) {
            buffer.drain(..used);
            assert_eq!(opcode, 2, "binary frames only");
            match duplex_proto::hub::ServerFrame::decode(&payload[..])
                .unwrap()
                .frame
            {
                Some(Frame::Joined(joined)) => break joined,
                Some(Frame::Presence(_)) => continue,
                other => panic!("expected joined, got {other:?}"),
            }
        }
        let data = tokio::time::timeout(STEP, body.data())
            .await
            .expect("data in time")
            .expect("the stream open")
            .unwrap();
        let _ = body.flow_control().release_capacity(data.len());
        buffer.extend_from_slice(&data);
    };
    assert_eq!(joined.command_id, 1);
    assert_eq!(joined.room, "over-h2");
}

#[tokio::test]
async fn a_page_from_another_origin_is_refused_and_the_own_and_listed_origins_are_not() {
    let (_server, _grpc, web) =
        spawn_duplex_serve_web(&["--cors-origin", "https://app.example.com"]);
    let from = |origin: String| async move {
        WsSession::try_open_with(web, &["duplex.v1"], &[("origin", &origin)]).await
    };
    match from("https://evil.example".into()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!(
            "another site's page must be refused, got {:?}",
            other.map(|_| ())
        ),
    }
    // The page the listener serves itself, a listed origin, and a client that is not a
    // browser (no Origin) all get sessions.
    for mut session in [
        from(format!("http://{web}")).await.expect("own origin"),
        from("https://app.example.com".into())
            .await
            .expect("a --cors-origin"),
        WsSession::open(web, &["duplex.v1"]).await,
    ] {
        session.join("origins", None).await;
    }
}

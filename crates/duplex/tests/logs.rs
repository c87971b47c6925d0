//! The server's log as an operator reads it: `--log-format json` gives one JSON object per
//! line, connections and Hub sessions say when and why they end, and a run logged at
//! trace level that published secrets with a bearer token shows neither.

mod common;

use common::session::SessionSteps as _;

use common::session::Session;
use common::{STEP, duplex, log_lines_once, spawn_listening, with_bearer};
use duplex_proto::hub::PublishRequest;
use duplex_proto::hub::hub_client::HubClient;
use duplex_proto::hub::server_frame::Frame;
use tonic::transport::Channel;

const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes-length";

/// A string found nowhere else: the clock's nanoseconds and the process id.
fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{label}-{nanos:x}-{:x}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_log_at_trace_level_parses_line_by_line_and_holds_no_payload_or_token() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("jwt.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let log = dir.path().join("serve.log");
    let mut command = duplex();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .arg("--jwt-secret-file")
        .arg(&secret_file)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "trace")
        .stderr(std::fs::File::create(&log).unwrap());
    let (mut server, addr, mut stdout) = spawn_listening(command);
    let web = common::read_web_addr(&mut stdout);

    let token = token("alice");
    let streamed = unique("streamed-secret");
    let unary = unique("unary-secret");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A session that publishes and gets its message back, then closes its side.
    let mut session = Session::open_with_token(&channel, &token).await;
    session.join("vault", None).await;
    session.publish("vault", streamed.clone()).await;
    let delivered = session.messages(1).await;
    assert_eq!(delivered[0].payload, streamed.as_bytes());
    // A unary publish too.
    HubClient::new(channel.clone())
        .publish(with_bearer(
            PublishRequest {
                room: "vault".into(),
                payload: unary.clone().into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("unary publish");
    let Session {
        commands,
        mut frames,
        ..
    } = session;
    drop(commands);
    // The server finishes the stream once the client's side is closed.
    while let Ok(Some(_)) = tokio::time::timeout(STEP, frames.message())
        .await
        .expect("the stream ends")
    {}
    drop(frames);
    drop(channel);

    // The same over a WebSocket, whose library (tungstenite) would log payloads in hex at
    // trace if its cap did not hold.
    let over_websocket = unique("websocket-secret");
    let bearer = format!("duplex.bearer.{token}");
    let mut socket = common::ws::WsSession::open(web, &["duplex.v1", &bearer]).await;
    socket.join("vault", None).await;
    socket.publish("vault", over_websocket.clone()).await;
    assert_eq!(
        socket.messages(1).await[0].payload,
        over_websocket.as_bytes()
    );
    drop(socket);
    log_lines_once(&log, "websocket closed");

    // The client's close reaches the server before it is told to stop.
    log_lines_once(&log, "session ended");
    let lines = log_lines_once(&log, "connection closed");
    server.signal("TERM");
    assert!(
        server
            .wait_for_exit(STEP)
            .is_some_and(|status| status.success())
    );
    let text = std::fs::read_to_string(&log).unwrap();

    // Every line is one JSON object.
    let mut events = Vec::new();
    for line in text.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(event.is_object(), "{line}");
        events.push(event);
    }
    // Trace was really on (h2's frame lines are there), and still no secret shows.
    assert!(
        events.iter().any(|event| event["level"] == "TRACE"),
        "no trace lines: {}",
        lines.join("\n")
    );
    let signature = token.rsplit('.').next().unwrap();
    for (what, needle) in [
        ("the streamed payload", streamed.as_str()),
        ("the unary payload", unary.as_str()),
        ("the WebSocket payload", over_websocket.as_str()),
        ("the token", token.as_str()),
        ("the token's signature", signature),
    ] {
        assert!(!text.contains(needle), "{what} is in the log");
    }
    // Neither the payloads as hex nor the secret behind the token.
    for payload in [&streamed, &over_websocket] {
        assert!(
            !text.contains(&hex(payload.as_bytes())),
            "payload as hex in the log"
        );
    }
    assert!(!text.contains(std::str::from_utf8(SECRET).unwrap()));

    // The session's start and end, with its id, peer and reason.
    let started = events
        .iter()
        .find(|event| event["message"] == "session started")
        .unwrap_or_else(|| panic!("no session start:\n{text}"));
    assert_eq!(started["name"], "alice", "{started}");
    assert!(
        started["peer"]
            .as_str()
            .is_some_and(|peer| peer.starts_with("127.0.0.1:"))
    );
    let ended = events
        .iter()
        .find(|event| event["message"] == "session ended" && event["session"] == started["session"])
        .unwrap_or_else(|| panic!("no session end:\n{text}"));
    assert_eq!(ended["reason"], "client closed its side", "{ended}");
    assert_eq!(ended["peer"], started["peer"], "{ended}");
    assert!(ended["duration_ms"].is_u64(), "{ended}");

    // The connection's end, in its span (peer), with why.
    let closed = events
        .iter()
        .find(|event| event["message"] == "connection closed")
        .unwrap_or_else(|| panic!("no connection end:\n{text}"));
    assert_eq!(closed["reason"], "client closed", "{closed}");
    assert!(closed["duration_ms"].is_u64(), "{closed}");
    let span = closed["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|span| span["name"] == "connection"))
        .unwrap_or_else(|| panic!("no connection span: {closed}"));
    assert_eq!(span["peer"], started["peer"], "{closed}");

    // The web connection the WebSocket came from says it was upgraded, not closed.
    assert!(
        events
            .iter()
            .any(|event| event["message"] == "web connection closed"
                && event["reason"]
                    .as_str()
                    .is_some_and(|reason| reason.starts_with("upgraded to a WebSocket"))),
        "no upgraded web connection line:\n{text}"
    );
}

/// Lower-case hex of `bytes`, as tungstenite prints payloads.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn calls_cut_after_the_shutdown_grace_log_their_session_and_connection_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let mut command = duplex();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .args(["--shutdown-grace", "200ms"])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let (mut server, addr, _stdout) = spawn_listening(command);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let session = runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut session = Session::open(&channel, "bob").await;
        session.join("lobby", None).await;
        session
    });
    log_lines_once(&log, "session started");
    server.signal("TERM");
    assert!(
        server
            .wait_for_exit(STEP)
            .is_some_and(|status| status.success())
    );
    let mut session = session;
    // The client was told to go elsewhere before the server closed.
    let told = runtime.block_on(async {
        loop {
            match tokio::time::timeout(STEP, session.frames.message()).await {
                Ok(Ok(Some(frame))) => {
                    if let Some(Frame::Shutdown(_)) = frame.frame {
                        return true;
                    }
                }
                _ => return false,
            }
        }
    });
    assert!(told, "no shutdown frame");
    let text = std::fs::read_to_string(&log).unwrap();
    let ended = text
        .lines()
        .find(|line| line.contains("session ended"))
        .unwrap_or_else(|| panic!("no session end:\n{text}"));
    assert!(ended.contains("session=1"), "{ended}");
    assert!(ended.contains("peer=127.0.0.1:"), "{ended}");
    assert!(
        ended.contains("reason=\"stopped by the server\""),
        "{ended}"
    );
    let closed = text
        .lines()
        .find(|line| line.contains("connection closed"))
        .unwrap_or_else(|| panic!("no connection end:\n{text}"));
    assert!(
        closed.contains("reason=\"cut after the shutdown grace\""),
        "{closed}"
    );
    assert!(
        closed.contains("connection{number=1 peer=127.0.0.1:"),
        "{closed}"
    );
}

/// An HS256 token for `sub` that may read and write every room for an hour.
fn token(sub: &str) -> String {
    common::hs256_token(SECRET, sub, &["*"], &["*"])
}

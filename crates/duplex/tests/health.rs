//! The standard services beside duplex's own on the gRPC port — `grpc.health.v1.Health`
//! (Check, Watch; NOT_SERVING from the moment shutdown starts) and server reflection (v1
//! and v1alpha) — seen by foreign clients (Python grpcio-health-checking and
//! grpcio-reflection) and by tonic; and `Hub.WatchStats`, the dashboard's feed.

mod common;

use common::session::SessionSteps as _;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use common::session::Session;
use common::{ChildGuard, STEP, repo_root, run_with_input, spawn_duplex_serve, with_bearer};
use duplex_proto::hub::WatchStatsRequest;
use futures::StreamExt as _;
use prost::Message as _;
use tonic::Code;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// A probe script from `interop/python`, run by the test venv's Python against `addr`.
fn probe(script: &str, addr: SocketAddr, args: &[&str]) -> Command {
    let mut command = common::python();
    command
        .arg(repo_root().join("interop/python").join(script))
        .arg("--addr")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[test]
fn a_python_health_watch_sees_not_serving_after_sigterm_before_its_stream_ends() {
    let (mut server, addr) = spawn_duplex_serve(&["--shutdown-grace", "2s"]);
    let mut watcher = ChildGuard(
        probe("health_probe.py", addr, &["--scenario", "watch"])
            .spawn()
            .expect("spawn the probe"),
    );
    let stdout = watcher.0.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = || {
        lines
            .recv_timeout(STEP)
            .expect("the watcher prints a line in time")
    };
    assert_eq!(next(), "status SERVING");
    server.signal("TERM");
    let mut seen = vec![next()];
    while !seen.last().unwrap().starts_with("ended") {
        seen.push(next());
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("status NOT_SERVING"),
        "NOT_SERVING reaches the watcher first, while its stream is still open: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "NOT_SERVING, then the stream ends: {seen:?}");
    let status = server
        .wait_for_exit(STEP)
        .expect("the server exits after its grace period");
    assert!(status.success(), "{status}");
    assert!(watcher.wait_for_exit(STEP).is_some_and(|s| s.success()));
}

#[test]
fn python_health_checks_know_our_services_and_not_others() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let (code, stdout, stderr) =
        run_with_input(probe("health_probe.py", addr, &["--scenario", "check"]), "");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "check (overall) SERVING",
            "check chat.Chat SERVING",
            "check duplex.v1.Hub SERVING",
            "unknown NOT_FOUND",
        ],
        "{stderr}"
    );
}

#[test]
fn python_reflection_v1alpha_lists_the_services_and_resolves_their_methods() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let (code, stdout, stderr) = run_with_input(probe("reflection_probe.py", addr, &[]), "");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    for service in [
        "service chat.Chat",
        "service duplex.v1.Hub",
        "service grpc.health.v1.Health",
        "service grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(lines.contains(&service), "{service} listed: {stdout}");
    }
    for method in [
        "method chat.Chat/Chat chat.Msg chat.Echo client_streaming=True server_streaming=True",
        "method duplex.v1.Hub/Connect duplex.v1.ClientFrame duplex.v1.ServerFrame \
         client_streaming=True server_streaming=True",
        "method grpc.health.v1.Health/Watch grpc.health.v1.HealthCheckRequest \
         grpc.health.v1.HealthCheckResponse client_streaming=False server_streaming=True",
    ] {
        assert!(lines.contains(&method), "{method}: {stdout}\n{stderr}");
    }
}

/// One request on a v1 reflection stream, and its answer.
async fn reflect(
    client: &mut ServerReflectionClient<Channel>,
    request: MessageRequest,
) -> MessageResponse {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    tokio::time::timeout(STEP, responses.message())
        .await
        .expect("in time")
        .expect("a healthy stream")
        .expect("one response")
        .message_response
        .expect("a response body")
}

#[tokio::test]
async fn reflection_v1_lists_services_and_serves_the_hub_descriptor() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let mut client = ServerReflectionClient::new(common::connect(addr).await);
    let MessageResponse::ListServicesResponse(list) =
        reflect(&mut client, MessageRequest::ListServices(String::new())).await
    else {
        panic!("a service list");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for name in [
        "chat.Chat",
        "duplex.v1.Hub",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }

    let MessageResponse::FileDescriptorResponse(files) = reflect(
        &mut client,
        MessageRequest::FileContainingSymbol("duplex.v1.Hub".into()),
    )
    .await
    else {
        panic!("a file descriptor");
    };
    let hub = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .find(|file| file.package() == "duplex.v1")
        .expect("hub.proto's descriptor");
    let service = hub
        .service
        .iter()
        .find(|service| service.name() == "Hub")
        .expect("the Hub service");
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    for method in ["Connect", "Publish", "History", "Subscribe", "WatchStats"] {
        assert!(methods.contains(&method), "{method} in {methods:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stats_ticks_show_publishes_while_a_client_publishes() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let mut stats = duplex_proto::hub::hub_client::HubClient::new(common::connect(addr).await)
        .watch_stats(WatchStatsRequest {})
        .await
        .expect("WatchStats answers")
        .into_inner();
    let first = tokio::time::timeout(STEP, stats.message())
        .await
        .expect("a first tick at once")
        .expect("healthy")
        .expect("a tick");
    assert_eq!(
        first.messages_in_per_second, 0.0,
        "rates are zero in the first tick"
    );

    // A session publishes (and reads its frames) until the test has what it looks for.
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let stop = stop.clone();
        let channel = common::connect(addr).await;
        tokio::spawn(async move {
            let mut session = Session::open(&channel, "publisher").await;
            session.join("watched", None).await;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && sent < 10_000 {
                session.publish("watched", format!("tick {sent}")).await;
                sent += 1;
                // Its own ack and echo: read them so its queue never fills.
                session.next().await;
                session.next().await;
            }
            sent
        })
    };
    let deadline = Instant::now() + STEP;
    let seen = loop {
        let tick = tokio::time::timeout(STEP, stats.message())
            .await
            .expect("a tick a second")
            .expect("healthy")
            .expect("a tick");
        if tick.messages_in_per_second > 0.0 && tick.sessions >= 1 {
            break tick;
        }
        assert!(
            Instant::now() < deadline,
            "no tick with publishes: last {tick:?}"
        );
    };
    stop.store(true, Ordering::Relaxed);
    let sent = publishing.await.unwrap();
    assert!(sent > 0);
    assert!(seen.rooms >= 1, "{seen:?}");
    assert!(seen.connections >= 2, "{seen:?}");
    assert!(seen.messages_out_per_second > 0.0, "{seen:?}");
    assert!(seen.deliveries_per_second > 0.0, "{seen:?}");
    assert!(
        seen.publish_ack_p99_seconds > 0.0 && seen.publish_ack_p99_seconds <= 10.0,
        "{seen:?}"
    );
    assert!(seen.time_unix_micros > first.time_unix_micros);
}

#[tokio::test]
async fn watch_stats_needs_a_valid_token_when_tokens_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let secret_path = dir.path().join("secret");
    let secret = b"a-test-secret-of-at-least-32-bytes-length";
    std::fs::write(&secret_path, secret).unwrap();
    let (_server, addr) = spawn_duplex_serve(&[
        "--jwt-secret-file",
        secret_path.to_str().unwrap(),
        "--allow-anonymous",
    ]);
    let mut client = duplex_proto::hub::hub_client::HubClient::new(common::connect(addr).await);
    let status = client
        .watch_stats(WatchStatsRequest {})
        .await
        .expect_err("an anonymous caller is refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client
        .watch_stats(with_bearer(WatchStatsRequest {}, "not.a.token"))
        .await
        .expect_err("a bad token is refused");
    assert_eq!(status.code(), Code::Unauthenticated);

    // A valid token with no room rights at all may watch.
    let claims =
        serde_json::json!({ "sub": "operator", "exp": duplex_server::auth::unix_now() + 3600 });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap();
    let mut ticks = client
        .watch_stats(with_bearer(WatchStatsRequest {}, &token))
        .await
        .expect("a valid token watches")
        .into_inner();
    let tick = tokio::time::timeout(STEP, ticks.next())
        .await
        .expect("in time")
        .expect("a tick")
        .expect("healthy");
    assert!(tick.time_unix_micros > 0);
}

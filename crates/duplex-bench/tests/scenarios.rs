//! Every scenario against real servers on loopback: our in-process `duplex serve` and the
//! plain tonic peer binary. Behaviour only — counts, errors, what the report holds — never
//! timing thresholds: those are the benchmark's, not the tests'.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use duplex_bench::{BenchArgs, Report, Scenario};
use duplex_server::{ServeConfig, Server, StoreKind};

/// A `duplex serve` in this process (memory store) on a picked port.
async fn start_server() -> SocketAddr {
    let config = ServeConfig {
        listen: "127.0.0.1:0".into(),
        web_listen: "off".into(),
        store: StoreKind::Memory,
        ..ServeConfig::default()
    };
    let server = Server::bind(config).await.expect("bind a loopback port");
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run(std::future::pending()));
    addr
}

/// Runs a scenario on a blocking thread (the bench starts its own runtimes).
async fn bench(args: BenchArgs) -> Report {
    tokio::task::spawn_blocking(move || duplex_bench::run(&args))
        .await
        .unwrap()
        .expect("the run completes")
}

fn args(scenario: Scenario, addr: SocketAddr) -> BenchArgs {
    let mut args = BenchArgs::new(scenario, addr.to_string());
    args.quiet = true;
    args.duration = Duration::from_secs(20);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingpong_stops_at_the_message_count_with_every_reply_checked() {
    let addr = start_server().await;
    let mut run = args(Scenario::EchoPingpong, addr);
    run.messages = Some(200);
    run.streams = 3;
    let report = bench(run).await;
    assert_eq!(report.messages, 200);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.latency.unwrap().count, 200);
    assert_eq!(report.to_json()["lost"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_bounds_a_run_without_a_message_count() {
    let addr = start_server().await;
    let mut run = args(Scenario::EchoStream, addr);
    run.duration = Duration::from_millis(300);
    run.in_flight = Some(4);
    let started = std::time::Instant::now();
    let report = bench(run).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(report.messages > 0);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_mode_measures_from_the_schedule() {
    let addr = start_server().await;
    let mut run = args(Scenario::EchoPingpong, addr);
    run.messages = Some(50);
    run.rate = Some(500.0);
    let report = bench(run).await;
    assert_eq!(report.messages, 50);
    assert!(report.corrected);
    // 50 messages at 500/s take about 0.1 s on schedule: the run cannot be much faster.
    assert!(
        report.elapsed >= Duration::from_millis(90),
        "{:?}",
        report.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_chat_counts_errors_by_status_code() {
    let addr = start_server().await;
    let mut run = args(Scenario::EchoPingpong, addr);
    run.path = "/chat.Chat/Nope".into();
    run.messages = Some(10);
    run.streams = 2;
    let report = bench(run).await;
    assert_eq!(report.messages, 0);
    assert_eq!(
        report.errors.get("UNIMPLEMENTED"),
        Some(&2),
        "{:?}",
        report.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_rooms_deliver_each_publish_to_their_own_subscribers() {
    let addr = start_server().await;
    let mut run = args(Scenario::Fanout, addr);
    run.publishers = 2;
    run.subscribers = 6;
    run.rooms = 2;
    run.connections = 3;
    run.messages = Some(30);
    run.threads = 2;
    let report = bench(run).await;
    // 30 publishes over 2 rooms of 3 subscribers each: 90 deliveries.
    assert_eq!(report.messages, 90, "{}", report.to_json());
    assert_eq!(report.extra["acked"], 30);
    assert_eq!(report.extra["undelivered"], 0);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

/// Also with `--client-ids`: every publish then carries an id the server accepts and
/// records, and each is acked (an id the server could not read would fail the publish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_without_subscribers_counts_durable_acks() {
    let addr = start_server().await;
    for client_ids in [false, true] {
        let mut run = args(Scenario::Fanout, addr);
        run.publishers = 3;
        run.subscribers = 0;
        run.rooms = 3;
        run.messages = Some(300);
        run.client_ids = client_ids;
        let report = bench(run).await;
        assert_eq!(report.unit, "acked publishes");
        assert_eq!(report.messages, 300);
        assert_eq!(report.ack_latency.unwrap().count, 300);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_the_whole_history() {
    let addr = start_server().await;
    let mut run = args(Scenario::Resume, addr);
    run.history = 2_000;
    let report = bench(run).await;
    assert_eq!(report.messages, 2_000);
    assert_eq!(report.extra["history"], 2_000);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_every_session_and_reports_rss_per_session() {
    let addr = start_server().await;
    let mut run = args(Scenario::Idle, addr);
    run.sessions = 120;
    run.rooms = 3;
    run.duration = Duration::from_millis(200);
    // This process is the server: its RSS is what is read.
    run.server_pid = vec![std::process::id()];
    let report = bench(run).await;
    assert_eq!(report.messages, 120);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.extra.contains_key("server_rss_per_session_bytes"));
    assert_eq!(report.latency.unwrap().count, 120);
}

/// The plain tonic peer, killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tonic_peer_serves_the_echo_scenarios() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plain-tonic-echo"))
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start plain-tonic-echo");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let peer = Peer(child);
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("expected `listening on ADDR`, got {line:?}"))
        .parse()
        .unwrap();
    let mut run = args(Scenario::EchoStream, addr);
    run.messages = Some(500);
    run.streams = 4;
    run.server_pid = vec![peer.0.id()];
    let report = bench(run).await;
    assert_eq!(report.messages, 500);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.server.unwrap().pid, peer.0.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_a_setup_error() {
    let mut run = args(Scenario::EchoPingpong, "127.0.0.1:1".parse().unwrap());
    run.connect_timeout = Duration::from_secs(2);
    let outcome = tokio::task::spawn_blocking(move || duplex_bench::run(&run))
        .await
        .unwrap();
    let error = outcome.expect_err("no server");
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
}

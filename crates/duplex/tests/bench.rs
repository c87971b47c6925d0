//! `duplex bench` as a user runs it: against a real `duplex serve`, printing JSON that
//! scripts read. Behaviour only (counts, errors, shape): no timing thresholds here.

mod common;

use std::process::Output;
use std::time::Duration;

use common::nats::NatsCluster;
use common::{STEP, duplex, spawn_duplex_serve, spawn_duplex_serve_web};
use serde_json::Value;

/// Runs `duplex bench ARGS --json --quiet` and parses what it prints.
fn bench_json(args: &[String]) -> Value {
    let mut child = duplex()
        .arg("bench")
        .args(args)
        .args(["--json", "--quiet", "--duration", "20s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run duplex bench");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > STEP * 2 {
            let _ = child.kill();
            panic!("duplex bench {args:?} did not finish within {:?}", STEP * 2);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(status.success(), "duplex bench {args:?} failed: {stderr}");
    serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}",
            String::from_utf8_lossy(&stdout)
        )
    })
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn echo_pingpong_json_counts_every_round_trip_with_server_usage() {
    let (server, addr) = spawn_duplex_serve(&[]);
    let addr = addr.to_string();
    let pid = server.pid().to_string();
    let report = bench_json(&args(&[
        "echo-pingpong",
        "--addr",
        &addr,
        "--messages",
        "200",
        "--server-pid",
        &pid,
    ]));
    assert_eq!(report["scenario"], "echo-pingpong");
    assert_eq!(report["messages"], 200);
    assert_eq!(report["errors_total"], 0, "{report}");
    assert_eq!(report["latency_us"]["count"], 200);
    assert_eq!(report["latency_corrected"], false);
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["latency_us"][key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(report["throughput_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        report["server"]["pid"].as_u64(),
        Some(u64::from(server.pid()))
    );
    assert!(report["server"]["peak_rss_kib"].as_u64().unwrap() > 0);
}

#[test]
fn echo_stream_json_counts_pipelined_messages_over_streams_and_connections() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let report = bench_json(&args(&[
        "echo-stream",
        "--addr",
        &addr.to_string(),
        "--streams",
        "6",
        "--connections",
        "2",
        "--in-flight",
        "8",
        "--messages",
        "1000",
        "--rate",
        "20000",
    ]));
    assert_eq!(report["messages"], 1000);
    assert_eq!(report["errors_total"], 0, "{report}");
    assert_eq!(report["latency_corrected"], true);
    assert_eq!(report["config"]["streams"], 6);
}

#[test]
fn fanout_json_counts_one_delivery_per_subscriber_per_publish() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let report = bench_json(&args(&[
        "fanout",
        "--addr",
        &addr.to_string(),
        "--publishers",
        "2",
        "--subscribers",
        "5",
        "--rooms",
        "1",
        "--connections",
        "2",
        "--messages",
        "40",
    ]));
    assert_eq!(report["published"], 40);
    assert_eq!(report["acked"], 40);
    assert_eq!(report["messages"], 200, "{report}");
    assert_eq!(report["undelivered"], 0);
    assert_eq!(report["errors_total"], 0, "{report}");
    assert_eq!(report["latency_us"]["count"], 200);
}

#[test]
fn fanout_over_websockets_counts_one_delivery_per_subscriber_per_publish() {
    let (_server, addr, web) = spawn_duplex_serve_web(&[]);
    let report = bench_json(&args(&[
        "fanout",
        "--addr",
        &addr.to_string(),
        "--transport",
        "ws",
        "--web-target",
        &web.to_string(),
        "--publishers",
        "2",
        "--subscribers",
        "5",
        "--rooms",
        "1",
        "--messages",
        "40",
    ]));
    assert_eq!(report["config"]["transport"], "ws", "{report}");
    assert_eq!(report["published"], 40);
    assert_eq!(report["messages"], 200, "{report}");
    assert_eq!(report["undelivered"], 0);
    assert_eq!(report["errors_total"], 0, "{report}");
    assert_eq!(report["latency_us"]["count"], 200);
}

#[test]
fn nats_fanout_counts_one_delivery_per_subscription_per_publish() {
    let nats = NatsCluster::single();
    // Two processes measured (as for a cluster's nodes): nats-server and this test.
    let nats_pid = nats.nodes[0].pid().unwrap();
    let pids = format!("{nats_pid},{}", std::process::id());
    let report = bench_json(&args(&[
        "nats-fanout",
        "--nats",
        &nats.urls(),
        "--publishers",
        "2",
        "--subscribers",
        "7",
        "--connections",
        "3",
        "--window",
        "4",
        "--messages",
        "60",
        "--server-pid",
        &pids,
    ]));
    assert_eq!(report["scenario"], "nats-fanout");
    assert_eq!(report["published"], 60, "{report}");
    // Every subscription, whichever connection it is on, gets every publish once.
    assert_eq!(report["messages"], 60 * 7, "{report}");
    assert_eq!(report["undelivered"], 0, "{report}");
    assert_eq!(report["errors_total"], 0, "{report}");
    assert_eq!(report["latency_us"]["count"], 420);
    assert_eq!(report["config"]["connections"], 3);
    assert!(
        report["server"]["cpu_us_per_message"].as_f64().is_some(),
        "{report}"
    );
    let processes = report["server"]["processes"]
        .as_array()
        .expect("one entry each");
    let listed: Vec<u64> = processes
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [u64::from(nats_pid), u64::from(std::process::id())]);
    let sum: f64 = processes.iter().map(|p| p["cpu_s"].as_f64().unwrap()).sum();
    let total = report["server"]["cpu_s"].as_f64().unwrap();
    assert!(
        (sum - total).abs() < 0.02 * processes.len() as f64,
        "{report}"
    );
}

#[test]
fn nats_publish_gets_increasing_sequences_from_a_real_stream() {
    let nats = NatsCluster::single();
    let report = bench_json(&args(&[
        "nats-publish",
        "--nats",
        &nats.urls(),
        "--publishers",
        "3",
        "--subjects",
        "2",
        "--in-flight",
        "16",
        "--messages",
        "300",
        "--keep-stream",
    ]));
    assert_eq!(report["scenario"], "nats-publish");
    assert_eq!(report["published"], 300, "{report}");
    assert_eq!(report["acked"], 300, "{report}");
    assert_eq!(report["messages"], 300, "{report}");
    assert_eq!(report["errors_total"], 0, "{report}");
    assert_eq!(report["sequence_regressions"], 0, "{report}");
    assert_eq!(report["first_seq"], 1, "{report}");
    assert_eq!(report["last_seq"], 300, "{report}");
    assert_eq!(report["stream_messages"], 300, "{report}");
    assert_eq!(report["latency_us"]["count"], 300);

    // The stream as NATS itself reports it, through another client.
    let stream = report["stream"].as_str().unwrap().to_owned();
    let url = nats.nodes[0].url();
    let info = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let jetstream = async_nats::jetstream::new(client);
            let mut stream = jetstream.get_stream(&stream).await.unwrap();
            stream.info().await.unwrap().clone()
        });
    assert_eq!(info.state.messages, 300);
    assert_eq!(info.state.last_sequence, 300);
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert_eq!(info.config.subjects.len(), 1);
}

#[test]
fn nats_publish_deletes_its_stream_and_fails_clearly_without_a_server() {
    let nats = NatsCluster::single();
    let report = bench_json(&args(&[
        "nats-publish",
        "--nats",
        &nats.urls(),
        "--messages",
        "20",
    ]));
    assert_eq!(report["acked"], 20, "{report}");
    let stream = report["stream"].as_str().unwrap().to_owned();
    let url = nats.nodes[0].url();
    let names: Vec<String> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            use futures::TryStreamExt as _;
            let client = async_nats::connect(url).await.unwrap();
            let jetstream = async_nats::jetstream::new(client);
            jetstream.stream_names().try_collect().await.unwrap()
        });
    assert!(!names.contains(&stream), "{names:?} still has {stream}");

    let output = duplex()
        .args([
            "bench",
            "nats-publish",
            "--quiet",
            "--nats",
            "nats://127.0.0.1:1",
        ])
        .args(["--connect-timeout", "2s"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
}

#[test]
fn fanout_and_resume_spread_over_the_nodes_of_a_cluster() {
    let nats = NatsCluster::single();
    let node = |name: &str| {
        let mut command = duplex();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--cluster"])
            .arg(nats.urls())
            .args(["--node-name", name]);
        let (process, addr, _stdout) = common::spawn_listening(command);
        (process, addr)
    };
    let (_a, a) = node("a");
    let (_b, b) = node("b");
    let both = format!("{a},{b}");
    // Subscriber connection c and publisher p go to node c % 2 and p % 2: every subscriber
    // on either node gets every publish of either node.
    let report = bench_json(&args(&[
        "fanout",
        "--addr",
        &both,
        "--publishers",
        "2",
        "--subscribers",
        "6",
        "--connections",
        "2",
        "--messages",
        "40",
    ]));
    assert_eq!(report["published"], 40, "{report}");
    assert_eq!(report["acked"], 40, "{report}");
    assert_eq!(report["messages"], 40 * 6, "{report}");
    assert_eq!(report["undelivered"], 0, "{report}");
    assert_eq!(report["errors_total"], 0, "{report}");

    // Stored through node a, replayed from node b.
    let report = bench_json(&args(&["resume", "--addr", &both, "--history", "300"]));
    assert_eq!(report["messages"], 300, "{report}");
    assert_eq!(report["errors_total"], 0, "{report}");
}

#[test]
fn text_report_without_json_names_the_scenario_and_the_errors() {
    let (_server, addr) = spawn_duplex_serve(&[]);
    let output = duplex()
        .args(["bench", "echo-pingpong", "--quiet", "--messages", "20"])
        .args(["--addr", &addr.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("echo-pingpong against"), "{text}");
    assert!(text.contains("20 round trips"), "{text}");
    assert!(text.contains("errors: none"), "{text}");
}

#[test]
fn bench_against_nothing_fails_with_the_address() {
    let output = duplex()
        .args(["bench", "echo-pingpong", "--quiet", "--addr", "127.0.0.1:1"])
        .args(["--connect-timeout", "2s"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
}

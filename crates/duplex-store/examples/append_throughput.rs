//! How fast durable appends go: concurrent appenders, one message per append, each waiting
//! for its ack (fsync) before the next, for a fixed time.
//!
//! ```text
//! cargo run --release -p duplex-store --example append_throughput -- [SECONDS] [APPENDERS] [DIR]
//! ```
//!
//! Defaults: 3 seconds, 16 appenders, 64-byte payloads, a fresh temporary directory (put
//! DIR on the disk you mean to measure: a tmpfs makes fsync free).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use duplex_store::{NewMessage, RedbStore, Retention, Store};

const PAYLOAD_BYTES: usize = 64;

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(3.0, |s| s.parse().expect("SECONDS"));
    let appenders: u64 = args.next().map_or(16, |s| s.parse().expect("APPENDERS"));
    let temp = tempfile::tempdir().expect("temporary directory");
    let dir = args
        .next()
        .map_or_else(|| temp.path().to_owned(), Into::into);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(Duration::from_secs_f64(seconds), appenders, dir));
}

async fn run(duration: Duration, appenders: u64, dir: std::path::PathBuf) {
    let store = Arc::new(RedbStore::open(&dir, Retention::default()).expect("open store"));
    let payload = Bytes::from(vec![b'x'; PAYLOAD_BYTES]);
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..appenders)
        .map(|task| {
            let store = store.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let room = format!("bench-{task}");
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let message = NewMessage {
                        room: room.clone(),
                        time_unix_micros: now_micros(),
                        sender: "bench".into(),
                        content_type: String::new(),
                        client_id: String::new(),
                        key: String::new(),
                        payload: payload.clone(),
                    };
                    let sent = Instant::now();
                    store.append(vec![message]).await.expect("append");
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("appender"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let messages = latencies.len() as f64;
    let commits = store.commits() as f64;
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{appenders} appenders x 1 msg of {PAYLOAD_BYTES} B, {elapsed:.1} s, data in {}",
        store.path().display()
    );
    println!(
        "{:.0} msgs/s, {:.0} commits/s, {:.1} msgs per commit; ack latency p50 {:?} p99 {:?} max {:?}",
        messages / elapsed,
        commits / elapsed,
        messages / commits,
        percentile(0.50),
        percentile(0.99),
        percentile(1.0),
    );
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

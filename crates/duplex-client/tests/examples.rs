//! The examples, run as a user would run them against a real server on a loopback port:
//! what `publish` stores, `subscribe` prints, and a restarted `subscribe` resumes after
//! what it printed, with no gap and no repeat.

#[path = "../examples/subscribe.rs"]
#[allow(dead_code)] // `main` is the example's own
mod subscribe;

use std::time::Duration;

use duplex_server::{ServeConfig, Server, StoreKind};

const STEP: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_subscribe_resumes_after_a_restart_of_the_subscriber() {
    let server = Server::bind(ServeConfig {
        listen: "127.0.0.1:0".into(),
        web_listen: "off".into(),
        store: StoreKind::Memory,
        ..ServeConfig::default()
    })
    .await
    .unwrap();
    let addr = server.local_addrs()[0].to_string();
    tokio::spawn(server.run(std::future::pending()));
    let options = |name| subscribe::publish::options_from_env(&addr, name).unwrap();

    let input: &[u8] = b"one\ntwo\nthree\n";
    let offsets = subscribe::publish::publish_lines(options("p"), "news", input)
        .await
        .unwrap();
    assert_eq!(offsets, [1, 2, 3]);

    let dir = tempfile::tempdir().unwrap();
    let offset_file = dir.path().join("news.offset");
    // One run of the subscriber: the next two messages it shows.
    let next_two = || async {
        let mut shown = Vec::new();
        tokio::time::timeout(
            STEP,
            subscribe::follow(options("s"), "news", &offset_file, 2, |l| shown.push(l)),
        )
        .await
        .unwrap()
        .unwrap();
        shown
    };
    assert_eq!(next_two().await, ["1 one", "2 two"]);

    // Stopped after two; more arrive meanwhile; the next run starts after offset 2.
    let input: &[u8] = b"four\n";
    subscribe::publish::publish_lines(options("p"), "news", input)
        .await
        .unwrap();
    assert_eq!(next_two().await, ["3 three", "4 four"]);
}

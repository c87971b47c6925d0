//! `/metrics` on the web listener, scraped over raw HTTP/1.1 from real `duplex serve`
//! processes while real clients publish, lag, get refused and fail auth; and `/readyz`.
//! The text format is parsed line by line (`name{labels} value`), so a check names the
//! exact series it reads. The async tests run multi-threaded: a scrape blocks its thread,
//! and the clients' connections must go on meanwhile.

mod common;

use common::session::SessionSteps as _;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::session::Session;
use common::{STEP, spawn_duplex_serve_web, with_bearer};
use duplex_proto::hub::PublishRequest;
use tonic::Code;

/// One scrape: every sample by name and its labels (sorted), and the content type.
struct Scrape {
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
    content_type: String,
}

impl Scrape {
    /// The value of `name` with exactly `labels`; panics with the series present if absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        match self.samples.get(&(name.to_owned(), key)) {
            Some(value) => *value,
            None => panic!(
                "no sample {name}{labels:?}; the series of that name: {:?}",
                self.samples
                    .keys()
                    .filter(|(n, _)| n == name)
                    .collect::<Vec<_>>()
            ),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.samples.keys().any(|(n, _)| n == name)
    }
}

/// Parses the Prometheus text format: comments skipped, each other line
/// `name{k="v",...} value` or `name value`.
fn parse(text: &str) -> BTreeMap<(String, Vec<(String, String)>), f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("a sample line is `series value`: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), Vec::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels end with `}}`: {line:?}"));
                (name.to_owned(), parse_labels(body, line))
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let previous = samples.insert((name, labels), value);
        assert!(previous.is_none(), "a series appears twice: {line:?}");
    }
    samples
}

/// `k="v",k2="v2"` (values may hold escaped quotes and commas), sorted by key.
fn parse_labels(body: &str, line: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label `k=\"v\"` in {line:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(match escaped {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                Some((index, '"')) => break index,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.push((key.to_owned(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels.sort();
    labels
}

/// GET `path` on the web listener over a fresh HTTP/1.1 connection: (status, headers, body).
fn get(web: SocketAddr, path: &str) -> (u16, String, String) {
    try_get(web, path).expect("the web listener answers")
}

/// [`get`], or `None` when the connection is refused or closed without a reply.
fn try_get(web: SocketAddr, path: &str) -> Option<(u16, String, String)> {
    let mut tcp = TcpStream::connect(web).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).ok()?;
    if reply.is_empty() {
        return None;
    }
    let reply = String::from_utf8(reply).expect("a text reply");
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {reply:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Some((status, head.to_owned(), body.to_owned()))
}

fn scrape(web: SocketAddr) -> Scrape {
    let (status, head, body) = get(web, "/metrics");
    assert_eq!(status, 200, "{head}");
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Scrape {
        samples: parse(&body),
        content_type,
    }
}

/// Scrapes until `done` holds (bounded by [`STEP`]); returns the last scrape.
fn scrape_until(web: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + STEP;
    loop {
        let scrape = scrape(web);
        if done(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "within {STEP:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_as_clients_publish_and_subscribe() {
    let (_server, grpc, web) = spawn_duplex_serve_web(&[]);
    let before = scrape(web);
    assert_eq!(
        before.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(before.value("duplex_messages_published_total", &[]), 0.0);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(before.has(name), "{name} is exported");
    }
    assert!(before.value("process_resident_memory_bytes", &[]) > 0.0);

    let channel = common::connect(grpc).await;
    let mut subscriber = Session::open(&channel, "reader").await;
    subscriber.join("metrics-room", None).await;
    let mut publisher = Session::open(&channel, "writer").await;
    publisher.join("metrics-room", None).await;
    const MESSAGES: usize = 25;
    for index in 0..MESSAGES {
        publisher
            .publish("metrics-room", format!("message {index}"))
            .await;
    }
    let received = subscriber.messages(MESSAGES).await;
    assert_eq!(received.len(), MESSAGES);
    // A third session resumes from the start: a replay of every message.
    let mut resumer = Session::open(&channel, "resumer").await;
    resumer.join("metrics-room", Some(0)).await;
    assert_eq!(resumer.messages(MESSAGES).await.len(), MESSAGES);

    let after = scrape(web);
    let published = after.value("duplex_messages_published_total", &[]);
    assert_eq!(published, MESSAGES as f64, "every publish acked once");
    assert!(after.value("duplex_published_bytes_total", &[]) >= (MESSAGES * 9) as f64);
    assert_eq!(
        after.value("duplex_publish_ack_seconds_count", &[]),
        MESSAGES as f64
    );
    assert_eq!(
        after.value("duplex_publish_ack_seconds_bucket", &[("le", "+Inf")]),
        MESSAGES as f64
    );
    assert!(after.value("duplex_publish_ack_seconds_sum", &[]) > 0.0);
    assert!(
        after.value("duplex_fanout_deliveries_total", &[]) >= MESSAGES as f64,
        "each message went to the subscriber"
    );
    assert!(
        after.value(
            "duplex_streams_started_total",
            &[("service", "duplex.v1.Hub"), ("method", "Connect")]
        ) >= 2.0
    );
    assert!(
        after.value(
            "duplex_messages_received_total",
            &[("service", "duplex.v1.Hub")]
        ) >= (MESSAGES + 2) as f64,
        "the joins and every publish frame"
    );
    assert!(
        after.value(
            "duplex_messages_sent_total",
            &[("service", "duplex.v1.Hub")]
        ) >= (MESSAGES + 1) as f64,
        "the reader's Joined and the messages it received (the writer's frames may still \
         be on their way)"
    );
    assert_eq!(after.value("duplex_sessions", &[]), 3.0);
    assert_eq!(after.value("duplex_resumes_total", &[]), 1.0);
    assert_eq!(
        after.value("duplex_resume_replayed_messages_total", &[]),
        MESSAGES as f64
    );
    assert_eq!(after.value("duplex_rooms", &[]), 1.0);
    assert!(after.value("duplex_connections_open", &[]) >= 1.0);
    assert!(after.value("duplex_store_commit_seconds_count", &[]) >= 1.0);
    assert_eq!(
        after.value(
            "duplex_subscribers_lagged_total",
            &[("policy", "disconnect")]
        ),
        0.0
    );

    // Sessions end: the gauges come back down.
    drop(subscriber);
    drop(publisher);
    drop(resumer);
    let quiet = scrape_until(web, "sessions and queues back to zero", |s| {
        s.value("duplex_sessions", &[]) == 0.0
            && s.value("duplex_subscriber_queued_frames", &[]) == 0.0
    });
    assert_eq!(quiet.value("duplex_subscriber_queued_bytes", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_counted_as_lagged_and_disconnected() {
    let (_server, grpc, web) = spawn_duplex_serve_web(&["--queue-frames", "2"]);
    let channel = common::connect(grpc).await;
    // Joins, then never reads again: h2's windows fill, then its queue of 2 frames.
    let mut stalled = Session::open(&channel, "stalled").await;
    stalled.join("busy", None).await;
    // Unary publishes on another connection: each returns once acked (and fanned out).
    let mut publisher = common::hub_client(grpc, 1 << 20).await;
    let payload = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let scraped = {
        let mut sent = 0;
        let deadline = Instant::now() + STEP;
        loop {
            for _ in 0..16 {
                publisher
                    .publish(PublishRequest {
                        room: "busy".into(),
                        payload: payload.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("publish");
                sent += 1;
            }
            let scraped = scrape(web);
            let disconnected = scraped.value(
                "duplex_subscribers_disconnected_total",
                &[("policy", "disconnect"), ("reason", "lagged")],
            );
            if disconnected >= 1.0 {
                break scraped;
            }
            assert!(
                Instant::now() < deadline && sent < 2000,
                "no lagged disconnect after {sent} publishes of 64 KiB"
            );
        }
    };
    assert!(
        scraped.value(
            "duplex_subscribers_lagged_total",
            &[("policy", "disconnect")]
        ) >= 1.0
    );
    assert_eq!(
        scraped.value(
            "duplex_subscriber_messages_dropped_total",
            &[("policy", "disconnect")]
        ),
        0.0,
        "disconnect drops nothing silently"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_by_reason() {
    let (_server, grpc, web) = spawn_duplex_serve_web(&["--max-connections-per-ip", "2"]);
    let before = scrape(web);
    let refused_before = before.value(
        "duplex_connections_refused_total",
        &[("reason", "max_connections_per_ip")],
    );
    assert_eq!(refused_before, 0.0);
    // Two idle connections hold the address's two places; a third is refused (closed).
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(grpc).unwrap()).collect();
    let deadline = Instant::now() + STEP;
    loop {
        let mut third = TcpStream::connect(grpc).expect("the kernel accepts");
        let mut byte = [0u8; 1];
        // Refused: closed at once. Admitted (the held ones not counted yet): the preface
        // timeout would close it much later, so give up on it after a moment.
        third
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        if matches!(third.read(&mut byte), Ok(0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a third connection was never refused"
        );
    }
    drop(held);
    // The places are given back on close; then a scrape (from the same address) gets in.
    let deadline = Instant::now() + STEP;
    while try_get(web, "/healthz").is_none() {
        assert!(
            Instant::now() < deadline,
            "the held places were never released"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let scraped = scrape(web);
    assert!(
        scraped.value(
            "duplex_connections_refused_total",
            &[("reason", "max_connections_per_ip")]
        ) >= 1.0
    );
    assert!(
        scraped.value("duplex_connections_accepted_total", &[])
            >= before.value("duplex_connections_accepted_total", &[]) + 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_missing_tokens_are_counted_as_auth_failures() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"a-test-secret-of-at-least-32-bytes-length").unwrap();
    let (_server, grpc, web) =
        spawn_duplex_serve_web(&["--jwt-secret-file", secret.to_str().unwrap()]);
    let mut client = common::hub_client(grpc, 1 << 20).await;
    let publish = || PublishRequest {
        room: "r".into(),
        payload: bytes::Bytes::from_static(b"x"),
        ..Default::default()
    };
    let status = client.publish(publish()).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    for _ in 0..2 {
        let status = client
            .publish(with_bearer(publish(), "not.a.token"))
            .await
            .expect_err("a bad token");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // A WebSocket offering a bad token is refused and counted the same way.
    let refused = common::ws::WsSession::open(web, &["duplex.v1", "duplex.bearer.not.a.token"])
        .await
        .ended()
        .await;
    assert_eq!(
        refused.end.map(|end| end.code),
        Some(duplex_proto::hub::Code::Unauthenticated as i32)
    );
    let scraped = scrape(web);
    assert_eq!(
        scraped.value("duplex_auth_failures_total", &[("reason", "missing_token")]),
        1.0
    );
    assert_eq!(
        scraped.value("duplex_auth_failures_total", &[("reason", "invalid_token")]),
        3.0
    );
    assert_eq!(scraped.value("duplex_messages_published_total", &[]), 0.0);
}

#[test]
fn metrics_false_turns_the_route_off_and_readyz_answers() {
    let (_server, _grpc, web) = spawn_duplex_serve_web(&["--metrics", "false"]);
    let (status, head, _) = get(web, "/metrics");
    assert_eq!(status, 404, "{head}");
    let (status, head, body) = get(web, "/readyz");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, "ready\n");
    let (status, _, body) = get(web, "/healthz");
    assert_eq!(status, 200);
    assert_eq!(body, "ok\n");
}

/// A raw connection that has sent the HTTP/2 preface and an empty SETTINGS, and then
/// answers nothing (no SETTINGS ack, no PING ack).
fn silent_h2_connection(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    tcp.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap();
    tcp
}

/// Reads until the server closes `tcp` (bounded by [`STEP`]).
fn wait_closed(tcp: &mut TcpStream) {
    tcp.set_read_timeout(Some(STEP)).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    panic!("the server never closed the connection");
}

#[test]
fn goaways_and_keepalive_timeouts_are_counted_by_reason() {
    let (_server, grpc, web) = spawn_duplex_serve_web(&[
        "--min-ping-interval",
        "10s",
        "--max-connection-age",
        "500ms",
        "--max-connection-age-grace",
        "500ms",
    ]);
    // A ping flood: GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") from the guard.
    let mut flood = silent_h2_connection(grpc);
    for byte in 0..10u8 {
        let mut ping = [byte; 17];
        ping[..9].copy_from_slice(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0]);
        flood.write_all(&ping).unwrap();
    }
    wait_closed(&mut flood);
    // An idle connection reaches its maximum age: GOAWAY, then closed after the grace.
    let mut aged = silent_h2_connection(grpc);
    wait_closed(&mut aged);
    let scraped = scrape_until(web, "both GOAWAYs counted", |s| {
        s.value("duplex_goaways_total", &[("reason", "max_connection_age")]) >= 1.0
    });
    assert!(scraped.value("duplex_goaways_total", &[("reason", "too_many_pings")]) >= 1.0);
    assert_eq!(
        scraped.value("duplex_goaways_total", &[("reason", "shutdown")]),
        0.0
    );

    // A peer that never answers the server's keepalive PING.
    let (_server, grpc, web) = spawn_duplex_serve_web(&[
        "--keepalive-interval",
        "200ms",
        "--keepalive-timeout",
        "200ms",
    ]);
    assert_eq!(
        scrape(web).value("duplex_keepalive_timeouts_total", &[]),
        0.0
    );
    let mut dead = silent_h2_connection(grpc);
    wait_closed(&mut dead);
    scrape_until(web, "the keepalive timeout counted", |s| {
        s.value("duplex_keepalive_timeouts_total", &[]) == 1.0
    });
}

//! `nats-publish`: P publishers publish to a JetStream stream over S subjects (publisher p on
//! subject p % S, on server p % n), each keeping `--in-flight` publishes waiting for their
//! PubAck; acked publishes per second and publish → ack latency.
//!
//! A publish is `PUB <subject> <inbox>.<n> <size>`; every publisher subscribes its own
//! `<inbox>.*` once, and the ack for publish n arrives on `<inbox>.<n>`. The ack is JSON:
//! `{"stream":…,"seq":N}` counts as acked, `{"error":{…,"err_code":C}}` as error
//! `JETSTREAM_C`, a `503` status (no stream on the subject) as `NO_RESPONDERS`. Sequences are
//! checked as they come: a publisher's acks must carry increasing stream sequences (one
//! connection's publishes are stored in the order sent); any that does not is counted in
//! `sequence_regressions`.
//!
//! An ack counts (rate and latency) when it arrives during the measurement, whenever its
//! publish was sent: with `sync_interval: always` JetStream acks a few hundred publishes a
//! second on a VM disk, so 16 × 256 publishes in flight take seconds, and counting only the
//! acks of publishes sent after the warmup would count none.
//!
//! The stream is created before the run and deleted after it (see [`super`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::block_on;
use super::connection::{NatsConnection, parse_urls};
use super::wire::{self, ServerOp};
use super::{SETUP_TIMEOUT, within_setup_timeout};
use crate::echo::start_measurement;
use crate::hub::{Tally, run_tag, usage};
use crate::progress::{Counters, Progress};
use crate::report::{self, LatencySummary, Report};
use crate::runner::{self, Gate, Timing};
use crate::{BenchArgs, BenchError, clock, os};

/// How long a JetStream API request waits for its reply.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stream creation is retried while JetStream is not ready (a cluster elects its
/// meta leader in a few seconds after starting).
const CREATE_RETRY: Duration = Duration::from_secs(30);
/// JetStream's "temporarily unavailable" error code (no meta leader yet).
const JS_UNAVAILABLE: u64 = 10008;

/// What every client thread of a `nats-publish` run shares.
struct PublishPlan {
    /// Servers (`HOST:PORT`); publisher p goes to server p % n.
    addrs: Vec<String>,
    /// The stream's subjects, `bench.<tag>.<j>`.
    subjects: Vec<String>,
    /// Reply subjects: publisher p's acks arrive on `<inbox>.<p>.<n>`.
    inbox: String,
    publishers: usize,
    in_flight: usize,
    /// The payload; its first 8 bytes are replaced by each publish's time.
    template: Vec<u8>,
    /// Rate mode: nanoseconds between two publishes of one publisher.
    interval: Option<u64>,
    /// `--messages`: publishes that may be sent after the warmup.
    limit: Option<u64>,
    claimed: AtomicU64,
    /// Nanoseconds to wait for outstanding acks after the load stops.
    drain: u64,
    connect_timeout: Duration,
    counters: Arc<Counters>,
}

/// A publisher's results: the counts every scenario has, and what its acks said.
#[derive(Default)]
struct PublishTally {
    tally: Tally,
    /// Smallest and largest stream sequence acked.
    first_seq: Option<u64>,
    last_seq: u64,
    /// Acks whose sequence was not above this publisher's previous one.
    regressions: u64,
}

impl PublishTally {
    fn new() -> Self {
        Self {
            tally: Tally::new(),
            ..Self::default()
        }
    }

    fn merge(&mut self, other: PublishTally) {
        self.tally.merge(other.tally);
        self.first_seq = match (self.first_seq, other.first_seq) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_seq = self.last_seq.max(other.last_seq);
        self.regressions += other.regressions;
    }
}

/// Runs the `nats-publish` scenario.
pub(crate) fn publish(args: &BenchArgs) -> Result<Report, BenchError> {
    let addrs = parse_urls(&args.nats).map_err(BenchError::Arguments)?;
    if args.publishers == 0 || args.subjects == 0 || args.nats_replicas == 0 {
        return Err(BenchError::Arguments(
            "--publishers, --subjects and --nats-replicas must be at least 1".into(),
        ));
    }
    let tag = run_tag();
    let stream = format!("duplex-bench-{tag}");
    let stream_config = json!({
        "name": stream,
        "subjects": [format!("bench.{tag}.>")],
        "retention": "limits",
        "storage": "file",
        "num_replicas": args.nats_replicas,
        "discard": "old",
    });
    let control = JetStreamApi {
        addr: addrs[0].clone(),
        inbox: format!("_INBOX.bench.{tag}.api"),
        connect_timeout: args.connect_timeout,
    };
    block_on(control.create_stream(&stream, &stream_config))?.map_err(BenchError::Setup)?;

    let mut template = vec![0u8; args.size()];
    for (i, byte) in template.iter_mut().enumerate().skip(8) {
        *byte = b'a' + (i % 26) as u8;
    }
    let counters = Arc::new(Counters::default());
    let plan = Arc::new(PublishPlan {
        addrs: addrs.clone(),
        subjects: (0..args.subjects)
            .map(|j| format!("bench.{tag}.{j}"))
            .collect(),
        inbox: format!("_INBOX.bench.{tag}"),
        publishers: args.publishers,
        in_flight: args.in_flight(),
        template,
        interval: args
            .rate
            .map(|rate| ((args.publishers as f64 * 1e9 / rate) as u64).max(1)),
        limit: args.messages,
        claimed: AtomicU64::new(0),
        drain: clock::nanos(args.drain_timeout),
        connect_timeout: args.connect_timeout,
        counters: counters.clone(),
    });
    let threads = args.threads.min(args.publishers).max(1);
    let layout = Arc::new(runner::round_robin(args.publishers, threads));
    let thread_plan = plan.clone();
    let pool = runner::spawn(threads, move |index, gate| {
        let plan = thread_plan.clone();
        let layout = layout.clone();
        async move { publish_thread(&plan, &layout[index], gate).await }
    })?;
    if let Err(error) = pool.wait_ready(args.connect_timeout + SETUP_TIMEOUT) {
        if !args.keep_stream {
            let _ = block_on(control.delete_stream(&stream));
        }
        return Err(error);
    }

    let (timing, server_before, client_before) = start_measurement(args, |t| pool.start(t));
    let progress = Progress::start(
        "nats-publish",
        "acked publishes",
        counters,
        args.warmup + args.duration,
        args.quiet,
    );
    let results = pool.join();
    let server_after = os::ServerSample::read(&args.server_pid);
    let client_after = os::sample(None).unwrap_or_default();
    drop(progress);

    let mut total = PublishTally::new();
    for result in results {
        total.merge(result);
    }
    // What the stream holds, from the server, before it goes.
    let state = block_on(control.stream_state(&stream))?;
    if !args.keep_stream {
        block_on(control.delete_stream(&stream))?.map_err(BenchError::Setup)?;
    }
    // A run that ended with its time counted the acks that arrived within it: its length is
    // the measurement's (acks can arrive in bursts, so the last one says little); a run that
    // ended at its --messages ran until its last ack.
    let limit_reached = args
        .messages
        .is_some_and(|limit| plan.claimed.load(Ordering::Relaxed) >= limit);
    let measured_until = if limit_reached {
        total.tally.last_ack
    } else {
        timing.measure_end
    };
    let PublishTally {
        tally,
        first_seq,
        last_seq,
        regressions,
    } = total;
    let mut extra = serde_json::Map::new();
    extra.insert("published".into(), json!(tally.published));
    extra.insert("acked".into(), json!(tally.acked));
    extra.insert("stream".into(), json!(stream));
    extra.insert("first_seq".into(), json!(first_seq));
    extra.insert("last_seq".into(), json!(last_seq));
    extra.insert("sequence_regressions".into(), json!(regressions));
    match state {
        Ok(state) => {
            extra.insert("stream_messages".into(), state["messages"].clone());
            extra.insert("stream_last_seq".into(), state["last_seq"].clone());
        }
        Err(reason) => {
            extra.insert("stream_state_error".into(), json!(reason));
        }
    }
    Ok(Report {
        scenario: "nats-publish",
        addr: addrs.join(","),
        unit: "acked publishes",
        messages: tally.acked,
        elapsed: Duration::from_nanos(measured_until.saturating_sub(timing.measure_start)),
        latency: tally.acks.as_ref().and_then(LatencySummary::of),
        corrected: args.rate.is_some(),
        ack_latency: None,
        errors: tally.errors,
        server: usage(server_before, server_after),
        client_cpu: client_after.cpu.saturating_sub(client_before.cpu),
        config: json!({
            "publishers": args.publishers,
            "subjects": args.subjects,
            "servers": addrs.len(),
            "replicas": args.nats_replicas,
            "storage": "file",
            "size": args.size(),
            "in_flight": plan.in_flight,
            "rate": args.rate,
            "duration_s": args.duration.as_secs_f64(),
            "warmup_s": args.warmup.as_secs_f64(),
            "messages": args.messages,
            "threads": threads,
        }),
        extra,
    })
}

/// The JetStream API through one connection of the coordinator's (setup and teardown).
struct JetStreamApi {
    addr: String,
    /// Reply subjects of its requests: `<inbox>.<n>`.
    inbox: String,
    connect_timeout: Duration,
}

impl JetStreamApi {
    /// A connection subscribed to the API inbox (sid 1).
    async fn connect(&self) -> Result<NatsConnection, String> {
        let mut connection =
            NatsConnection::connect(&self.addr, "bench-jetstream-api", self.connect_timeout)
                .await?;
        wire::put_sub(&mut connection.out, &format!("{}.*", self.inbox), 1);
        connection
            .round_trip(|_| {})
            .await
            .map_err(|e| format!("{}: {e}", self.addr))?;
        Ok(connection)
    }

    /// One API request; the reply's JSON, or why there is none (an API error is returned as
    /// its JSON, with `error`).
    async fn request(
        &self,
        connection: &mut NatsConnection,
        number: u64,
        subject: &str,
        body: &[u8],
    ) -> Result<Value, String> {
        let inbox = format!("{}.{number}", self.inbox);
        let (status, payload) = connection
            .request(subject, &inbox, 1, body, API_TIMEOUT)
            .await?;
        if status == Some(503) {
            return Err(format!(
                "{subject}: no responders: is JetStream enabled on {}?",
                connection.addr()
            ));
        }
        serde_json::from_slice(&payload).map_err(|e| format!("{subject}: reply is not JSON ({e})"))
    }

    /// Creates the stream, retrying while JetStream is temporarily unavailable.
    async fn create_stream(&self, name: &str, config: &Value) -> Result<(), String> {
        let subject = format!("$JS.API.STREAM.CREATE.{name}");
        let body = config.to_string();
        let deadline = tokio::time::Instant::now() + CREATE_RETRY;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = async {
                let mut connection = self.connect().await?;
                self.request(&mut connection, attempt, &subject, body.as_bytes())
                    .await
            }
            .await;
            let retry = match &outcome {
                Ok(reply) => match reply.get("error") {
                    None => return Ok(()),
                    Some(error) => error["err_code"].as_u64() == Some(JS_UNAVAILABLE),
                },
                // No reply in time: the API is busy electing; a refused connection is final.
                Err(reason) => reason.contains("no reply within"),
            };
            if !retry || tokio::time::Instant::now() >= deadline {
                return Err(match outcome {
                    Ok(reply) => format!("creating stream {name} failed: {}", reply["error"]),
                    Err(reason) => format!("creating stream {name} failed: {reason}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The stream's `state` (messages, first and last sequence, …).
    async fn stream_state(&self, name: &str) -> Result<Value, String> {
        let mut connection = self.connect().await?;
        let reply = self
            .request(
                &mut connection,
                1,
                &format!("$JS.API.STREAM.INFO.{name}"),
                b"",
            )
            .await?;
        match reply.get("error") {
            Some(error) => Err(format!("stream info: {error}")),
            None => Ok(reply["state"].clone()),
        }
    }

    /// Deletes the stream and its files.
    async fn delete_stream(&self, name: &str) -> Result<(), String> {
        let mut connection = self.connect().await?;
        let reply = self
            .request(
                &mut connection,
                1,
                &format!("$JS.API.STREAM.DELETE.{name}"),
                b"",
            )
            .await?;
        match reply.get("error") {
            Some(error) => Err(format!("deleting stream {name} failed: {error}")),
            None => Ok(()),
        }
    }
}

/// A publisher's connection, its subject and reply prefix.
struct PublisherLink {
    index: usize,
    subject: String,
    /// `<inbox>.<p>.`: reply subjects are this plus the publish number.
    reply_prefix: String,
    connection: NatsConnection,
}

async fn publish_thread(plan: &PublishPlan, publishers: &[usize], mut gate: Gate) -> PublishTally {
    let mut links = Vec::new();
    let setup = async {
        for &p in publishers {
            let addr = &plan.addrs[p % plan.addrs.len()];
            let mut connection =
                NatsConnection::connect(addr, &format!("bench-pub-{p}"), plan.connect_timeout)
                    .await?;
            let reply_prefix = format!("{}.{p}.", plan.inbox);
            wire::put_sub(&mut connection.out, &format!("{reply_prefix}*"), 1);
            connection
                .round_trip(|_| {})
                .await
                .map_err(|e| format!("{addr}: subscribing failed: {e}"))?;
            links.push(PublisherLink {
                index: p,
                subject: plan.subjects[p % plan.subjects.len()].clone(),
                reply_prefix,
                connection,
            });
        }
        Ok::<(), String>(())
    };
    let mut total = PublishTally::new();
    let Some(timing) = gate
        .ready_then_started(within_setup_timeout(setup).await)
        .await
    else {
        return total;
    };
    let results = futures::future::join_all(
        links
            .iter_mut()
            .map(|link| publish_loop(plan, timing, link)),
    )
    .await;
    for result in results {
        total.merge(result);
    }
    total
}

/// What one ack said.
#[derive(Debug, PartialEq, Eq)]
enum PubAck {
    /// Stored at this stream sequence.
    Stored(u64),
    /// Refused: the key the report counts it under.
    Failed(String),
}

/// Reads a PubAck's JSON without a JSON parser (one per publish): `"seq":N`, or an error's
/// `"err_code":C`.
fn pub_ack(payload: &[u8]) -> PubAck {
    let number_after = |key: &[u8]| -> Option<u64> {
        let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
        let digits = payload[at..].trim_ascii_start();
        let end = digits
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(digits.len());
        wire::parse_decimal(&digits[..end])
    };
    if payload.windows(8).any(|w| w == b"\"error\":") {
        return PubAck::Failed(match number_after(b"\"err_code\":") {
            Some(code) => format!("JETSTREAM_{code}"),
            None => "JETSTREAM_ERROR".into(),
        });
    }
    match number_after(b"\"seq\":") {
        Some(seq) => PubAck::Stored(seq),
        None => PubAck::Failed("BAD_ACK".into()),
    }
}

/// One publisher: keeps `in_flight` publishes waiting for acks, on schedule with `--rate`,
/// until the measurement ends or `--messages` are sent; then waits for the last acks.
async fn publish_loop(
    plan: &PublishPlan,
    timing: Timing,
    link: &mut PublisherLink,
) -> PublishTally {
    let mut result = PublishTally::new();
    let mut acks = result.tally.acks.take().unwrap_or_else(report::histogram);
    let stagger = plan
        .interval
        .map_or(0, |iv| iv * link.index as u64 / plan.publishers as u64);
    let mut next_due = timing.start + stagger;
    // (publish number, stamp) of publishes waiting for their ack, in send order.
    let mut waiting: VecDeque<(u64, u64)> = VecDeque::with_capacity(plan.in_flight);
    let mut next_number = 1u64;
    let mut stopping = false;
    let mut drain_deadline = u64::MAX;
    let mut previous_seq = 0u64;
    let subject = link.subject.as_bytes();
    let reply_prefix = link.reply_prefix.as_bytes();
    loop {
        let now = clock::now();
        if !stopping && now >= timing.measure_end {
            stopping = true;
        }
        if stopping && drain_deadline == u64::MAX {
            drain_deadline = now + plan.drain;
        }
        if (stopping && waiting.is_empty()) || now >= drain_deadline {
            break;
        }
        let mut due_later = None;
        while !stopping && waiting.len() < plan.in_flight {
            let stamp = match plan.interval {
                Some(_) if now < next_due => {
                    due_later = Some(next_due);
                    break;
                }
                Some(_) => next_due,
                None => now,
            };
            if now >= timing.measure_start
                && let Some(limit) = plan.limit
                && plan.claimed.fetch_add(1, Ordering::Relaxed) >= limit
            {
                stopping = true;
                break;
            }
            let number = next_number;
            next_number += 1;
            wire::put_pub(
                &mut link.connection.out,
                subject,
                Some((reply_prefix, number)),
                &plan.template,
                stamp,
            );
            waiting.push_back((number, stamp));
            if stamp >= timing.measure_start {
                result.tally.published += 1;
            }
            if let Some(interval) = plan.interval {
                next_due += interval;
            }
        }
        if let Err(error) = link.connection.flush().await {
            result.tally.error(error.key(), &plan.counters);
            break;
        }
        if stopping && waiting.is_empty() {
            continue;
        }
        let wake = if stopping {
            drain_deadline
        } else {
            due_later
                .unwrap_or(timing.measure_end)
                .min(timing.measure_end)
        };
        let mut failures: Vec<String> = Vec::new();
        let mut acked_now = 0u64;
        let tally = &mut result.tally;
        let (first_seq, last_seq, regressions) = (
            &mut result.first_seq,
            &mut result.last_seq,
            &mut result.regressions,
        );
        let read = tokio::select! {
            biased;
            read = link.connection.read(|op| {
                let ServerOp::Msg(delivery) = op else { return };
                let Some(number) = delivery
                    .subject
                    .strip_prefix(reply_prefix)
                    .and_then(wire::parse_decimal)
                else {
                    return;
                };
                let position = match waiting.front() {
                    Some(&(front, _)) if front == number => Some(0),
                    _ => waiting.iter().position(|&(n, _)| n == number),
                };
                let Some((_, stamp)) = position.and_then(|p| waiting.remove(p)) else {
                    return;
                };
                let ack = if delivery.status() == Some(503) {
                    PubAck::Failed("NO_RESPONDERS".into())
                } else {
                    pub_ack(delivery.payload)
                };
                match ack {
                    PubAck::Failed(key) => failures.push(key),
                    PubAck::Stored(seq) => {
                        if seq <= previous_seq {
                            *regressions += 1;
                        }
                        previous_seq = seq;
                        *first_seq = Some(first_seq.map_or(seq, |f| f.min(seq)));
                        *last_seq = (*last_seq).max(seq);
                        acked_now += 1;
                        let now = clock::now();
                        if now >= timing.measure_start && now < timing.measure_end {
                            report::record(&mut acks, now.saturating_sub(stamp));
                            tally.acked += 1;
                            tally.last_ack = now;
                        }
                    }
                }
            }) => Some(read),
            () = tokio::time::sleep_until(clock::instant(wake)) => None,
        };
        plan.counters.add(acked_now);
        for key in failures {
            tally.error(key, &plan.counters);
        }
        match read {
            Some(Err(error)) => {
                tally.error(error.key(), &plan.counters);
                break;
            }
            Some(Ok(())) => {}
            None => {}
        }
    }
    if !waiting.is_empty() {
        *result.tally.errors.entry("ACK_TIMEOUT".into()).or_default() += waiting.len() as u64;
    }
    result.tally.acks = Some(acks);
    result
}

#[cfg(test)]
mod tests {
    use super::{PubAck, pub_ack};

    #[test]
    fn acks_give_their_sequence_and_errors_their_code() {
        assert_eq!(
            pub_ack(br#"{"stream":"duplex-bench-1","seq":42}"#),
            PubAck::Stored(42)
        );
        assert_eq!(
            pub_ack(br#"{"stream":"s","seq": 7,"duplicate":true}"#),
            PubAck::Stored(7)
        );
        assert_eq!(
            pub_ack(
                br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"s","seq":0}"#
            ),
            PubAck::Failed("JETSTREAM_10077".into())
        );
        assert_eq!(pub_ack(b"{}"), PubAck::Failed("BAD_ACK".into()));
    }
}

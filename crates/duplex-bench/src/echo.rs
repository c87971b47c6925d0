//! The echo scenarios: `echo-pingpong` and `echo-stream` against any server of the article's
//! `Chat` service (ours, plain tonic, grpcio, …).
//!
//! Each client thread drives all its streams from one loop: replies arrive as DATA chunks,
//! are split into messages and checked against the expected `Echo` bytes, and each chunk of
//! k replies is answered by k new messages sent as one slice of a pre-encoded buffer (one
//! `send_data`, one DATA frame). A stream keeps at most `--in-flight` messages outstanding;
//! replies come back in order, so each message's send time is a queue entry.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{SelectAll, StreamExt as _};
use h2::SendStream;
use h2::client::ResponseFuture;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::Sleep;

use crate::grpc::{self, Connection, Dialer, Event, MessageSplitter};
use crate::progress::{Counters, Progress};
use crate::report::{self, LatencySummary, Report};
use crate::runner::{self, Gate, Timing};
use crate::{BenchArgs, BenchError, Scenario, clock, os};

/// What every client thread needs to know.
struct Plan {
    addr: String,
    path: String,
    dialer: Dialer,
    in_flight: usize,
    /// Rate mode: nanoseconds between two scheduled sends of one stream.
    interval: Option<u64>,
    total_streams: usize,
    /// `in_flight` copies of the framed request, back to back.
    batch: Bytes,
    request_len: usize,
    /// The expected reply, without its 5-byte header.
    reply: Bytes,
    /// `--messages`: requests that may be sent after the warmup.
    limit: Option<u64>,
    claimed: AtomicU64,
    drain: u64,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct ThreadResult {
    histogram: Option<Histogram<u64>>,
    /// Replies to requests sent in the measurement.
    counted: u64,
    /// Requests sent in the measurement.
    sent: u64,
    /// Clock time of the last counted reply.
    last: u64,
    errors: BTreeMap<String, u64>,
}

struct EchoStream {
    send: SendStream<Bytes>,
    /// Send (or, with `--rate`, scheduled) time of each message in flight, oldest first.
    in_flight: VecDeque<u64>,
    next_due: u64,
    splitter: MessageSplitter,
    closed: bool,
    ended: bool,
}

/// Runs an echo scenario.
pub(crate) fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let in_flight = args.in_flight();
    let total_streams = args.streams;
    let connections = args.connections.min(total_streams);
    let threads = args.threads.min(connections);
    let (request, reply) = grpc::chat_pair(args.size());
    let mut batch = BytesMut::with_capacity(request.len() * in_flight);
    for _ in 0..in_flight {
        batch.extend_from_slice(&request);
    }
    let counters = Arc::new(Counters::default());
    let plan = Arc::new(Plan {
        addr: args.addr.clone(),
        path: args.path.clone(),
        dialer: Dialer::new(args)?,
        in_flight,
        interval: args
            .rate
            .map(|rate| ((total_streams as f64 * 1e9 / rate) as u64).max(1)),
        total_streams,
        batch: batch.freeze(),
        request_len: request.len(),
        reply: reply.slice(grpc::HEADER..),
        limit: args.messages,
        claimed: AtomicU64::new(0),
        drain: clock::nanos(args.drain_timeout),
        counters: counters.clone(),
    });

    // Stream g lives on connection g % C; connection c on thread c % T.
    let streams_of_connection = runner::round_robin(total_streams, connections);
    let connections_of_thread = runner::round_robin(connections, threads);
    let layout: Arc<Vec<Vec<Vec<usize>>>> = Arc::new(
        connections_of_thread
            .iter()
            .map(|conns| {
                conns
                    .iter()
                    .map(|&c| streams_of_connection[c].clone())
                    .collect()
            })
            .collect(),
    );

    let thread_plan = plan.clone();
    let pool = runner::spawn(threads, move |index, gate| {
        let plan = thread_plan.clone();
        let layout = layout.clone();
        async move { client_thread(&plan, &layout[index], gate).await }
    })?;
    pool.wait_ready(args.connect_timeout + Duration::from_secs(10))?;

    let unit = match args.scenario {
        Scenario::EchoPingpong => "round trips",
        _ => "messages",
    };
    let (timing, server_before, client_before) = start_measurement(args, |timing| {
        pool.start(timing);
    });
    let progress = Progress::start(
        args.scenario.name(),
        unit,
        counters,
        args.warmup + args.duration,
        args.quiet,
    );
    let results = pool.join();
    let server_after = os::ServerSample::read(&args.server_pid);
    let client_after = os::sample(None).unwrap_or_default();
    drop(progress);

    let mut histogram = report::histogram();
    let mut errors = BTreeMap::new();
    let (mut counted, mut sent, mut last) = (0, 0, timing.measure_start);
    for result in &results {
        if let Some(h) = &result.histogram {
            let _ = histogram.add(h);
        }
        counted += result.counted;
        sent += result.sent;
        last = last.max(result.last);
        report::merge_errors(&mut errors, &result.errors);
    }
    let mut extra = serde_json::Map::new();
    extra.insert("sent".into(), json!(sent));
    extra.insert("lost".into(), json!(sent.saturating_sub(counted)));
    Ok(Report {
        scenario: args.scenario.name(),
        addr: args.addr.clone(),
        unit,
        messages: counted,
        elapsed: Duration::from_nanos(last.saturating_sub(timing.measure_start)),
        latency: LatencySummary::of(&histogram),
        corrected: args.rate.is_some(),
        ack_latency: None,
        errors,
        server: crate::hub::usage(server_before, server_after),
        client_cpu: client_after.cpu.saturating_sub(client_before.cpu),
        config: json!({
            "path": args.path,
            "connections": connections,
            "streams": total_streams,
            "in_flight": in_flight,
            "size": args.size(),
            "rate": args.rate,
            "duration_s": args.duration.as_secs_f64(),
            "warmup_s": args.warmup.as_secs_f64(),
            "messages": args.messages,
            "threads": threads,
        }),
        extra,
    })
}

/// Starts the clock (via `start`), then after the warmup takes the "before" samples of the
/// server and of this process, resetting the server's peak RSS.
pub(crate) fn start_measurement(
    args: &BenchArgs,
    start: impl FnOnce(Timing),
) -> (Timing, Option<os::ServerSample>, os::ProcSample) {
    let now = clock::now();
    let measure_start = now + clock::nanos(args.warmup);
    let timing = Timing {
        start: now,
        measure_start,
        measure_end: measure_start + clock::nanos(args.duration),
    };
    let sample_server = || os::ServerSample::reset_and_read(&args.server_pid);
    if args.warmup.is_zero() {
        let server = sample_server();
        let client = os::sample(None).unwrap_or_default();
        start(timing);
        (timing, server, client)
    } else {
        start(timing);
        std::thread::sleep(args.warmup);
        (
            timing,
            sample_server(),
            os::sample(None).unwrap_or_default(),
        )
    }
}

async fn client_thread(plan: &Plan, connections: &[Vec<usize>], mut gate: Gate) -> ThreadResult {
    // Setup: connect and open every stream (headers only) before the clock starts.
    let mut opened: Vec<(usize, SendStream<Bytes>, ResponseFuture)> = Vec::new();
    let mut links = Vec::new();
    for streams in connections {
        let connection = match Connection::open(&plan.addr, &plan.dialer).await {
            Ok(connection) => connection,
            Err(reason) => {
                gate.ready(Err(format!("cannot connect to {}: {reason}", plan.addr)));
                return ThreadResult::default();
            }
        };
        for &global in streams {
            match connection.call(&plan.path, &[]).await {
                Ok((send, response)) => opened.push((global, send, response)),
                Err(reason) => {
                    gate.ready(Err(format!("cannot open a call: {reason}")));
                    return ThreadResult::default();
                }
            }
        }
        links.push(connection);
    }
    gate.ready(Ok(()));
    let Some(timing) = gate.started().await else {
        return ThreadResult::default();
    };
    let result = drive(plan, timing, opened).await;
    drop(links);
    result
}

async fn drive(
    plan: &Plan,
    timing: Timing,
    opened: Vec<(usize, SendStream<Bytes>, ResponseFuture)>,
) -> ThreadResult {
    let mut result = ThreadResult {
        histogram: Some(report::histogram()),
        last: timing.measure_start,
        ..ThreadResult::default()
    };
    let mut histogram = report::histogram();
    let mut events = SelectAll::new();
    let mut streams = Vec::with_capacity(opened.len());
    for (i, (global, send, response)) in opened.into_iter().enumerate() {
        // Spread the streams' schedules evenly over one interval.
        let stagger = plan
            .interval
            .map_or(0, |iv| iv * global as u64 / plan.total_streams as u64);
        streams.push(EchoStream {
            send,
            in_flight: VecDeque::with_capacity(plan.in_flight),
            next_due: timing.start + stagger,
            splitter: MessageSplitter::default(),
            closed: false,
            ended: false,
        });
        events.push(grpc::events(response).map(move |event| (i, event)));
    }

    let mut timer: Pin<Box<Sleep>> =
        Box::pin(tokio::time::sleep_until(clock::instant(timing.measure_end)));
    let mut timer_at = timing.measure_end;
    let mut stopping = false;
    let mut drain_deadline = u64::MAX;
    let now = clock::now();
    for stream in &mut streams {
        fill(plan, timing, stream, now, &mut result);
    }
    let mut open = streams.len();
    while open > 0 {
        let now = clock::now();
        if !stopping && now >= timing.measure_end {
            stopping = true;
            drain_deadline = now + plan.drain;
            for stream in &mut streams {
                close(stream);
            }
        }
        if now >= drain_deadline {
            break;
        }
        let wake = if stopping {
            drain_deadline
        } else {
            match plan.interval {
                Some(_) => streams
                    .iter()
                    .filter(|s| !s.closed && s.in_flight.len() < plan.in_flight)
                    .map(|s| s.next_due)
                    .min()
                    .unwrap_or(timing.measure_end)
                    .min(timing.measure_end),
                None => timing.measure_end,
            }
        };
        if wake != timer_at {
            timer.as_mut().reset(clock::instant(wake));
            timer_at = wake;
        }
        tokio::select! {
            biased;
            event = events.next() => {
                let Some((i, event)) = event else { break };
                let stream = &mut streams[i];
                match event {
                    Event::Data(data) => {
                        let mut bad = 0u64;
                        let split = stream.splitter.push(&data, |message| {
                            if message != &plan.reply[..] {
                                bad += 1;
                            }
                        });
                        let n = match split {
                            Ok(n) => n,
                            Err(key) => {
                                *result.errors.entry(key).or_default() += 1;
                                plan.counters.error();
                                close(stream);
                                continue;
                            }
                        };
                        if bad > 0 {
                            *result.errors.entry("BAD_REPLY".into()).or_default() += bad;
                        }
                        let now = clock::now();
                        for _ in 0..n {
                            let Some(sent) = stream.in_flight.pop_front() else { break };
                            if sent >= timing.measure_start {
                                report::record(&mut histogram, now - sent);
                                result.counted += 1;
                                result.last = now;
                            }
                        }
                        plan.counters.add(n as u64);
                        if !stopping {
                            fill(plan, timing, stream, now, &mut result);
                        }
                    }
                    Event::End(outcome) => {
                        stream.ended = true;
                        stream.closed = true;
                        open -= 1;
                        if let Err(key) = outcome {
                            *result.errors.entry(key).or_default() += 1;
                            plan.counters.error();
                        }
                    }
                }
            }
            () = timer.as_mut() => {
                if plan.interval.is_some() && !stopping {
                    let now = clock::now();
                    for stream in &mut streams {
                        fill(plan, timing, stream, now, &mut result);
                    }
                }
            }
        }
    }
    let stuck = streams.iter().filter(|s| !s.ended).count() as u64;
    if stuck > 0 {
        *result.errors.entry("DRAIN_TIMEOUT".into()).or_default() += stuck;
    }
    result.histogram = Some(histogram);
    result
}

/// Sends what `stream` may send now: up to its free in-flight slots, as scheduled (`--rate`),
/// within `--messages`; half-closes it when the load is over.
fn fill(plan: &Plan, timing: Timing, stream: &mut EchoStream, now: u64, result: &mut ThreadResult) {
    if stream.closed {
        return;
    }
    if now >= timing.measure_end {
        close(stream);
        return;
    }
    let mut k = plan.in_flight - stream.in_flight.len();
    if k == 0 {
        return;
    }
    if let Some(interval) = plan.interval {
        if now < stream.next_due {
            return;
        }
        k = k.min(((now - stream.next_due) / interval + 1) as usize);
    }
    if now >= timing.measure_start
        && let Some(limit) = plan.limit
    {
        let before = plan.claimed.fetch_add(k as u64, Ordering::Relaxed);
        if before >= limit {
            close(stream);
            return;
        }
        k = k.min((limit - before) as usize);
    }
    for j in 0..k as u64 {
        let at = match plan.interval {
            Some(interval) => stream.next_due + j * interval,
            None => now,
        };
        stream.in_flight.push_back(at);
        if at >= timing.measure_start {
            result.sent += 1;
        }
    }
    if let Some(interval) = plan.interval {
        stream.next_due += k as u64 * interval;
    }
    let chunk = plan.batch.slice(..k * plan.request_len);
    if let Err(error) = stream.send.send_data(chunk, false) {
        *result.errors.entry(grpc::error_key(&error)).or_default() += 1;
        stream.closed = true;
    }
}

/// Half-closes the request side (END_STREAM): the server answers what is in flight and ends.
fn close(stream: &mut EchoStream) {
    if !stream.closed {
        stream.closed = true;
        let _ = stream.send.send_data(Bytes::new(), true);
    }
}

//! `nats-fanout`: P publishers publish to S subjects on core NATS; subscribers, spread over C
//! connections, each hold one subscription (subscriber s on subject s % S, on connection
//! s % C). Deliveries per second and publish → delivery latency.
//!
//! As in the room fan-out, publishing is held to a window: a subject's publishers wait while
//! more than `--window` messages per subscriber are undelivered, so the run measures what
//! the server sustains rather than how fast it cuts off slow consumers. A publisher writes
//! at most `--in-flight` publishes per batch (one write). Core NATS has no ack: a publish
//! counts as sent when it is written. Messages a subscriber never got (its connection cut
//! off as a slow consumer, or the drain timed out) are counted as `DROPPED` errors.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use super::connection::{NatsConnection, parse_urls};
use super::wire::{self, ServerOp};
use super::{SETUP_TIMEOUT, within_setup_timeout};
use crate::echo::start_measurement;
use crate::hub::{
    NextSend, RoomGate, Tally, next_send, payload_template, publish_interval, room_gates, run_tag,
    usage, wait_for_deliveries,
};
use crate::progress::{Counters, Progress};
use crate::report::{self, LatencySummary, Report};
use crate::runner::{self, Gate, Timing};
use crate::{BenchArgs, BenchError, clock, os};

/// With several servers (a cluster), how long subscriptions get to reach the other servers
/// over their routes before publishing starts: a `PONG` confirms only the local server.
const ROUTE_SETTLE: Duration = Duration::from_secs(1);

/// What every client thread of a `nats-fanout` run shares.
struct FanoutPlan {
    /// Servers (`HOST:PORT`); connection i goes to server i % n.
    addrs: Vec<String>,
    /// One gate per subject: the window's counts.
    subjects: Vec<RoomGate>,
    /// Subscriber s is on connection s % C and subject s % S.
    subscriber_connections: Vec<Vec<usize>>,
    publishers: usize,
    /// Publishes written per batch (`--in-flight`).
    batch: usize,
    /// Messages a subject's publishers may be ahead of its subscribers.
    window: u64,
    /// The payload; its first 8 bytes are replaced by each publish's time.
    template: Vec<u8>,
    /// Rate mode: nanoseconds between two publishes of one publisher.
    interval: Option<u64>,
    /// `--messages`: publishes that may be sent after the warmup.
    limit: Option<u64>,
    claimed: AtomicU64,
    publishers_done: AtomicUsize,
    /// Nanoseconds to wait for what is still on its way after the load stops.
    drain: u64,
    connect_timeout: Duration,
    counters: Arc<Counters>,
}

/// A subscriber connection and the subject index of each of its subscriptions (sid i + 1).
struct SubscriberLink {
    connection: NatsConnection,
    subject_of_sid: Vec<usize>,
}

/// A publisher's connection.
struct PublisherLink {
    index: usize,
    subject: usize,
    connection: NatsConnection,
}

/// Runs the `nats-fanout` scenario.
pub(crate) fn fanout(args: &BenchArgs) -> Result<Report, BenchError> {
    let addrs = parse_urls(&args.nats).map_err(BenchError::Arguments)?;
    if args.publishers == 0 || args.subjects == 0 {
        return Err(BenchError::Arguments(
            "--publishers and --subjects must be at least 1".into(),
        ));
    }
    let subjects = room_gates(&run_tag(), args.subjects, args.subscribers);
    let connections = args.connections.min(args.subscribers.max(1));
    let template = payload_template(args.size());
    let counters = Arc::new(Counters::default());
    let plan = Arc::new(FanoutPlan {
        addrs: addrs.clone(),
        subjects,
        subscriber_connections: runner::round_robin(args.subscribers, connections),
        publishers: args.publishers,
        batch: args.in_flight(),
        window: args.window.max(1),
        template,
        interval: publish_interval(args),
        limit: args.messages,
        claimed: AtomicU64::new(0),
        publishers_done: AtomicUsize::new(0),
        drain: clock::nanos(args.drain_timeout),
        connect_timeout: args.connect_timeout,
        counters: counters.clone(),
    });
    let subscriber_connections = if args.subscribers > 0 { connections } else { 0 };
    let units = subscriber_connections + args.publishers;
    let threads = args.threads.min(units).max(1);
    let layout = Arc::new(runner::round_robin(units, threads));
    let thread_plan = plan.clone();
    let pool = runner::spawn(threads, move |index, gate| {
        let plan = thread_plan.clone();
        let layout = layout.clone();
        async move { fanout_thread(&plan, &layout[index], subscriber_connections, gate).await }
    })?;
    pool.wait_ready(args.connect_timeout + SETUP_TIMEOUT)?;
    if addrs.len() > 1 {
        std::thread::sleep(ROUTE_SETTLE);
    }

    let (timing, server_before, client_before) = start_measurement(args, |t| pool.start(t));
    let progress = Progress::start(
        "nats-fanout",
        "deliveries",
        counters,
        args.warmup + args.duration,
        args.quiet,
    );
    wait_for_deliveries(
        &pool,
        &timing,
        plan.drain,
        &plan.subjects,
        || plan.publishers_done.load(Ordering::Acquire) >= plan.publishers,
        || false,
    );
    let server_after = os::ServerSample::read(&args.server_pid);
    let client_after = os::sample(None).unwrap_or_default();
    pool.stop();
    let results = pool.join();
    drop(progress);

    let mut tally = Tally::new();
    for result in results {
        tally.merge(result);
    }
    let undelivered: u64 = plan.subjects.iter().map(RoomGate::outstanding).sum();
    if undelivered > 0 {
        *tally.errors.entry("DROPPED".into()).or_default() += undelivered;
    }
    let mut extra = serde_json::Map::new();
    extra.insert("published".into(), json!(tally.published));
    extra.insert("undelivered".into(), json!(undelivered));
    Ok(Report {
        scenario: "nats-fanout",
        addr: addrs.join(","),
        unit: "deliveries",
        messages: tally.delivered,
        elapsed: Duration::from_nanos(tally.last_delivery.saturating_sub(timing.measure_start)),
        latency: tally.deliveries.as_ref().and_then(LatencySummary::of),
        corrected: args.rate.is_some(),
        ack_latency: None,
        errors: tally.errors,
        server: usage(server_before, server_after),
        client_cpu: client_after.cpu.saturating_sub(client_before.cpu),
        config: json!({
            "publishers": args.publishers,
            "subscribers": args.subscribers,
            "subjects": args.subjects,
            "connections": subscriber_connections,
            "publisher_connections": args.publishers,
            "servers": addrs.len(),
            "size": args.size(),
            "batch": plan.batch,
            "window": plan.window,
            "rate": args.rate,
            "duration_s": args.duration.as_secs_f64(),
            "warmup_s": args.warmup.as_secs_f64(),
            "messages": args.messages,
            "threads": threads,
        }),
        extra,
    })
}

async fn fanout_thread(
    plan: &FanoutPlan,
    units: &[usize],
    subscriber_connections: usize,
    mut gate: Gate,
) -> Tally {
    let mut tally = Tally::new();
    let mut subscribers = Vec::new();
    let mut publishers = Vec::new();
    let setup = async {
        for &unit in units {
            let addr = &plan.addrs[unit % plan.addrs.len()];
            if unit < subscriber_connections {
                let name = format!("bench-sub-conn-{unit}");
                let mut connection =
                    NatsConnection::connect(addr, &name, plan.connect_timeout).await?;
                let mut subject_of_sid = Vec::new();
                for &s in &plan.subscriber_connections[unit] {
                    let subject = s % plan.subjects.len();
                    subject_of_sid.push(subject);
                    let sid = subject_of_sid.len() as u64;
                    wire::put_sub(&mut connection.out, &plan.subjects[subject].name, sid);
                }
                // The PONG says every SUB before it is registered.
                connection
                    .round_trip(|_| {})
                    .await
                    .map_err(|e| format!("{addr}: subscribing failed: {e}"))?;
                subscribers.push(SubscriberLink {
                    connection,
                    subject_of_sid,
                });
            } else {
                let index = unit - subscriber_connections;
                let name = format!("bench-pub-{index}");
                let connection = NatsConnection::connect(addr, &name, plan.connect_timeout).await?;
                publishers.push(PublisherLink {
                    index,
                    subject: index % plan.subjects.len(),
                    connection,
                });
            }
        }
        Ok::<(), String>(())
    };
    let Some(timing) = gate
        .ready_then_started(within_setup_timeout(setup).await)
        .await
    else {
        return tally;
    };
    let receiving = futures::future::join_all(
        subscribers
            .iter_mut()
            .map(|link| receive(plan, timing, link, gate.clone())),
    );
    let publishing = futures::future::join_all(
        publishers
            .iter_mut()
            .map(|link| publish(plan, timing, link)),
    );
    let (received, published) = futures::future::join(receiving, publishing).await;
    for t in received.into_iter().chain(published) {
        tally.merge(t);
    }
    tally
}

/// Reads one subscriber connection's deliveries until told to stop, then unsubscribes.
async fn receive(
    plan: &FanoutPlan,
    timing: Timing,
    link: &mut SubscriberLink,
    mut gate: Gate,
) -> Tally {
    let mut tally = Tally::new();
    let mut histogram = tally.deliveries.take().unwrap_or_else(report::histogram);
    let mut per_subject = vec![0u64; plan.subjects.len()];
    let mut stopped = pin!(gate.stopped());
    loop {
        let mut counted = 0u64;
        let mut now = None;
        let subject_of_sid = &link.subject_of_sid;
        let read = tokio::select! {
            biased;
            read = link.connection.read(|op| {
                let ServerOp::Msg(delivery) = op else { return };
                let Some(&subject) = usize::try_from(delivery.sid)
                    .ok()
                    .and_then(|sid| subject_of_sid.get(sid.wrapping_sub(1)))
                else {
                    return;
                };
                per_subject[subject] += 1;
                if let Some(sent) = wire::stamp_of(delivery.payload)
                    && sent >= timing.measure_start
                {
                    let now = *now.get_or_insert_with(clock::now);
                    report::record(&mut histogram, now.saturating_sub(sent));
                    counted += 1;
                }
            }) => read,
            () = stopped.as_mut() => break,
        };
        let mut delivered = 0;
        for (subject, count) in per_subject.iter_mut().enumerate() {
            if *count > 0 {
                let gate = &plan.subjects[subject];
                gate.delivered.fetch_add(*count, Ordering::AcqRel);
                gate.advanced.notify_waiters();
                delivered += *count;
                *count = 0;
            }
        }
        plan.counters.add(delivered);
        if counted > 0 {
            tally.delivered += counted;
            tally.last_delivery = now.unwrap_or_else(clock::now);
        }
        if let Err(error) = read {
            tally.error(error.key(), &plan.counters);
            tally.deliveries = Some(histogram);
            return tally;
        }
        if let Err(error) = link.connection.flush().await {
            tally.error(error.key(), &plan.counters);
            break;
        }
    }
    tally.deliveries = Some(histogram);
    // Unsubscribe and wait for the server to confirm it (a PONG after the UNSUBs), so the
    // connection ends cleanly; what still arrives is not counted.
    for sid in 1..=link.subject_of_sid.len() as u64 {
        wire::put_unsub(&mut link.connection.out, sid);
    }
    let unsubscribe = link.connection.round_trip(|_| {});
    if let Ok(Err(error)) = tokio::time::timeout(Duration::from_secs(5), unsubscribe).await {
        tally.error(error.key(), &plan.counters);
    }
    tally
}

/// One publisher: writes batches of publishes within its subject's window, on schedule with
/// `--rate`, until the measurement ends or `--messages` are sent.
async fn publish(plan: &FanoutPlan, timing: Timing, link: &mut PublisherLink) -> Tally {
    let mut tally = Tally::new();
    let gate = &plan.subjects[link.subject];
    let subject = gate.name.as_bytes();
    let stagger = plan
        .interval
        .map_or(0, |iv| iv * link.index as u64 / plan.publishers as u64);
    let mut next_due = timing.start + stagger;
    let mut stopping = false;
    while !stopping {
        let now = clock::now();
        if now >= timing.measure_end {
            break;
        }
        let mut sent = 0;
        let mut blocked_on_window = false;
        let mut due_later = None;
        while sent < plan.batch {
            let next = next_send(
                gate,
                now,
                next_due,
                plan.interval,
                plan.window,
                plan.limit,
                &plan.claimed,
                timing.measure_start,
            );
            let stamp = match next {
                NextSend::Now(stamp) => stamp,
                NextSend::DueAt(due) => {
                    due_later = Some(due);
                    break;
                }
                NextSend::Window => {
                    blocked_on_window = true;
                    break;
                }
                NextSend::LimitReached => {
                    stopping = true;
                    break;
                }
            };
            wire::put_pub(
                &mut link.connection.out,
                subject,
                None,
                &plan.template,
                stamp,
            );
            gate.published.fetch_add(1, Ordering::AcqRel);
            if stamp >= timing.measure_start {
                tally.published += 1;
            }
            if let Some(interval) = plan.interval {
                next_due += interval;
            }
            sent += 1;
        }
        if let Err(error) = link.connection.flush().await {
            tally.error(error.key(), &plan.counters);
            break;
        }
        if stopping {
            break;
        }
        if sent == plan.batch {
            // More may go at once: let this thread's subscribers read first.
            tokio::task::yield_now().await;
            continue;
        }
        let wake = due_later
            .unwrap_or(timing.measure_end)
            .min(timing.measure_end);
        let advanced = gate.advanced.notified();
        let mut advanced = pin!(advanced);
        advanced.as_mut().enable();
        if blocked_on_window && gate.outstanding() < plan.window * gate.subscribers {
            continue;
        }
        tokio::select! {
            biased;
            // Nothing is expected but PINGs (answered) and -ERR.
            read = link.connection.read(|_| {}) => {
                if let Err(error) = read {
                    tally.error(error.key(), &plan.counters);
                    break;
                }
                if let Err(error) = link.connection.flush().await {
                    tally.error(error.key(), &plan.counters);
                    break;
                }
            }
            () = advanced, if blocked_on_window => {}
            () = tokio::time::sleep_until(clock::instant(wake)) => {}
        }
    }
    // Everything written is on its way once the server has read it: a PONG says so.
    let confirmed = link.connection.round_trip(|_| {});
    match tokio::time::timeout(Duration::from_secs(5), confirmed).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tally.error(error.key(), &plan.counters),
        Err(_) => tally.error("PING_TIMEOUT", &plan.counters),
    }
    plan.publishers_done.fetch_add(1, Ordering::AcqRel);
    tally
}

//! The room scenarios against `duplex serve`'s `Hub.Connect`: `fanout`, `resume`, `idle`.
//!
//! Every session is one HTTP/2 stream speaking `ClientFrame`s and `ServerFrame`s. Publishes
//! are encoded by hand into one buffer per burst ([`grpc::put_publish`]) and carry their
//! publish time (on the run's clock) in the first 8 payload bytes; subscribers read that
//! time in place ([`grpc::server_frame`]) to measure each delivery's latency. All sessions
//! of a client thread are read by one loop.
//!
//! Closed-loop fan-out is held to a window: a room's publishers wait while more than
//! `--window` messages per subscriber are still undelivered, so the run measures what the
//! server sustains rather than how fast its queues overflow. With `--rate` publishing is
//! open-loop on a schedule and the carried time is the scheduled one.

use std::collections::{BTreeMap, VecDeque};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{SelectAll, StreamExt as _};
use h2::SendStream;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Notify;

use crate::echo::start_measurement;
use crate::grpc::{self, Connection, Dialer, Event, MessageSplitter, ServerFrame, TaggedEvents};
use crate::progress::{Counters, Progress};
use crate::report::{self, LatencySummary, Report, ServerUsage};
use crate::runner::{self, Gate, Timing};
use crate::{BenchArgs, BenchError, Transport, clock, os};

const CONNECT_PATH: &str = "/duplex.v1.Hub/Connect";
/// Sessions per connection in `idle` (the server allows 1000 streams per connection).
const IDLE_SESSIONS_PER_CONNECTION: usize = 500;
/// Longest a client thread's setup (connect, open, join or subscribe) may take before the
/// run gives up; the NATS scenarios use it too.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A room of the run (or a NATS subject, [`crate::nats`]) and how far its messages got.
pub(crate) struct RoomGate {
    /// The room's name (the subject's).
    pub(crate) name: String,
    /// Subscribers that receive each of its messages.
    pub(crate) subscribers: u64,
    /// Publishes sent (all, warmup included).
    pub(crate) published: AtomicU64,
    /// Deliveries received by this room's subscribers (all, warmup included).
    pub(crate) delivered: AtomicU64,
    /// Woken when deliveries advance, for publishers waiting on the window.
    pub(crate) advanced: Notify,
}

impl RoomGate {
    /// A room with `subscribers` subscribers and nothing sent yet.
    pub(crate) fn new(name: String, subscribers: u64) -> Self {
        Self {
            name,
            subscribers,
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            advanced: Notify::new(),
        }
    }

    /// Deliveries still on their way.
    pub(crate) fn outstanding(&self) -> u64 {
        (self.published.load(Ordering::Acquire) * self.subscribers)
            .saturating_sub(self.delivered.load(Ordering::Acquire))
    }
}

/// The rooms (or subjects) of a fan-out run, `bench.<tag>.<i>`, with the `subscribers`
/// spread over them round-robin.
pub(crate) fn room_gates(tag: &str, rooms: usize, subscribers: usize) -> Vec<RoomGate> {
    (0..rooms)
        .map(|r| {
            let count = (0..subscribers).filter(|s| s % rooms == r).count() as u64;
            RoomGate::new(format!("bench.{tag}.{r}"), count)
        })
        .collect()
}

/// A payload of `size` bytes: its first 8 are the publish time (written per message), the
/// rest letters.
pub(crate) fn payload_template(size: usize) -> Vec<u8> {
    let mut template = vec![0u8; size];
    for (i, byte) in template.iter_mut().enumerate().skip(8) {
        *byte = b'a' + (i % 26) as u8;
    }
    template
}

/// What a fan-out publisher may do next.
pub(crate) enum NextSend {
    /// Send a message stamped with this time.
    Now(u64),
    /// `--rate`: the next message is due at this time.
    DueAt(u64),
    /// The room's subscribers are a whole `--window` behind.
    Window,
    /// `--messages` were sent in all.
    LimitReached,
}

/// Decides a fan-out publisher's next send at `now` (its next message due at `next_due`
/// with `interval`): pacing first, then the room's window (`window` messages outstanding
/// per subscriber), then the run's message limit, claimed from `claimed` once measuring.
#[allow(clippy::too_many_arguments)]
pub(crate) fn next_send(
    room: &RoomGate,
    now: u64,
    next_due: u64,
    interval: Option<u64>,
    window: u64,
    limit: Option<u64>,
    claimed: &AtomicU64,
    measure_start: u64,
) -> NextSend {
    let stamp = match interval {
        Some(_) if now < next_due => return NextSend::DueAt(next_due),
        Some(_) => next_due,
        None => now,
    };
    if room.subscribers > 0 && room.outstanding() >= window * room.subscribers {
        return NextSend::Window;
    }
    if now >= measure_start
        && let Some(limit) = limit
        && claimed.fetch_add(1, Ordering::Relaxed) >= limit
    {
        return NextSend::LimitReached;
    }
    NextSend::Now(stamp)
}

/// Nanoseconds between one publisher's messages for `--rate` (spread over the
/// publishers); `None` without a rate.
pub(crate) fn publish_interval(args: &BenchArgs) -> Option<u64> {
    args.rate
        .map(|rate| ((args.publishers as f64 * 1e9 / rate) as u64).max(1))
}

/// Waits, after a fan-out's measurement, until its publishers are done (time or count) and
/// their deliveries have landed, or `drain` has passed since, or the threads have ended, or
/// `stopped` says the run cannot go on (the server refused the load).
pub(crate) fn wait_for_deliveries<R>(
    pool: &runner::Threads<R>,
    timing: &Timing,
    drain: u64,
    rooms: &[RoomGate],
    publishers_done: impl Fn() -> bool,
    stopped: impl Fn() -> bool,
) {
    let hard_stop = timing.measure_end + 2 * drain + clock::nanos(Duration::from_secs(1));
    let mut publishers_done_at = None;
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let now = clock::now();
        if now >= hard_stop || pool.finished() {
            return;
        }
        if !publishers_done() {
            continue;
        }
        if stopped() {
            return;
        }
        let done_at = *publishers_done_at.get_or_insert(now);
        let all_delivered = rooms.iter().all(|room| room.outstanding() == 0);
        if all_delivered || now >= done_at + drain {
            return;
        }
    }
}

/// Where a session's commands go.
enum Outgoing {
    /// The request body of its `Hub.Connect` stream.
    Grpc(SendStream<Bytes>),
    /// Its WebSocket (`fanout --transport ws` subscribers).
    WebSocket(crate::websocket::WsSender),
}

/// One session (one `Hub.Connect` stream, or one WebSocket).
struct Session {
    send: Outgoing,
    splitter: MessageSplitter,
    room: usize,
    opened_at: u64,
    joined: bool,
    ended: bool,
}

impl Session {
    /// Sends gRPC-framed commands (`end`: and closes the sending side); errors with the
    /// key the report counts.
    fn send_data(&mut self, data: Bytes, end: bool) -> Result<(), String> {
        match &mut self.send {
            Outgoing::Grpc(send) => send
                .send_data(data, end)
                .map_err(|error| grpc::error_key(&error)),
            Outgoing::WebSocket(socket) => socket.send(data, end),
        }
    }
}

/// Per-thread results of the room scenarios (and of the NATS ones, [`crate::nats`]).
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) deliveries: Option<Histogram<u64>>,
    pub(crate) acks: Option<Histogram<u64>>,
    joins: Option<Histogram<u64>>,
    /// Deliveries of messages published in the measurement.
    pub(crate) delivered: u64,
    /// Publishes sent and acked in the measurement.
    pub(crate) published: u64,
    pub(crate) acked: u64,
    pub(crate) last_delivery: u64,
    pub(crate) last_ack: u64,
    first_open: u64,
    last_joined: u64,
    sessions: u64,
    pub(crate) errors: BTreeMap<String, u64>,
}

impl Tally {
    pub(crate) fn new() -> Self {
        Self {
            deliveries: Some(report::histogram()),
            acks: Some(report::histogram()),
            joins: Some(report::histogram()),
            first_open: u64::MAX,
            ..Self::default()
        }
    }

    pub(crate) fn error(&mut self, key: impl Into<String>, counters: &Counters) {
        *self.errors.entry(key.into()).or_default() += 1;
        counters.error();
    }

    pub(crate) fn merge(&mut self, other: Tally) {
        for (mine, theirs) in [
            (&mut self.deliveries, other.deliveries),
            (&mut self.acks, other.acks),
            (&mut self.joins, other.joins),
        ] {
            if let (Some(mine), Some(theirs)) = (mine.as_mut(), theirs) {
                let _ = mine.add(&theirs);
            }
        }
        self.delivered += other.delivered;
        self.published += other.published;
        self.acked += other.acked;
        self.last_delivery = self.last_delivery.max(other.last_delivery);
        self.last_ack = self.last_ack.max(other.last_ack);
        self.first_open = self.first_open.min(other.first_open);
        self.last_joined = self.last_joined.max(other.last_joined);
        self.sessions += other.sessions;
        report::merge_errors(&mut self.errors, &other.errors);
    }
}

/// A name unique to this run, so runs against one server never share rooms.
pub(crate) fn run_tag() -> String {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{:x}", std::process::id(), wall.as_micros())
}

/// Opens a session on `connection` and sends its join.
async fn open_session(
    connection: &Connection,
    name: String,
    join: Bytes,
    room: usize,
    index: usize,
    events: &mut TaggedEvents,
) -> Result<Session, String> {
    let (mut send, response) = connection
        .call(CONNECT_PATH, &[("duplex-name", name)])
        .await?;
    let opened_at = clock::now();
    send.send_data(join, false)
        .map_err(|e| grpc::error_key(&e))?;
    events.push(grpc::tagged_events(index, response));
    Ok(Session {
        send: Outgoing::Grpc(send),
        splitter: MessageSplitter::default(),
        room,
        opened_at,
        joined: false,
        ended: false,
    })
}

/// Opens a WebSocket session to `target` (the web listener) and sends its join.
async fn open_ws_session(
    plan: &FanoutPlan,
    target: &str,
    name: String,
    join: Bytes,
    room: usize,
    index: usize,
    events: &mut TaggedEvents,
) -> Result<Session, String> {
    let (sender, session_events) =
        crate::websocket::open(target, plan.token.as_deref(), &name, plan.connect_timeout).await?;
    let mut session = Session {
        send: Outgoing::WebSocket(sender),
        splitter: MessageSplitter::whole_messages(),
        room,
        opened_at: clock::now(),
        joined: false,
        ended: false,
    };
    session.send_data(join, false)?;
    events.push(
        session_events
            .map(move |event| (index, event))
            .boxed_local(),
    );
    Ok(session)
}

/// Reads until every session has its `joined` (recording each join's latency), or fails.
async fn await_joined(
    sessions: &mut [Session],
    events: &mut TaggedEvents,
    joins: Option<&mut Histogram<u64>>,
    tally_last: &mut u64,
) -> Result<(), String> {
    let mut waiting = sessions.iter().filter(|s| !s.joined).count();
    let mut joins = joins;
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    while waiting > 0 {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .map_err(|_| format!("{waiting} sessions not joined after {SETUP_TIMEOUT:?}"))?;
        let Some((i, event)) = event else {
            return Err("every session ended before joining".into());
        };
        let session = &mut sessions[i];
        match event {
            Event::End(outcome) => {
                session.ended = true;
                return Err(format!(
                    "a session ended before joining: {}",
                    outcome.err().unwrap_or_else(|| "OK".into())
                ));
            }
            Event::Data(data) => {
                let mut failure = None;
                let mut joined = false;
                session
                    .splitter
                    .push(&data, |message| match grpc::server_frame(message) {
                        ServerFrame::Joined { .. } => joined = true,
                        ServerFrame::Error { code, .. } => {
                            failure = Some(grpc::code_name(code).to_owned());
                        }
                        _ => {}
                    })?;
                if let Some(code) = failure {
                    return Err(format!("join refused: {code}"));
                }
                if joined && !session.joined {
                    session.joined = true;
                    waiting -= 1;
                    let now = clock::now();
                    *tally_last = (*tally_last).max(now);
                    if let Some(histogram) = joins.as_deref_mut() {
                        report::record(histogram, now - session.opened_at);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Half-closes every session and reads until each has ended (or `deadline`), so the server
/// finishes them cleanly. Errors at the end are counted.
async fn close_sessions(
    sessions: &mut [Session],
    events: &mut TaggedEvents,
    deadline: u64,
    tally: &mut Tally,
    counters: &Counters,
) {
    for session in sessions.iter_mut() {
        let _ = session.send_data(Bytes::new(), true);
    }
    let mut open = sessions.iter().filter(|s| !s.ended).count();
    while open > 0 {
        let Ok(Some((i, event))) =
            tokio::time::timeout_at(clock::instant(deadline), events.next()).await
        else {
            break;
        };
        if let Event::End(outcome) = event {
            sessions[i].ended = true;
            open -= 1;
            if let Err(key) = outcome {
                tally.error(key, counters);
            }
        }
    }
}

// ---------------------------------------------------------------------------------- fanout

struct FanoutPlan {
    /// The servers (several: the nodes of a cluster); see [`server_for`].
    addrs: Vec<String>,
    dialer: Dialer,
    /// `--transport ws`: the web listener subscribers open their WebSockets to.
    web_target: Option<String>,
    /// The token WebSocket subscribers offer (`duplex.bearer.…`).
    token: Option<String>,
    /// `--connect-timeout`, for WebSocket handshakes.
    connect_timeout: Duration,
    rooms: Vec<RoomGate>,
    /// Subscriber s is on connection s % C and in room s % R.
    subscriber_connections: Vec<Vec<usize>>,
    publishers: usize,
    in_flight: usize,
    window: u64,
    template: Vec<u8>,
    /// Whether each publish carries a client message id (unique per room), so the server
    /// dedupes as it does for `duplex-client`, which always sends one.
    client_ids: bool,
    /// Rate mode: nanoseconds between two publishes of one publisher.
    interval: Option<u64>,
    limit: Option<u64>,
    claimed: AtomicU64,
    publishers_done: AtomicUsize,
    /// Set when the server refused a publish (e.g. its per-session rate limit): every
    /// publisher stops at once, since what follows would measure the refusal, not the engine.
    refused: std::sync::atomic::AtomicBool,
    drain: u64,
    counters: Arc<Counters>,
}

/// Runs the fan-out scenario.
pub(crate) fn fanout(args: &BenchArgs) -> Result<Report, BenchError> {
    if args.publishers == 0 || args.rooms == 0 {
        return Err(BenchError::Arguments(
            "--publishers and --rooms must be at least 1".into(),
        ));
    }
    let rooms = room_gates(&run_tag(), args.rooms, args.subscribers);
    let connections = args.connections.min(args.subscribers.max(1));
    let template = payload_template(args.size());
    let counters = Arc::new(Counters::default());
    let plan = Arc::new(FanoutPlan {
        addrs: args.addrs(),
        dialer: Dialer::new(args)?,
        web_target: (args.transport == Transport::Ws).then(|| args.web_target.clone()),
        token: args.token.clone(),
        connect_timeout: args.connect_timeout,
        rooms,
        subscriber_connections: runner::round_robin(args.subscribers, connections),
        publishers: args.publishers,
        in_flight: args.in_flight(),
        window: args.window.max(1),
        template,
        client_ids: args.client_ids,
        interval: publish_interval(args),
        limit: args.messages,
        claimed: AtomicU64::new(0),
        publishers_done: AtomicUsize::new(0),
        refused: std::sync::atomic::AtomicBool::new(false),
        drain: clock::nanos(args.drain_timeout),
        counters: counters.clone(),
    });
    // Units of work: subscriber connections, then one connection per publisher.
    let units = connections + args.publishers;
    let threads = args.threads.min(units).max(1);
    let layout = Arc::new(runner::round_robin(units, threads));
    let thread_plan = plan.clone();
    let pool = runner::spawn(threads, move |index, gate| {
        let plan = thread_plan.clone();
        let layout = layout.clone();
        async move { fanout_thread(&plan, &layout[index], connections, gate).await }
    })?;
    pool.wait_ready(args.connect_timeout + SETUP_TIMEOUT)?;

    let unit = if args.subscribers > 0 {
        "deliveries"
    } else {
        "acked publishes"
    };
    let (timing, server_before, client_before) = start_measurement(args, |t| pool.start(t));
    let progress = Progress::start(
        "fanout",
        unit,
        counters,
        args.warmup + args.duration,
        args.quiet,
    );
    wait_for_deliveries(
        &pool,
        &timing,
        plan.drain,
        &plan.rooms,
        || plan.publishers_done.load(Ordering::Acquire) >= plan.publishers,
        || plan.refused.load(Ordering::Acquire),
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
    let subscribers_per_room: Vec<u64> = plan.rooms.iter().map(|r| r.subscribers).collect();
    let expected: u64 = if args.subscribers > 0 {
        // Each measured publish goes to every subscriber of its room; publishers are spread
        // round-robin over rooms, so compute per room from the totals sent there.
        plan.rooms
            .iter()
            .map(|r| r.published.load(Ordering::Acquire) * r.subscribers)
            .sum()
    } else {
        0
    };
    let delivered_all: u64 = plan
        .rooms
        .iter()
        .map(|r| r.delivered.load(Ordering::Acquire))
        .sum();
    let mut extra = serde_json::Map::new();
    extra.insert("published".into(), json!(tally.published));
    extra.insert("acked".into(), json!(tally.acked));
    if args.subscribers > 0 {
        extra.insert(
            "undelivered".into(),
            json!(expected.saturating_sub(delivered_all)),
        );
    }
    let (messages, last, latency) = if args.subscribers > 0 {
        (
            tally.delivered,
            tally.last_delivery,
            tally.deliveries.as_ref(),
        )
    } else {
        (tally.acked, tally.last_ack, tally.acks.as_ref())
    };
    Ok(Report {
        scenario: "fanout",
        addr: args.addr.clone(),
        unit,
        messages,
        elapsed: Duration::from_nanos(last.saturating_sub(timing.measure_start)),
        latency: latency.and_then(LatencySummary::of),
        corrected: args.rate.is_some(),
        ack_latency: tally.acks.as_ref().and_then(LatencySummary::of),
        errors: tally.errors,
        server: usage(server_before, server_after),
        client_cpu: client_after.cpu.saturating_sub(client_before.cpu),
        config: json!({
            "publishers": args.publishers,
            "subscribers": args.subscribers,
            "subscribers_per_room": subscribers_per_room,
            "rooms": args.rooms,
            "connections": connections,
            "publisher_connections": args.publishers,
            "size": args.size(),
            "in_flight": plan.in_flight,
            "window": plan.window,
            "rate": args.rate,
            "duration_s": args.duration.as_secs_f64(),
            "warmup_s": args.warmup.as_secs_f64(),
            "messages": args.messages,
            "threads": threads,
            "transport": if plan.web_target.is_some() { "ws" } else { "grpc" },
        }),
        extra,
    })
}

/// The servers' usage between two samples, when `--server-pid` was given.
pub(crate) fn usage(
    before: Option<os::ServerSample>,
    after: Option<os::ServerSample>,
) -> Option<ServerUsage> {
    ServerUsage::between(&before?, &after?)
}

struct Publisher {
    index: usize,
    room: usize,
    session: Session,
    events: TaggedEvents,
}

/// The server of the `index`-th connection of a kind (subscriber connection c, publisher
/// p): round-robin over `addrs`, so with the nodes of a cluster, subscribers and publishers
/// are spread over every node.
fn server_for(addrs: &[String], index: usize) -> &str {
    &addrs[index % addrs.len()]
}

/// One HTTP/2 connection to the server under test (`index`: see [`server_for`]).
async fn connect(plan: &FanoutPlan, index: usize) -> Result<Connection, String> {
    let addr = server_for(&plan.addrs, index);
    Connection::open(addr, &plan.dialer)
        .await
        .map_err(|reason| format!("cannot connect to {addr}: {reason}"))
}

async fn fanout_thread(
    plan: &FanoutPlan,
    units: &[usize],
    subscriber_connections: usize,
    mut gate: Gate,
) -> Tally {
    let mut tally = Tally::new();
    let mut links = Vec::new();
    let mut subscribers = Vec::new();
    let mut sub_events: TaggedEvents = SelectAll::new();
    let mut publishers = Vec::new();
    let setup = async {
        for &unit in units {
            if unit < subscriber_connections {
                // Subscribers: sessions on one HTTP/2 connection, or one WebSocket each.
                let connection = match &plan.web_target {
                    Some(_) => None,
                    None => Some(connect(plan, unit).await?),
                };
                for &s in &plan.subscriber_connections[unit] {
                    let room = s % plan.rooms.len();
                    let join = grpc::join_frame(0, &plan.rooms[room].name, None, true);
                    let index = subscribers.len();
                    let name = format!("bench-sub-{s}");
                    let events = &mut sub_events;
                    let session = match (&plan.web_target, &connection) {
                        (Some(target), _) => {
                            open_ws_session(plan, target, name, join, room, index, events).await?
                        }
                        (None, Some(connection)) => {
                            open_session(connection, name, join, room, index, events).await?
                        }
                        (None, None) => unreachable!("gRPC subscribers have their connection"),
                    };
                    subscribers.push(session);
                }
                links.extend(connection);
            } else {
                let index = unit - subscriber_connections;
                let connection = connect(plan, index).await?;
                let room = index % plan.rooms.len();
                let join = grpc::join_frame(0, &plan.rooms[room].name, None, true);
                let mut events = SelectAll::new();
                let session = open_session(
                    &connection,
                    format!("bench-pub-{index}"),
                    join,
                    room,
                    0,
                    &mut events,
                )
                .await?;
                publishers.push(Publisher {
                    index,
                    room,
                    session,
                    events,
                });
                links.push(connection);
            }
        }
        let mut unused = 0;
        await_joined(&mut subscribers, &mut sub_events, None, &mut unused).await?;
        for publisher in &mut publishers {
            await_joined(
                std::slice::from_mut(&mut publisher.session),
                &mut publisher.events,
                None,
                &mut unused,
            )
            .await?;
        }
        Ok::<(), String>(())
    };
    let Some(timing) = gate.ready_then_started(setup.await).await else {
        return tally;
    };

    let mut stop_gate = gate.clone();
    let subscribing = async {
        let mut sub_tally = Tally::new();
        if !subscribers.is_empty() {
            receive_deliveries(
                plan,
                timing,
                &mut subscribers,
                &mut sub_events,
                &mut stop_gate,
                &mut sub_tally,
            )
            .await;
            let deadline = clock::now() + plan.drain.min(clock::nanos(Duration::from_secs(5)));
            close_sessions(
                &mut subscribers,
                &mut sub_events,
                deadline,
                &mut sub_tally,
                &plan.counters,
            )
            .await;
        }
        sub_tally
    };
    let publishing = futures::future::join_all(
        publishers
            .iter_mut()
            .map(|publisher| publish(plan, timing, publisher)),
    );
    let (sub_tally, pub_tallies) = futures::future::join(subscribing, publishing).await;
    tally.merge(sub_tally);
    for t in pub_tallies {
        tally.merge(t);
    }
    drop(links);
    tally
}

/// Reads deliveries until told to stop.
async fn receive_deliveries(
    plan: &FanoutPlan,
    timing: Timing,
    sessions: &mut [Session],
    events: &mut TaggedEvents,
    gate: &mut Gate,
    tally: &mut Tally,
) {
    let mut histogram = tally.deliveries.take().unwrap_or_else(report::histogram);
    let mut stopped = pin!(gate.stopped());
    loop {
        let (i, event) = tokio::select! {
            biased;
            event = events.next() => match event {
                Some(event) => event,
                None => break,
            },
            () = stopped.as_mut() => break,
        };
        let session = &mut sessions[i];
        match event {
            Event::End(outcome) => {
                session.ended = true;
                if let Err(key) = outcome {
                    tally.error(key, &plan.counters);
                }
            }
            Event::Data(data) => {
                let now = clock::now();
                let mut delivered = 0u64;
                let mut counted = 0u64;
                let mut problems: Vec<&'static str> = Vec::new();
                let split =
                    session
                        .splitter
                        .push(&data, |message| match grpc::server_frame(message) {
                            ServerFrame::Message { payload, .. } if payload.len() >= 8 => {
                                delivered += 1;
                                let mut stamp = [0u8; 8];
                                stamp.copy_from_slice(&payload[..8]);
                                let sent = u64::from_le_bytes(stamp);
                                if sent >= timing.measure_start {
                                    report::record(&mut histogram, now.saturating_sub(sent));
                                    counted += 1;
                                }
                            }
                            ServerFrame::Lagged => problems.push("LAGGED"),
                            ServerFrame::Shutdown => problems.push("SHUTDOWN"),
                            ServerFrame::Error { code, .. } => problems.push(grpc::code_name(code)),
                            _ => {}
                        });
                if let Err(key) = split {
                    tally.error(key, &plan.counters);
                }
                for problem in problems {
                    tally.error(problem, &plan.counters);
                }
                if delivered > 0 {
                    let room = &plan.rooms[session.room];
                    room.delivered.fetch_add(delivered, Ordering::AcqRel);
                    room.advanced.notify_waiters();
                    plan.counters.add(delivered);
                }
                if counted > 0 {
                    tally.delivered += counted;
                    tally.last_delivery = now;
                }
            }
        }
    }
    tally.deliveries = Some(histogram);
}

/// One publisher: keeps `in_flight` publishes waiting for acks, within the room's window,
/// on schedule with `--rate`, until the measurement ends or `--messages` are sent; then
/// waits for the last acks and closes its session.
async fn publish(plan: &FanoutPlan, timing: Timing, publisher: &mut Publisher) -> Tally {
    let mut tally = Tally::new();
    let mut acks = tally.acks.take().unwrap_or_else(report::histogram);
    let room = &plan.rooms[publisher.room];
    let stagger = plan
        .interval
        .map_or(0, |iv| iv * publisher.index as u64 / plan.publishers as u64);
    let mut next_due = timing.start + stagger;
    // (command id, stamp) of publishes waiting for their ack, in send order.
    let mut waiting: VecDeque<(u64, u64)> = VecDeque::with_capacity(plan.in_flight);
    let mut next_command = 1u64;
    let mut buffer = BytesMut::with_capacity(plan.in_flight * (plan.template.len() + 64));
    let mut stopping = false;
    let mut drain_deadline = u64::MAX;
    let mut timer = Box::pin(tokio::time::sleep_until(clock::instant(timing.measure_end)));
    let mut timer_at = timing.measure_end;
    loop {
        let now = clock::now();
        if !stopping && now >= timing.measure_end {
            stopping = true;
        }
        if stopping && drain_deadline == u64::MAX {
            drain_deadline = now + plan.drain;
        }
        if (stopping && waiting.is_empty())
            || now >= drain_deadline
            || publisher.session.ended
            || plan.refused.load(Ordering::Acquire)
        {
            break;
        }
        // Send what may go now.
        let mut blocked_on_window = false;
        let mut due_later = None;
        while !stopping && waiting.len() < plan.in_flight {
            let next = next_send(
                room,
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
            let command = next_command;
            next_command += 1;
            // Unique in the room: publisher index and command number.
            let client_id = plan
                .client_ids
                .then_some(((publisher.index as u64) << 40) | command);
            grpc::put_publish(
                &mut buffer,
                command,
                &room.name,
                &plan.template,
                stamp,
                client_id,
            );
            waiting.push_back((command, stamp));
            room.published.fetch_add(1, Ordering::AcqRel);
            if stamp >= timing.measure_start {
                tally.published += 1;
            }
            if let Some(interval) = plan.interval {
                next_due += interval;
            }
        }
        if !buffer.is_empty()
            && let Err(key) = publisher.session.send_data(buffer.split().freeze(), false)
        {
            tally.error(key, &plan.counters);
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
        if wake != timer_at {
            timer.as_mut().reset(clock::instant(wake));
            timer_at = wake;
        }
        let advanced = room.advanced.notified();
        let mut advanced = pin!(advanced);
        advanced.as_mut().enable();
        if blocked_on_window && room.outstanding() < plan.window * room.subscribers {
            continue;
        }
        tokio::select! {
            biased;
            event = publisher.events.next() => match event {
                None => break,
                Some((_, Event::End(outcome))) => {
                    publisher.session.ended = true;
                    if let Err(key) = outcome {
                        tally.error(key, &plan.counters);
                    }
                }
                Some((_, Event::Data(data))) => {
                    let now = clock::now();
                    let mut problems: Vec<&'static str> = Vec::new();
                    let split = publisher.session.splitter.push(&data, |message| {
                        let (command, failed) = match grpc::server_frame(message) {
                            ServerFrame::PublishAck { command_id, .. } => (command_id, None),
                            ServerFrame::Error { command_id, code } => {
                                (command_id, Some(grpc::code_name(code)))
                            }
                            ServerFrame::Lagged => {
                                problems.push("LAGGED");
                                return;
                            }
                            _ => return,
                        };
                        let position = waiting.iter().position(|&(id, _)| id == command);
                        let Some((_, stamp)) = position.and_then(|p| waiting.remove(p)) else {
                            return;
                        };
                        match failed {
                            Some(code) => {
                                // Never delivered: out of the window's count.
                                room.published.fetch_sub(1, Ordering::AcqRel);
                                plan.refused.store(true, Ordering::Release);
                                problems.push(code);
                            }
                            None if stamp >= timing.measure_start => {
                                report::record(&mut acks, now.saturating_sub(stamp));
                                tally.acked += 1;
                                tally.last_ack = now;
                            }
                            None => {}
                        }
                    });
                    if let Err(key) = split {
                        tally.error(key, &plan.counters);
                    }
                    for problem in problems {
                        tally.error(problem, &plan.counters);
                    }
                    if room.subscribers == 0 {
                        plan.counters.add(1);
                    }
                }
            },
            () = advanced, if blocked_on_window => {}
            () = timer.as_mut() => {}
        }
    }
    if !waiting.is_empty() && !plan.refused.load(Ordering::Acquire) {
        *tally.errors.entry("ACK_TIMEOUT".into()).or_default() += waiting.len() as u64;
    }
    plan.publishers_done.fetch_add(1, Ordering::AcqRel);
    let deadline = clock::now() + plan.drain.min(clock::nanos(Duration::from_secs(5)));
    close_sessions(
        std::slice::from_mut(&mut publisher.session),
        &mut publisher.events,
        deadline,
        &mut tally,
        &plan.counters,
    )
    .await;
    tally.acks = Some(acks);
    tally
}

// ---------------------------------------------------------------------------------- resume

/// Runs the resume scenario: stores `--history` messages, then measures one subscriber
/// replaying them all from offset 0.
pub(crate) fn resume(args: &BenchArgs) -> Result<Report, BenchError> {
    let history = args.history.max(1);
    let room = format!("bench.{}.resume", run_tag());
    let counters = Arc::new(Counters::default());
    // With several servers (a cluster's nodes), history is stored through the first and
    // replayed from the last: resume on another node than the one that took the publishes.
    let addrs = args.addrs();
    let store_addr = addrs.first().cloned().unwrap_or_default();
    let addr = addrs.last().cloned().unwrap_or_default();
    let dialer = Dialer::new(args)?;
    let in_flight = args.in_flight();
    let size = args.size();
    let drain = clock::nanos(args.drain_timeout);
    let thread_room = room.clone();
    let thread_counters = counters.clone();
    let pool = runner::spawn(1, move |_, gate| {
        let (store_addr, addr, dialer, room, counters) = (
            store_addr.clone(),
            addr.clone(),
            dialer.clone(),
            thread_room.clone(),
            thread_counters.clone(),
        );
        async move {
            resume_thread(
                (&store_addr, &addr),
                &dialer,
                &room,
                history,
                in_flight,
                size,
                drain,
                &counters,
                gate,
            )
            .await
        }
    })?;
    // Storing the history is setup: allow it time in proportion.
    let setup_allowance = Duration::from_secs(30 + history / 20_000);
    if !args.quiet {
        eprintln!("resume: storing {history} messages in {room}");
    }
    pool.wait_ready(args.connect_timeout + setup_allowance)?;
    let (timing, server_before, client_before) = start_measurement(args, |t| pool.start(t));
    let progress = Progress::start("resume", "replayed", counters, args.duration, args.quiet);
    let mut results = pool.join();
    let server_after = os::ServerSample::read(&args.server_pid);
    let client_after = os::sample(None).unwrap_or_default();
    drop(progress);
    let (tally, replay) = results.pop().unwrap_or_default();
    let mut extra = serde_json::Map::new();
    extra.insert("history".into(), json!(history));
    extra.insert("store_s".into(), json!(replay.store_seconds));
    extra.insert(
        "stored_per_s".into(),
        json!((history as f64 / replay.store_seconds.max(1e-9)).round()),
    );
    extra.insert(
        "first_message_ms".into(),
        json!(
            replay
                .first
                .map(|t| (t.saturating_sub(timing.measure_start)) as f64 / 1e6)
        ),
    );
    Ok(Report {
        scenario: "resume",
        addr: args.addr.clone(),
        unit: "replayed messages",
        messages: tally.delivered,
        elapsed: Duration::from_nanos(tally.last_delivery.saturating_sub(timing.measure_start)),
        latency: None,
        corrected: false,
        ack_latency: tally.acks.as_ref().and_then(LatencySummary::of),
        errors: tally.errors,
        server: usage(server_before, server_after),
        client_cpu: client_after.cpu.saturating_sub(client_before.cpu),
        config: json!({
            "history": history,
            "size": size,
            "in_flight": in_flight,
            "duration_s": args.duration.as_secs_f64(),
        }),
        extra,
    })
}

#[derive(Default)]
struct Replay {
    store_seconds: f64,
    first: Option<u64>,
}

/// Stores the history through `addrs.0`, then replays it from `addrs.1` (the same server,
/// or another node of a cluster).
#[allow(clippy::too_many_arguments)]
async fn resume_thread(
    (store_addr, addr): (&str, &str),
    dialer: &Dialer,
    room: &str,
    history: u64,
    in_flight: usize,
    size: usize,
    drain: u64,
    counters: &Counters,
    mut gate: Gate,
) -> (Tally, Replay) {
    let mut tally = Tally::new();
    let mut replay = Replay::default();
    let stored = store_history(
        store_addr, dialer, room, history, in_flight, size, &mut tally,
    )
    .await;
    let reader = match stored {
        Ok(seconds) => {
            replay.store_seconds = seconds;
            Connection::open(addr, dialer)
                .await
                .map_err(|reason| format!("cannot connect to {addr}: {reason}"))
        }
        Err(reason) => Err(reason),
    };
    let connection = match reader {
        Ok(connection) => {
            gate.ready(Ok(()));
            connection
        }
        Err(reason) => {
            gate.ready(Err(reason));
            return (tally, replay);
        }
    };
    let Some(timing) = gate.started().await else {
        return (tally, replay);
    };
    let mut events = SelectAll::new();
    // From the start (0): the room is this run's own, so that is exactly the stored
    // history, also in a cluster, whose offsets are stream sequences starting wherever the
    // stream was (the offset before the first one is another room's).
    let join = grpc::join_frame(1, room, Some(0), true);
    let mut session =
        match open_session(&connection, "bench-resume".into(), join, 0, 0, &mut events).await {
            Ok(session) => session,
            Err(key) => {
                tally.error(key, counters);
                return (tally, replay);
            }
        };
    let deadline = clock::instant(timing.measure_end + drain);
    let mut last_offset = None;
    // Replayed until the room's last offset at the join (offsets are not dense in a cluster:
    // they are stream sequences shared with other rooms, so count by offset, not by number).
    let mut seen_offset = 0;
    while last_offset.is_none_or(|last| seen_offset < last) {
        let Ok(Some((_, event))) = tokio::time::timeout_at(deadline, events.next()).await else {
            tally.error("DEADLINE", counters);
            break;
        };
        match event {
            Event::End(outcome) => {
                session.ended = true;
                tally.error(outcome.err().unwrap_or_else(|| "ENDED".into()), counters);
                break;
            }
            Event::Data(data) => {
                let mut messages = 0u64;
                let mut problems: Vec<&'static str> = Vec::new();
                let split =
                    session
                        .splitter
                        .push(&data, |message| match grpc::server_frame(message) {
                            ServerFrame::Message { offset, .. } => {
                                messages += 1;
                                seen_offset = seen_offset.max(offset);
                            }
                            ServerFrame::Joined { last_offset: l, .. } => last_offset = Some(l),
                            ServerFrame::Error { code, .. } => problems.push(grpc::code_name(code)),
                            ServerFrame::Lagged => problems.push("LAGGED"),
                            _ => {}
                        });
                if let Err(key) = split {
                    tally.error(key, counters);
                }
                for problem in &problems {
                    tally.error(*problem, counters);
                }
                if messages > 0 {
                    let now = clock::now();
                    replay.first.get_or_insert(now);
                    tally.delivered += messages;
                    tally.last_delivery = now;
                    counters.add(messages);
                }
                if !problems.is_empty() {
                    break;
                }
            }
        }
    }
    let deadline = clock::now() + clock::nanos(Duration::from_secs(5));
    close_sessions(
        std::slice::from_mut(&mut session),
        &mut events,
        deadline,
        &mut tally,
        counters,
    )
    .await;
    (tally, replay)
}

/// Publishes `history` messages to `room` with `in_flight` waiting for acks; returns the
/// seconds it took.
async fn store_history(
    addr: &str,
    dialer: &Dialer,
    room: &str,
    history: u64,
    in_flight: usize,
    size: usize,
    tally: &mut Tally,
) -> Result<f64, String> {
    let connection = Connection::open(addr, dialer)
        .await
        .map_err(|reason| format!("cannot connect to {addr}: {reason}"))?;
    let mut events = SelectAll::new();
    let join = grpc::join_frame(0, room, None, true);
    let mut session =
        open_session(&connection, "bench-history".into(), join, 0, 0, &mut events).await?;
    let mut unused = 0;
    await_joined(
        std::slice::from_mut(&mut session),
        &mut events,
        None,
        &mut unused,
    )
    .await?;
    let template = vec![b'h'; size];
    let started = clock::now();
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut buffer = BytesMut::new();
    let step = tokio::time::Duration::from_secs(30);
    while acked < history {
        while sent < history && sent - acked < in_flight as u64 {
            sent += 1;
            grpc::put_publish(&mut buffer, sent, room, &template, clock::now(), None);
        }
        if !buffer.is_empty() {
            session.send_data(buffer.split().freeze(), false)?;
        }
        let event = tokio::time::timeout(step, events.next())
            .await
            .map_err(|_| format!("no ack for {step:?} while storing history"))?;
        match event {
            None | Some((_, Event::End(_))) => {
                return Err(format!("session ended after {acked} of {history} stored"));
            }
            Some((_, Event::Data(data))) => {
                let mut failure = None;
                session
                    .splitter
                    .push(&data, |message| match grpc::server_frame(message) {
                        ServerFrame::PublishAck { .. } => acked += 1,
                        ServerFrame::Error { code, .. } => {
                            failure = Some(grpc::code_name(code));
                        }
                        _ => {}
                    })?;
                if let Some(code) = failure {
                    return Err(format!("storing history failed: {code}"));
                }
            }
        }
    }
    let seconds = (clock::now() - started) as f64 / 1e9;
    let deadline = clock::now() + clock::nanos(Duration::from_secs(10));
    let counters = Counters::default();
    close_sessions(
        std::slice::from_mut(&mut session),
        &mut events,
        deadline,
        tally,
        &counters,
    )
    .await;
    Ok(seconds)
}

// ---------------------------------------------------------------------------------- idle

/// Runs the idle scenario: opens `--sessions` sessions, each joined to a room, holds them for
/// `--duration`, and reports the server's RSS growth per session.
pub(crate) fn idle(args: &BenchArgs) -> Result<Report, BenchError> {
    let sessions = args.sessions.max(1);
    let connections = args
        .connections
        .max(sessions.div_ceil(IDLE_SESSIONS_PER_CONNECTION));
    let threads = args.threads.min(connections).max(1);
    let tag = run_tag();
    let rooms: Arc<Vec<String>> = Arc::new(
        (0..args.rooms.max(1))
            .map(|r| format!("bench.{tag}.idle.{r}"))
            .collect(),
    );
    let per_connection = Arc::new(runner::round_robin(sessions, connections));
    let layout = Arc::new(runner::round_robin(connections, threads));
    let counters = Arc::new(Counters::default());
    let server_before = os::ServerSample::reset_and_read(&args.server_pid);
    let client_before = os::sample(None).unwrap_or_default();
    let opened_at = clock::now();
    let (addr, dialer) = (args.addr.clone(), Dialer::new(args)?);
    let thread_counters = counters.clone();
    let pool = runner::spawn(threads, move |index, gate| {
        let (addr, dialer, rooms, per_connection, layout, counters) = (
            addr.clone(),
            dialer.clone(),
            rooms.clone(),
            per_connection.clone(),
            layout.clone(),
            thread_counters.clone(),
        );
        async move {
            let mine: Vec<&Vec<usize>> =
                layout[index].iter().map(|&c| &per_connection[c]).collect();
            idle_thread(&addr, &dialer, &rooms, &mine, &counters, gate).await
        }
    })?;
    let progress = Progress::start(
        "idle",
        "sessions joined",
        counters,
        args.duration,
        args.quiet,
    );
    pool.wait_ready(args.connect_timeout + SETUP_TIMEOUT)?;
    let joined_at = clock::now();
    // Let the server finish what the joins started before reading its RSS.
    std::thread::sleep(Duration::from_millis(500));
    let held = os::ServerSample::read(&args.server_pid);
    let now = clock::now();
    pool.start(Timing {
        start: now,
        measure_start: now,
        measure_end: now + clock::nanos(args.duration),
    });
    std::thread::sleep(args.duration);
    let server_after = os::ServerSample::read(&args.server_pid);
    let client_after = os::sample(None).unwrap_or_default();
    pool.stop();
    let results = pool.join();
    drop(progress);
    let mut tally = Tally::new();
    for result in results {
        tally.merge(result);
    }
    let mut extra = serde_json::Map::new();
    extra.insert("sessions".into(), json!(tally.sessions));
    if let (Some(before), Some(held)) = (
        server_before.as_ref().map(os::ServerSample::total),
        held.as_ref().map(os::ServerSample::total),
    ) {
        let growth = held.rss.saturating_sub(before.rss);
        extra.insert("server_rss_before_kib".into(), json!(before.rss / 1024));
        extra.insert("server_rss_held_kib".into(), json!(held.rss / 1024));
        extra.insert(
            "server_rss_per_session_bytes".into(),
            json!(growth / tally.sessions.max(1)),
        );
    }
    if let Some(after) = server_after.as_ref().map(os::ServerSample::total) {
        extra.insert("server_rss_end_kib".into(), json!(after.rss / 1024));
    }
    Ok(Report {
        scenario: "idle",
        addr: args.addr.clone(),
        unit: "sessions joined",
        messages: tally.sessions,
        elapsed: Duration::from_nanos(joined_at.saturating_sub(opened_at)),
        latency: tally.joins.as_ref().and_then(LatencySummary::of),
        corrected: false,
        ack_latency: None,
        errors: tally.errors,
        server: usage(server_before, server_after),
        client_cpu: client_after.cpu.saturating_sub(client_before.cpu),
        config: json!({
            "sessions": sessions,
            "connections": connections,
            "rooms": args.rooms.max(1),
            "hold_s": args.duration.as_secs_f64(),
            "threads": threads,
        }),
        extra,
    })
}

async fn idle_thread(
    addr: &str,
    dialer: &Dialer,
    rooms: &[String],
    connections: &[&Vec<usize>],
    counters: &Counters,
    mut gate: Gate,
) -> Tally {
    let mut tally = Tally::new();
    let mut links = Vec::new();
    let mut sessions = Vec::new();
    let mut events: TaggedEvents = SelectAll::new();
    let mut joins = tally.joins.take().unwrap_or_else(report::histogram);
    let mut last_joined = 0;
    let setup = async {
        for members in connections {
            let connection = Connection::open(addr, dialer)
                .await
                .map_err(|reason| format!("cannot connect to {addr}: {reason}"))?;
            for &s in members.iter() {
                let room = s % rooms.len();
                let join = grpc::join_frame(0, &rooms[room], None, true);
                let index = sessions.len();
                let session = open_session(
                    &connection,
                    format!("bench-idle-{s}"),
                    join,
                    room,
                    index,
                    &mut events,
                )
                .await?;
                sessions.push(session);
            }
            links.push(connection);
        }
        await_joined(
            &mut sessions,
            &mut events,
            Some(&mut joins),
            &mut last_joined,
        )
        .await
    };
    let outcome = setup.await;
    let failed = outcome.is_err();
    gate.ready(outcome);
    tally.joins = Some(joins);
    if failed {
        return tally;
    }
    tally.sessions = sessions.len() as u64;
    tally.first_open = sessions.iter().map(|s| s.opened_at).min().unwrap_or(0);
    tally.last_joined = last_joined;
    counters.add(tally.sessions);
    if gate.started().await.is_none() {
        return tally;
    }
    // Hold: read whatever comes (nothing, normally) until told to stop.
    let mut stopped = pin!(gate.stopped());
    loop {
        tokio::select! {
            biased;
            () = stopped.as_mut() => break,
            event = events.next() => match event {
                None => break,
                Some((i, Event::End(outcome))) => {
                    sessions[i].ended = true;
                    tally.error(outcome.err().unwrap_or_else(|| "ENDED".into()), counters);
                }
                Some((_, Event::Data(_))) => {}
            },
        }
    }
    let deadline = clock::now() + clock::nanos(Duration::from_secs(10));
    close_sessions(&mut sessions, &mut events, deadline, &mut tally, counters).await;
    drop(links);
    tally
}

//! `duplex tap`: a transparent HTTP/2 proxy that shows both directions of every
//! connection as it happens — frames, headers, gRPC messages, flow-control windows.
//!
//! Tasks and what they own:
//! - the accept loop (in [`run`]) owns the listener and the set of connection tasks, and
//!   collects each connection's totals when it ends;
//! - per connection, two forwarders (one per direction) each own one read half and one
//!   write half: a chunk read is handed to the connection's decoder *before* it is
//!   written on, so the trace order respects causality (a reply can never be decoded
//!   before the frame that caused it), then forwarded unchanged at once;
//! - the connection task owns the [`ConnectionDecoder`]: it decodes chunks in arrival
//!   order and formats lines;
//! - the printer task owns stdout.
//!
//! Every queue is bounded ([`CHUNK_QUEUE`], [`LINE_QUEUE`]): a slow terminal slows the
//! proxied traffic instead of growing memory, so the trace is always complete.
//! Shutdown (SIGINT/SIGTERM) is a `watch` value passed down; open connections are closed,
//! and with `--summary` the per-stream totals are printed last.

mod format;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use duplex_wire::{ConnectionDecoder, ConnectionSummary, Direction, Limits, Schema};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use format::{ColorChoice, Formatter};

/// Chunks read but not yet decoded, per connection.
const CHUNK_QUEUE: usize = 64;
/// Formatted lines not yet written to stdout.
const LINE_QUEUE: usize = 1024;
/// Largest read from a socket.
const READ_SIZE: usize = 64 * 1024;
/// Connections whose totals are kept for `--summary` (older ones are counted only).
const MAX_SUMMARIES: usize = 1000;

/// Arguments of `duplex tap`.
#[derive(Debug, clap::Args)]
pub(crate) struct TapArgs {
    /// Where clients connect: HOST:PORT. Port 0 picks one (printed as `listening on ADDR`).
    #[arg(long, default_value = "localhost:50052")]
    listen: String,

    /// The server to forward to: HOST:PORT.
    #[arg(long, default_value = "localhost:50051")]
    upstream: String,

    /// Print one JSON object per line (frames, connections, summary) instead of text.
    #[arg(long)]
    json: bool,

    /// At exit (SIGINT/SIGTERM), print per-stream totals: messages and bytes each way,
    /// time each side was blocked on flow control, gRPC status.
    #[arg(long)]
    summary: bool,

    /// Extra .proto files whose methods should be decoded (repeatable). duplex's own
    /// protos are built in; other methods are shown as hex.
    #[arg(long = "proto", value_name = "FILE")]
    protos: Vec<PathBuf>,

    /// Import directories for `--proto` files (repeatable; default: each file's folder).
    #[arg(long = "proto-path", value_name = "DIR")]
    proto_paths: Vec<PathBuf>,

    /// Color the output: auto (only when stdout is a terminal), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,

    /// Bytes of a message shown as hex when it cannot be decoded as protobuf.
    #[arg(long, default_value_t = 48)]
    hex_bytes: usize,

    /// Characters of a decoded message shown in text output (`--json` shows it whole).
    #[arg(long, default_value_t = 200)]
    max_text: usize,

    /// Bytes of each gRPC message kept for decoding (longer ones are shown as hex).
    #[arg(long, default_value = "4MiB", value_parser = duplex_server::parse_size)]
    max_capture: usize,

    /// Show `authorization` and cookie header values instead of `<redacted>`.
    #[arg(long)]
    show_secrets: bool,

    /// Give up connecting to the upstream (TLS handshakes included) after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,

    #[command(flatten)]
    tls: tls::TlsArgs,
}

/// Bytes one side sent, as read by its forwarder.
struct Chunk {
    direction: Direction,
    bytes: Bytes,
    at: Instant,
}

/// What a connection task needs, shared by all of them.
struct Shared {
    formatter: Formatter,
    upstream: String,
    connect_timeout: Duration,
    started: Instant,
    lines: mpsc::Sender<String>,
    tls: tls::Tls,
}

pub(crate) async fn run(args: TapArgs) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let schema = load_schema(&args.protos, &args.proto_paths)?;
    let tls = tls::Tls::from_args(&args.tls, &args.upstream)?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    // Scripts and tests read this line to learn the port chosen for `:0`; with --json it is
    // JSON like every other line, so the whole output can go through `jq`.
    if args.json {
        println!(
            "{}",
            serde_json::json!({"event": "listening", "address": local.to_string()})
        );
    } else {
        println!("listening on {local}");
    }

    let started = Instant::now();
    let (lines, lines_rx) = mpsc::channel(LINE_QUEUE);
    let printer = tokio::spawn(print_lines(lines_rx));
    let formatter = Formatter::new(
        schema,
        format::Options {
            color: args.color.enabled(),
            json: args.json,
            hex_bytes: args.hex_bytes,
            max_text: args.max_text,
            show_secrets: args.show_secrets,
        },
    );
    let shared = Arc::new(Shared {
        formatter,
        upstream: args.upstream.clone(),
        connect_timeout: args.connect_timeout,
        started,
        lines,
        tls,
    });
    let limits = Limits {
        message_capture: args.max_capture,
        ..Limits::default()
    };

    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut summaries: Vec<(u64, ConnectionSummary)> = Vec::new();
    let mut summaries_dropped = 0u64;
    let mut next_id = 0u64;
    let mut keep = |summaries: &mut Vec<(u64, ConnectionSummary)>, done| {
        if let Ok(Some(entry)) = done {
            if summaries.len() == MAX_SUMMARIES {
                summaries.remove(0);
                summaries_dropped += 1;
            }
            summaries.push(entry);
        }
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (client, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                next_id += 1;
                let shared = shared.clone();
                let stopped = stopped.clone();
                connections.spawn(proxy_connection(next_id, client, peer, shared, limits, stopped));
            }
            Some(done) = connections.join_next() => {
                keep(&mut summaries, done.map_err(|_| ()));
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }

    // Stop: every connection closes and hands back its totals.
    let _ = stop.send(true);
    drop(listener);
    while let Some(done) = connections.join_next().await {
        keep(&mut summaries, done.map_err(|_| ()));
    }
    let formatter = &shared.formatter;
    if args.summary {
        summaries.sort_by_key(|(id, _)| *id);
        for line in formatter.summary(&summaries, summaries_dropped) {
            let _ = shared.lines.send(line).await;
        }
    }
    drop(shared);
    printer.await.context("the printer task failed")?;
    Ok(())
}

/// Writes lines to stdout in order, flushing whenever the queue is momentarily empty.
async fn print_lines(mut lines: mpsc::Receiver<String>) {
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.recv().await {
        let mut buf = line.into_bytes();
        buf.push(b'\n');
        while let Ok(more) = lines.try_recv() {
            buf.extend_from_slice(more.as_bytes());
            buf.push(b'\n');
        }
        if stdout.write_all(&buf).await.is_err() || stdout.flush().await.is_err() {
            // stdout is gone (a closed pipe): keep draining so the proxy never stalls.
            while lines.recv().await.is_some() {}
            return;
        }
    }
}

/// The built-in descriptors plus the `--proto` files, compiled at start.
fn load_schema(protos: &[PathBuf], proto_paths: &[PathBuf]) -> anyhow::Result<Schema> {
    let mut schema = Schema::new();
    schema
        .add_descriptor_set(duplex_proto::FILE_DESCRIPTOR_SET)
        .context("the built-in descriptors are invalid")?;
    if protos.is_empty() {
        return Ok(schema);
    }
    let mut includes: Vec<PathBuf> = proto_paths.to_vec();
    for file in protos {
        let folder = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        if !includes.contains(&folder) {
            includes.push(folder);
        }
    }
    let mut compiler =
        protox::Compiler::new(&includes).context("cannot use the --proto-path folders")?;
    compiler.include_imports(true);
    for file in protos {
        compiler
            .open_file(file)
            .map_err(|error| anyhow::anyhow!("cannot compile {}: {error}", file.display()))?;
    }
    schema
        .add_descriptor_set(&compiler.encode_file_descriptor_set())
        .context("the --proto files conflict with the built-in ones")?;
    Ok(schema)
}

/// Proxies one client connection; returns its totals (`None` if the upstream was not reached).
async fn proxy_connection(
    id: u64,
    client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
) -> Option<(u64, ConnectionSummary)> {
    let formatter = &shared.formatter;
    let elapsed = || shared.started.elapsed();
    let _ = client.set_nodelay(true);
    // Connecting and the TLS handshakes share one time limit, and give way to shutdown.
    let opened = tokio::select! {
        opened = tokio::time::timeout(shared.connect_timeout, open(client, &shared)) => opened,
        _ = stopped.changed() => return None,
    };
    let (client, upstream, upstream_addr) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(why)) => {
            let _ = shared
                .lines
                .send(formatter.problem(id, elapsed(), &why))
                .await;
            return None;
        }
        Err(_) => {
            let why = format!(
                "gave up on {} after {:?} (connect or TLS handshake)",
                shared.upstream, shared.connect_timeout
            );
            let _ = shared
                .lines
                .send(formatter.problem(id, elapsed(), &why))
                .await;
            return None;
        }
    };
    let _ = shared
        .lines
        .send(formatter.connected(id, elapsed(), peer, upstream_addr, shared.tls.describe()))
        .await;

    let (chunks_tx, mut chunks) = mpsc::channel(CHUNK_QUEUE);
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let mut forwarders = JoinSet::new();
    forwarders.spawn(forward(
        Direction::ClientToServer,
        client_read,
        upstream_write,
        chunks_tx.clone(),
    ));
    forwarders.spawn(forward(
        Direction::ServerToClient,
        upstream_read,
        client_write,
        chunks_tx,
    ));

    let mut decoder = ConnectionDecoder::new(limits);
    let mut sent = [0u64; 2];
    let mut ending: Option<String> = None;
    loop {
        tokio::select! {
            chunk = chunks.recv() => {
                let Some(chunk) = chunk else { break };
                sent[chunk.direction.index()] += chunk.bytes.len() as u64;
                let at = chunk.at.saturating_duration_since(shared.started);
                for event in decoder.feed(chunk.direction, &chunk.bytes, chunk.at) {
                    for line in formatter.event(id, at, &event) {
                        let _ = shared.lines.send(line).await;
                    }
                }
            }
            Some(done) = forwarders.join_next() => {
                // One direction failed (not a clean EOF): the connection is over.
                if let Ok(Err(error)) = done {
                    ending.get_or_insert(error.to_string());
                    forwarders.abort_all();
                }
            }
            _ = stopped.changed() => {
                ending.get_or_insert_with(|| "tap stopping".to_owned());
                forwarders.abort_all();
                // Decode what was already read, then stop.
                while let Ok(chunk) = chunks.try_recv() {
                    for event in decoder.feed(chunk.direction, &chunk.bytes, chunk.at) {
                        let at = chunk.at.saturating_duration_since(shared.started);
                        for line in formatter.event(id, at, &event) {
                            let _ = shared.lines.send(line).await;
                        }
                    }
                }
                break;
            }
        }
    }
    let _ = shared
        .lines
        .send(formatter.closed(id, elapsed(), sent, ending.as_deref()))
        .await;
    Some((id, decoder.summary(Instant::now())))
}

/// Connects to the upstream and performs the configured TLS handshakes.
async fn open(
    client: TcpStream,
    shared: &Shared,
) -> Result<(Box<dyn tls::Io>, Box<dyn tls::Io>, Option<SocketAddr>), String> {
    let upstream = TcpStream::connect(&shared.upstream)
        .await
        .map_err(|error| format!("cannot connect to {}: {error}", shared.upstream))?;
    let _ = upstream.set_nodelay(true);
    let upstream_addr = upstream.peer_addr().ok();
    let (client, upstream) = shared
        .tls
        .wrap(client, upstream)
        .await
        .map_err(|error| format!("TLS handshake failed: {error:#}"))?;
    Ok((client, upstream, upstream_addr))
}

/// Copies one direction: each chunk goes to the decoder first, then on to the peer.
/// A clean EOF half-closes the peer's side; an error ends the connection.
async fn forward<R, W>(
    direction: Direction,
    mut from: R,
    mut to: W,
    chunks: mpsc::Sender<Chunk>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    loop {
        buf.reserve(READ_SIZE);
        let n = from.read_buf(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let at = Instant::now();
        let bytes = buf.split().freeze();
        // The decoder must see this chunk before the peer can react to it.
        let _ = chunks
            .send(Chunk {
                direction,
                bytes: bytes.clone(),
                at,
            })
            .await;
        to.write_all(&bytes).await?;
        to.flush().await?;
    }
}

//! [`Server`]: the sockets in front of an [`App`] — listening, admission, TLS, the
//! connection guard and HTTP/2 — run until a shutdown future resolves, then drained for the
//! grace period.
//!
//! One connection loop serves every mode. The acceptor ([`accept`], on the main runtime)
//! accepts, admits through the [`ConnectionGate`], opens the connection's tracing span and
//! hands the connection to a worker round-robin. A worker ([`serve_worker`]) runs the TLS
//! handshake and the guard, then serves HTTP/2 on the connection, every step inside that
//! span. `--workers 1` runs its one worker on the main runtime beside the acceptor; more
//! run each on its own thread with a single-threaded runtime. Shutdown: stop accepting,
//! announce the hub's `shutdown` frame, GOAWAY on every connection, wait for them for the
//! grace period, then drop what is left.
//!
//! The tasks hyper spawns per HTTP/2 stream do not enter the connection's span, nor do
//! requests carry it: either cost ~300 bytes of RSS per idle Hub session (measured). A
//! service's own spans (a session's) take the peer from
//! [`ConnectionInfo`](crate::guard::ConnectionInfo).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream;
use futures::{FutureExt as _, StreamExt as _};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tracing::{Instrument as _, Span, info, warn};

use duplex_hub::Hub;

use crate::app::{App, AppError};
use crate::chat::ChatService;
use crate::config::ServeConfig;
use crate::edge::{
    CallDeadline, CallDeadlineLayer, GrpcRequest, GrpcRequestLayer, PathAlias, PathAliasLayer,
};
use crate::guard::{Admission, CONCURRENT_HANDSHAKES, ConnectionGate, GuardedStream};
use crate::hub_service::HubService;
use crate::metrics::{GoAway as GoAwayReason, Refusal, ServerCounters};
use crate::web::WebServing;

/// The TLS settings from the flags: a certificate and key, and a client CA for mTLS, read
/// once for both listeners. TLS is terminated by the connection guard, so the PING policy
/// and the preface timeout see HTTP/2 on TLS connections too.
fn tls_settings(config: &ServeConfig) -> Result<Option<rustls::ServerConfig>, ServeError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let invalid = |path: &std::path::PathBuf, what: String| ServeError::TlsFile {
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(cert, e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(cert, e.to_string()))?;
    let builder = match &config.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in CertificateDer::pem_file_iter(ca).map_err(|e| invalid(ca, e.to_string()))? {
                roots
                    .add(der.map_err(|e| invalid(ca, e.to_string()))?)
                    .map_err(|e| invalid(ca, e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| invalid(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let tls = builder.with_single_cert(chain, key_der).map_err(|e| {
        invalid(
            key,
            format!("the certificate and key do not fit together: {e}"),
        )
    })?;
    Ok(Some(tls))
}

/// An acceptor for `tls` offering the `alpn` protocols.
fn tls_acceptor(tls: &rustls::ServerConfig, alpn: &[&[u8]]) -> TlsAcceptor {
    let mut tls = tls.clone();
    tls.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    TlsAcceptor::from(Arc::new(tls))
}

/// h2's cap on streams a peer may make us reset for protocol errors before the connection
/// is closed with GOAWAY (the fix for RUSTSEC-2024-0003). tonic passes "no limit" to hyper
/// unless it is set, so we set h2's own default explicitly.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Accepted connections waiting for one worker to take them; past it the acceptor refuses
/// connections rather than wait for that worker.
const WORKER_INBOX: usize = 1024;

/// The `shutdown` frame's reason, sent to every Hub session when the server stops.
const SHUTDOWN_REASON: &str = "server is shutting down";

/// The `shutdown` frame's hint: how long a client should wait before reconnecting (here or
/// elsewhere), in milliseconds.
const SHUTDOWN_RETRY_AFTER_MS: u32 = 1000;

/// First pause after a failed accept (out of descriptors and the like).
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(1);

/// Longest pause after failed accepts in a row (the pause doubles up to it).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address's host name could not be resolved.
    #[error("cannot resolve listen address `{address}`: {source}")]
    Resolve {
        /// The address as given.
        address: String,
        /// What the resolver said.
        source: std::io::Error,
    },
    /// The listen address resolved to nothing (or nothing could be bound).
    #[error("listen address `{0}` resolves to no address")]
    NoAddress(String),
    /// A listening socket could not be opened.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address that failed.
        address: SocketAddr,
        /// The socket error (in use, not permitted, …).
        source: std::io::Error,
    },
    /// The store, auth or hub could not be assembled.
    #[error(transparent)]
    App(#[from] AppError),
    /// Plaintext was asked for on an address reachable from the network.
    #[error(
        "refusing to serve plaintext on {0}: anyone on the network could read and alter the \
         traffic. Give --tls-cert and --tls-key, or --insecure if a proxy in front terminates TLS"
    )]
    PlaintextOnNetwork(SocketAddr),
    /// A TLS certificate, key or CA file could not be used.
    #[error("TLS: cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong with it.
        source: std::io::Error,
    },
    /// A connection worker (thread and runtime) could not start, or all of them stopped.
    #[error("cannot start a connection worker: {0}")]
    Worker(std::io::Error),
}

/// The listening sockets of one address of a [`ServeConfig`] (`--listen` or
/// `--web-listen`), bound, with the TLS acceptor if any.
struct Listening {
    /// TLS for every accepted connection (`--tls-cert`/`--tls-key`).
    tls: Option<TlsAcceptor>,
    /// One per address the listen address resolves to.
    listeners: Vec<TcpIncoming>,
    /// Their addresses, with the port actually chosen.
    local_addrs: Vec<SocketAddr>,
}

impl Listening {
    /// Resolves `listen` and binds every address it names, to be served with `tls`. With
    /// port 0 the first address picks the port and the others reuse it, so `localhost:0`
    /// still means one port on every loopback address.
    async fn bind(
        listen: &str,
        config: &ServeConfig,
        tls: Option<TlsAcceptor>,
    ) -> Result<Self, ServeError> {
        let mut addresses: Vec<SocketAddr> = tokio::net::lookup_host(listen)
            .await
            .map_err(|source| ServeError::Resolve {
                address: listen.to_owned(),
                source,
            })?
            .collect();
        addresses.dedup();
        let Some(&first) = addresses.first() else {
            return Err(ServeError::NoAddress(listen.to_owned()));
        };
        if config.tls_cert.is_none()
            && !config.insecure
            && let Some(open) = addresses.iter().find(|a| !a.ip().is_loopback())
        {
            return Err(ServeError::PlaintextOnNetwork(*open));
        }

        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        let mut port = first.port();
        for mut address in addresses {
            address.set_port(port);
            match TcpIncoming::bind(address) {
                Ok(listener) => {
                    let local = listener
                        .local_addr()
                        .map_err(|source| ServeError::Bind { address, source })?;
                    port = local.port();
                    local_addrs.push(local);
                    listeners.push(listener.with_nodelay(Some(config.tcp_nodelay)));
                }
                // A host name may resolve to an address family this machine lacks (no IPv6):
                // serving the others is what the user asked for.
                Err(source) if !listeners.is_empty() || address != first => {
                    warn!(%address, error = %source, "skipping listen address");
                }
                Err(source) => return Err(ServeError::Bind { address, source }),
            }
        }
        if listeners.is_empty() {
            return Err(ServeError::NoAddress(listen.to_owned()));
        }
        Ok(Self {
            tls,
            listeners,
            local_addrs,
        })
    }
}

/// A bound, not yet running server: an [`App`] behind listening sockets.
pub struct Server {
    /// What every connection serves.
    app: App,
    /// The listen, TLS, HTTP/2, limits and shutdown parts are read here.
    config: ServeConfig,
    /// The bound sockets and TLS.
    listening: Listening,
    /// The web listener's (`--web-listen`), unless it is off.
    web: Option<Listening>,
}

impl Server {
    /// Binds the sockets `config` names, then opens the [`App`] it describes (store, auth,
    /// hub), so the addresses are known (and connectable) before [`Server::run`] is called.
    /// Sockets first: a port in use is reported before the store is touched.
    pub async fn bind(config: ServeConfig) -> Result<Self, ServeError> {
        let (listening, web) = Self::bind_sockets(&config).await?;
        let app = App::open(&config).await?;
        Ok(Self {
            app,
            config,
            listening,
            web,
        })
    }

    /// Binds the sockets `config` names in front of an `app` opened already (its store,
    /// auth and hub settings in `config` are not read again).
    pub async fn bind_app(app: App, config: ServeConfig) -> Result<Self, ServeError> {
        let (listening, web) = Self::bind_sockets(&config).await?;
        Ok(Self {
            app,
            config,
            listening,
            web,
        })
    }

    /// The gRPC listener (HTTP/2 only) and the web listener (HTTP/1.1 and HTTP/2).
    async fn bind_sockets(
        config: &ServeConfig,
    ) -> Result<(Listening, Option<Listening>), ServeError> {
        let tls = tls_settings(config)?;
        let acceptor = |alpn: &[&[u8]]| tls.as_ref().map(|tls| tls_acceptor(tls, alpn));
        let grpc = Listening::bind(&config.listen, config, acceptor(&[b"h2"])).await?;
        let web = match config.web_address() {
            Some(address) => {
                Some(Listening::bind(address, config, acceptor(&[b"h2", b"http/1.1"])).await?)
            }
            None => None,
        };
        Ok((grpc, web))
    }

    /// The application behind the sockets.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The engine behind the Hub service (for stats and tests).
    pub fn hub(&self) -> &Hub {
        self.app.hub()
    }

    /// The addresses actually listened on (with the port chosen when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.listening.local_addrs
    }

    /// The web listener's addresses (empty when `--web-listen off`).
    pub fn web_addrs(&self) -> &[SocketAddr] {
        self.web.as_ref().map_or(&[], |web| &web.local_addrs)
    }

    /// The web listener's URLs, `http://ADDR/` (or `https`), one per address.
    pub fn web_urls(&self) -> Vec<String> {
        self.web.as_ref().map_or_else(Vec::new, |web| {
            crate::web::urls(&web.local_addrs, web.tls.is_some())
        })
    }

    /// Serves until `shutdown` resolves; then stops accepting, sends the hub's `shutdown`
    /// frame and GOAWAY, lets open calls finish for `config.shutdown_grace`, and returns.
    /// Calls still open after the grace period are dropped with their connections, as
    /// they are when this future is dropped.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Self {
            app,
            config,
            listening,
            web,
        } = self;
        let max_connection_age = config.max_connection_age();
        let serving = Serving {
            service: edge_service(&app, &config, max_connection_age),
            http2: Http2 {
                builder: http2_builder(&config),
                // GOAWAY at the age; the guard cuts the connection at age + grace.
                max_connection_age,
                counters: app.metrics().counters().clone(),
            },
            gate: ConnectionGate::new(config.connection_limits(), app.metrics().counters().clone()),
            tls: listening.tls,
        };
        let gate = serving.gate.clone();
        let tls = serving.tls.is_some();
        let (graceful_tx, graceful_rx) = watch::channel(false);
        let mut web = web.map(|web| {
            let serving =
                WebServing::new(&app, &config, gate.clone(), web.tls, graceful_rx.clone());
            tokio::spawn(crate::web::serve(
                web.listeners,
                serving,
                graceful_rx.clone(),
            ))
        });
        let (inboxes, mut workers) = Workers::start(config.worker_count(), serving, graceful_rx)?;
        let stopped = {
            let mut drained = std::pin::pin!(workers.drained());
            // Health goes NOT_SERVING first, while the listeners still accept: balancers
            // and watchers see it before connections are refused.
            let health = app.health().clone();
            let shutdown = async move {
                shutdown.await;
                health.shutting_down().await;
            };
            let accepting = accept(listening.listeners, &gate, &inboxes, tls, shutdown);
            let stopped = tokio::select! {
                () = accepting => Ok(()),
                () = &mut drained => Err(ServeError::Worker(std::io::Error::other(
                    "every connection worker stopped",
                ))),
            };
            // The listening sockets are closed by now (dropped with `accepting`).
            drop(inboxes);
            app.hub()
                .announce_shutdown(SHUTDOWN_REASON, SHUTDOWN_RETRY_AFTER_MS);
            info!(grace = ?config.shutdown_grace, "shutting down: no new connections, draining open calls");
            let _ = graceful_tx.send(true);
            if stopped.is_ok() {
                let all_drained = async {
                    (&mut drained).await;
                    if let Some(web) = &mut web {
                        let _ = web.await;
                    }
                };
                tokio::select! {
                    () = all_drained => {}
                    () = tokio::time::sleep(config.shutdown_grace) => {
                        warn!("grace period over: closing the calls still open");
                    }
                }
            }
            stopped
        };
        workers.stop().await;
        if let Some(web) = web {
            web.abort();
        }
        stopped
    }
}

/// The services every connection serves, behind the gRPC edge layers.
pub(crate) type EdgeService = GrpcRequest<PathAlias<CallDeadline<tonic::service::Routes>>>;

/// The gRPC services of `app` behind the request layers: content-type and method checks,
/// the `/Chat/Chat` alias, whole-call deadlines.
pub(crate) fn edge_service(
    app: &App,
    config: &ServeConfig,
    max_connection_age: Option<Duration>,
) -> EdgeService {
    let counters = app.metrics().counters();
    let chat = ChatService::new(config.max_message_size).with_counters(counters.clone());
    let routes = app
        .standard_services()
        .add_service(chat)
        .add_service(
            HubService::new(
                app.hub().clone(),
                app.auth().clone(),
                config.max_message_size,
                counters.clone(),
            )
            .with_max_connection_age(max_connection_age),
        )
        .prepare();
    tower::ServiceBuilder::new()
        .layer(GrpcRequestLayer)
        .layer(PathAliasLayer)
        .layer(CallDeadlineLayer)
        .service(routes)
}

/// Everything a worker needs to serve a connection; cloned into each worker.
#[derive(Clone)]
struct Serving {
    /// The services behind the request layers.
    service: EdgeService,
    /// How each connection speaks HTTP/2.
    http2: Http2,
    /// The admission counts (the acceptor admits; the worker wraps in the guard).
    gate: Arc<ConnectionGate>,
    /// TLS, run by the worker before the guard.
    tls: Option<TlsAcceptor>,
}

/// How every connection speaks HTTP/2.
#[derive(Clone)]
struct Http2 {
    builder: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// GOAWAY after this long (the guard closes the connection a grace period later).
    max_connection_age: Option<Duration>,
    /// Streams, GOAWAYs and keepalive timeouts are counted here.
    counters: Arc<ServerCounters>,
}

/// hyper's HTTP/2 settings from the flags. Served by hyper directly rather than through
/// tonic's server, which does not expose h2's per-stream send buffer: with a peer that
/// grants huge windows but stops reading its socket, h2 buffers up to that much per
/// stream, out of reach of the subscriber queues' bounds.
fn http2_builder(config: &ServeConfig) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let keepalive_interval = Some(config.keepalive_interval).filter(|d| !d.is_zero());
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(config.initial_stream_window)
        .initial_connection_window_size(config.initial_connection_window)
        .adaptive_window(config.adaptive_window)
        .max_frame_size(config.max_frame_size)
        .max_concurrent_streams(config.max_concurrent_streams)
        .keep_alive_interval(keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .max_header_list_size(u32::try_from(config.max_header_list_size).unwrap_or(u32::MAX))
        .max_send_buf_size(config.max_send_buffer);
    builder
}

/// Pause after failed accepts in a row: [`ACCEPT_BACKOFF_FIRST`], doubling per failure up
/// to [`ACCEPT_BACKOFF_MAX`]; a successful accept starts it over. Out of descriptors, an
/// accept loop that does not pause spins a core and starves the connections it serves.
#[derive(Debug)]
pub(crate) struct AcceptBackoff {
    /// The pause the next failure gets.
    next: Duration,
}

impl AcceptBackoff {
    pub(crate) fn new() -> Self {
        Self {
            next: ACCEPT_BACKOFF_FIRST,
        }
    }

    /// The pause after this failure.
    pub(crate) fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        pause
    }

    pub(crate) fn succeeded(&mut self) {
        self.next = ACCEPT_BACKOFF_FIRST;
    }
}

/// An accepted, admitted connection on its way to a worker, with its span.
struct Handoff {
    /// Detached from the acceptor's runtime, so a worker thread can take it up.
    tcp: std::net::TcpStream,
    /// Its place in the connection counts, released when the connection is gone.
    admission: Admission,
    /// Entered by the handshake, the guard and the connection's HTTP/2 task.
    span: Span,
}

/// The one accept loop: accepts on every listener until `shutdown` resolves, admits each
/// connection through `gate` (or refuses it), opens its span, and hands it to the workers'
/// `inboxes` round-robin. Backs off after failed accepts. Returns with the listeners
/// closed.
async fn accept(
    listeners: Vec<TcpIncoming>,
    gate: &Arc<ConnectionGate>,
    inboxes: &[mpsc::Sender<Handoff>],
    tls: bool,
    shutdown: impl Future<Output = ()>,
) {
    let mut incoming = stream::select_all(listeners);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = AcceptBackoff::new();
    let mut accepted = 0u64;
    loop {
        let next = tokio::select! {
            () = &mut shutdown => return,
            next = incoming.next() => next,
        };
        let tcp = match next {
            None => return,
            Some(Ok(tcp)) => tcp,
            Some(Err(error)) => {
                let pause = backoff.failed();
                warn!(%error, ?pause, "accept failed");
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        backoff.succeeded();
        accepted += 1;
        let span = tracing::info_span!(
            "connection",
            number = accepted,
            peer = tcp.peer_addr().ok().map(tracing::field::display),
            local = tcp.local_addr().ok().map(tracing::field::display),
            tls,
        );
        let inbox = &inboxes[(accepted % inboxes.len() as u64) as usize];
        let handoff = span.in_scope(|| {
            let admission = gate
                .admit(&tcp)
                .map_err(|reason| warn!(%reason, "connection refused"))
                .ok()?;
            let tcp = tcp
                .into_std()
                .map_err(|error| warn!(%error, "cannot hand a connection to a worker"))
                .ok()?;
            Some(Handoff {
                tcp,
                admission,
                span: span.clone(),
            })
        });
        // Never wait on one worker here: that would stall accepting (and shutdown) for
        // all of them. A worker this far behind sheds load.
        if let Some(handoff) = handoff
            && inbox.try_send(handoff).is_err()
        {
            gate.counters().refused(Refusal::WorkerBacklog);
            span.in_scope(|| warn!("worker backlog full: connection refused"));
        }
    }
}

/// The connection workers: one on the main runtime (`--workers 1`), or threads each with
/// a single-threaded runtime.
///
/// Why threads: with one work-stealing runtime, a connection's socket reads, its handler
/// tasks and its writes wake one another across threads for every message (h2 measured
/// ~50% more CPU than current-thread, hyperium/h2#762). On a worker a connection lives on
/// one thread for its whole life, and cores are used by spreading connections. The hub,
/// its sequencer and the store stay on the main runtime; sessions on every worker reach
/// them through their handles.
struct Workers {
    /// How the workers end, once drained or told to stop.
    ends: WorkerEnds,
}

/// How to wait for the workers and stop them.
enum WorkerEnds {
    /// The one worker, run by [`Server::run`] itself on the main runtime.
    Inline(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Worker threads.
    Threads {
        /// Each resolves when its worker has drained every connection.
        finished: Vec<oneshot::Receiver<()>>,
        /// Dropping these ends every worker (and the connections it holds) at once.
        hard_stops: Vec<oneshot::Sender<()>>,
        /// Each resolves once its worker's runtime is gone, with every task it held
        /// dropped (so the connections and sessions cut at the end of the grace have
        /// logged their end).
        exited: Vec<oneshot::Receiver<()>>,
    },
}

impl Workers {
    /// Starts `count` workers (one: on this runtime, when [`Workers::drained`] is polled)
    /// and returns their inboxes. Each serves what its inbox brings until `graceful` turns
    /// true, then drains.
    fn start(
        count: usize,
        serving: Serving,
        graceful: watch::Receiver<bool>,
    ) -> Result<(Vec<mpsc::Sender<Handoff>>, Self), ServeError> {
        if count <= 1 {
            let (inbox, handoffs) = mpsc::channel::<Handoff>(WORKER_INBOX);
            let worker = Box::pin(serve_worker(handoffs, serving, graceful));
            return Ok((
                vec![inbox],
                Self {
                    ends: WorkerEnds::Inline(worker),
                },
            ));
        }
        let mut inboxes = Vec::with_capacity(count);
        let mut finished = Vec::with_capacity(count);
        let mut hard_stops = Vec::with_capacity(count);
        let mut exited = Vec::with_capacity(count);
        for index in 0..count {
            let (inbox, handoffs) = mpsc::channel::<Handoff>(WORKER_INBOX);
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let (hard_stop, hard_stopped) = oneshot::channel::<()>();
            let (exit_tx, exit_rx) = oneshot::channel::<()>();
            let serving = serving.clone();
            let graceful = graceful.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ServeError::Worker)?;
            std::thread::Builder::new()
                .name(format!("duplex-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        tokio::select! {
                            () = serve_worker(handoffs, serving, graceful) => {
                                let _ = done_tx.send(());
                            }
                            _ = hard_stopped => {}
                        }
                    });
                    // Drops the tasks still held (connections, sessions), which log their end.
                    drop(runtime);
                    let _ = exit_tx.send(());
                })
                .map_err(ServeError::Worker)?;
            inboxes.push(inbox);
            finished.push(done_rx);
            hard_stops.push(hard_stop);
            exited.push(exit_rx);
        }
        Ok((
            inboxes,
            Self {
                ends: WorkerEnds::Threads {
                    finished,
                    hard_stops,
                    exited,
                },
            },
        ))
    }

    /// Ends every worker now, with the connections it still holds (as dropping `self` does),
    /// and waits (at most [`STOP_WAIT`]) for their tasks to be gone, so each connection and
    /// session cut here logs its end before the process exits.
    async fn stop(self) {
        match self.ends {
            WorkerEnds::Inline(worker) => {
                // The connections' tasks are aborted; sessions on this runtime then see
                // their streams fail. Give both a moment to run and log.
                drop(worker);
                tokio::time::sleep(STOP_WAIT / 10).await;
            }
            WorkerEnds::Threads {
                hard_stops, exited, ..
            } => {
                drop(hard_stops);
                let deadline = tokio::time::Instant::now() + STOP_WAIT;
                for exit in exited {
                    let _ = tokio::time::timeout_at(deadline, exit).await;
                }
            }
        }
    }

    /// Resolves once every worker has drained (or died). For the inline worker this is
    /// the worker itself: it must be polled from the start for connections to be served.
    async fn drained(&mut self) {
        match &mut self.ends {
            WorkerEnds::Inline(worker) => worker.as_mut().await,
            WorkerEnds::Threads { finished, .. } => {
                for done in finished.iter_mut() {
                    let _ = done.await;
                }
            }
        }
    }
}

/// How long stopping the workers waits for their tasks to be dropped (each logs its end).
const STOP_WAIT: Duration = Duration::from_secs(1);

/// One worker: takes the connections its inbox brings, runs each one's TLS handshake and
/// guard (concurrently, so a slow one does not hold up the next) and serves HTTP/2 on it,
/// all inside the connection's span. When `graceful` turns true it stops taking
/// connections, sends GOAWAY on every one and returns once they have all closed. Dropping
/// it drops every connection it holds.
async fn serve_worker(
    handoffs: mpsc::Receiver<Handoff>,
    serving: Serving,
    mut graceful: watch::Receiver<bool>,
) {
    let Serving {
        service,
        http2,
        gate,
        tls,
    } = serving;
    let handshakes = ReceiverStream::new(handoffs)
        .map(
            move |Handoff {
                      tcp,
                      admission,
                      span,
                  }| {
                let (gate, tls) = (gate.clone(), tls.clone());
                let guarded = async move {
                    let tcp = tokio::net::TcpStream::from_std(tcp)?;
                    gate.guard(tcp, admission, tls.as_ref()).await
                };
                guarded
                    .instrument(span.clone())
                    .map(move |guarded| (guarded, span))
            },
        )
        .buffer_unordered(CONCURRENT_HANDSHAKES);
    // Boxed, so dropping it drops the handshakes still running before the drain.
    let mut handshakes = Box::pin(handshakes);
    let mut connections = JoinSet::new();
    // What each connection watches for its GOAWAY: the same signal.
    let drain = graceful.clone();
    loop {
        tokio::select! {
            _ = graceful.wait_for(|&draining| draining) => break,
            guarded = handshakes.next() => match guarded {
                Some((Ok(io), span)) => {
                    let connection =
                        serve_connection(io, service.clone(), http2.clone(), drain.clone());
                    connections.spawn(connection.instrument(span));
                }
                Some((Err(error), span)) => {
                    // The connection's one end line (see `serve_connection` for the others).
                    span.in_scope(|| info!(reason = "before HTTP/2", %error, "connection closed"));
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(handshakes);
    while connections.join_next().await.is_some() {}
}

/// One connection: HTTP/2 until the peer goes, the server drains, or its maximum age
/// (then GOAWAY, and the calls in flight may finish).
async fn serve_connection(
    io: GuardedStream,
    service: EdgeService,
    http2: Http2,
    mut drain: watch::Receiver<bool>,
) {
    use tonic::transport::server::Connected as _;
    let info = io.connect_info();
    let budgets = io.queue_budgets();
    let counters = http2.counters.clone();
    let stream_counters = counters.clone();
    let service = tower::ServiceExt::map_request(
        service,
        move |mut request: http::Request<hyper::body::Incoming>| {
            stream_counters.stream_started(request.uri().path());
            request.extensions_mut().insert(info);
            request.extensions_mut().insert(budgets.clone());
            request.map(tonic::body::Body::new)
        },
    );
    let connection = http2
        .builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    let mut connection = std::pin::pin!(connection);
    let age = async {
        match http2.max_connection_age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    let mut age = std::pin::pin!(age);
    // Logs the end if the connection is dropped mid-way (cut at the end of the grace).
    let mut end = ConnectionEnd::new();
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                match served {
                    Ok(()) => end.reason = end.going_away.unwrap_or("client closed"),
                    Err(error) => {
                        // On HTTP/2 the only timeout hyper reports is the keepalive PING's.
                        if error.is_timeout() {
                            counters.keepalive_timeout();
                        }
                        end.reason = "error";
                        end.error = Some(error.to_string());
                    }
                }
                return;
            }
            () = &mut age, if end.going_away.is_none() => {
                end.going_away = Some("max connection age");
                counters.goaway(GoAwayReason::MaxConnectionAge);
                connection.as_mut().graceful_shutdown();
            }
            changed = drain.wait_for(|&draining| draining), if end.going_away.is_none() => {
                end.going_away = Some("server shutdown");
                let _ = changed;
                counters.goaway(GoAwayReason::Shutdown);
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A connection's `connection closed` info line, logged once when its task ends or is
/// dropped, inside the connection span (number, peer, local), with how long it lived and
/// why it ended.
struct ConnectionEnd {
    /// When HTTP/2 began on it.
    started: std::time::Instant,
    /// Why the server sent GOAWAY, once it has; until then an end is the client's doing.
    going_away: Option<&'static str>,
    /// Why it ended; a dropped connection was cut by the server at the end of the grace.
    reason: &'static str,
    /// The error it ended with, if any (hyper's or h2's; no request data).
    error: Option<String>,
}

impl ConnectionEnd {
    fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            going_away: None,
            reason: "cut after the shutdown grace",
            error: None,
        }
    }
}

impl Drop for ConnectionEnd {
    fn drop(&mut self) {
        info!(
            duration_ms = millis(self.started.elapsed()),
            reason = self.reason,
            error = self.error.as_deref(),
            "connection closed"
        );
    }
}

/// A duration in whole milliseconds, for log fields (saturating).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addrs", &self.listening.local_addrs)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second_and_starts_over_after_a_success() {
        let mut backoff = AcceptBackoff::new();
        let pauses: Vec<Duration> = (0..12).map(|_| backoff.failed()).collect();
        assert_eq!(pauses[0], Duration::from_millis(1));
        assert_eq!(pauses[1], Duration::from_millis(2));
        assert_eq!(pauses[9], Duration::from_millis(512));
        assert_eq!(pauses[10], ACCEPT_BACKOFF_MAX);
        assert_eq!(pauses[11], ACCEPT_BACKOFF_MAX);
        backoff.succeeded();
        assert_eq!(backoff.failed(), ACCEPT_BACKOFF_FIRST);
    }
}

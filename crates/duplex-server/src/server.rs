//! [`Server`]: binds the listening sockets, applies [`ServeConfig`] to HTTP/2, and runs the
//! services until a shutdown future resolves, then drains for the grace period.

use std::future::Future;
use std::net::SocketAddr;

use futures::StreamExt as _;
use futures::stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tracing::{debug, info, warn};

use std::sync::Arc;

use duplex_hub::Hub;
use duplex_store::{MemoryStore, RedbStore, Store};

use crate::auth::Authenticator;
use crate::chat::ChatService;
use crate::config::{ServeConfig, StoreKind};
use crate::edge::{
    CallDeadline, CallDeadlineLayer, GrpcRequest, GrpcRequestLayer, PathAlias, PathAliasLayer,
};
use crate::guard::{Admission, CONCURRENT_HANDSHAKES, ConnectionGate, GuardedStream};
use crate::hub_service::HubService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

/// The TLS acceptor from the flags: a certificate and key, and a client CA for mTLS.
/// TLS is terminated by the connection guard, so the PING policy and the preface timeout
/// see HTTP/2 on TLS connections too.
fn tls_acceptor(config: &ServeConfig) -> Result<Option<TlsAcceptor>, ServeError> {
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
    let mut tls = builder.with_single_cert(chain, key_der).map_err(|e| {
        invalid(
            key,
            format!("the certificate and key do not fit together: {e}"),
        )
    })?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(tls))))
}

/// h2's cap on streams a peer may make us reset for protocol errors before the connection
/// is closed with GOAWAY (the fix for RUSTSEC-2024-0003). tonic passes "no limit" to hyper
/// unless it is set, so we set h2's own default explicitly.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Accepted connections waiting for one worker to take them.
const WORKER_INBOX: usize = 1024;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot resolve listen address `{address}`: {source}")]
    Resolve {
        address: String,
        source: std::io::Error,
    },
    #[error("listen address `{0}` resolves to no address")]
    NoAddress(String),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the {kind} store: {source}")]
    Store {
        kind: &'static str,
        source: duplex_store::StoreError,
    },
    #[error(
        "refusing to serve plaintext on {0}: anyone on the network could read and alter the \
         traffic. Give --tls-cert and --tls-key, or --insecure if a proxy in front terminates TLS"
    )]
    PlaintextOnNetwork(SocketAddr),
    #[error("TLS: cannot read {path}: {source}")]
    TlsFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error("cannot start a connection worker: {0}")]
    Worker(std::io::Error),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound, not yet running server.
pub struct Server {
    config: ServeConfig,
    tls: Option<TlsAcceptor>,
    hub: Hub,
    auth: Arc<Authenticator>,
    listeners: Vec<TcpIncoming>,
    local_addrs: Vec<SocketAddr>,
}

impl Server {
    /// Resolves `config.listen` and binds every address it names, so the addresses are
    /// known (and connectable) before [`Server::run`] is called.
    ///
    /// With port 0 the first address picks the port and the others reuse it, so
    /// `localhost:0` still means one port on every loopback address.
    pub async fn bind(config: ServeConfig) -> Result<Self, ServeError> {
        let mut addresses: Vec<SocketAddr> = tokio::net::lookup_host(&config.listen)
            .await
            .map_err(|source| ServeError::Resolve {
                address: config.listen.clone(),
                source,
            })?
            .collect();
        addresses.dedup();
        let Some(&first) = addresses.first() else {
            return Err(ServeError::NoAddress(config.listen.clone()));
        };
        if config.tls_cert.is_none()
            && !config.insecure
            && let Some(open) = addresses.iter().find(|a| !a.ip().is_loopback())
        {
            return Err(ServeError::PlaintextOnNetwork(*open));
        }
        let tls = tls_acceptor(&config)?;

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
            return Err(ServeError::NoAddress(config.listen.clone()));
        }
        let store: Arc<dyn Store> = match config.store {
            StoreKind::Redb => {
                let opened = if config.reset_store {
                    RedbStore::open_resetting(&config.data_dir, config.retention())
                } else {
                    RedbStore::open(&config.data_dir, config.retention())
                };
                Arc::new(opened.map_err(|source| ServeError::Store {
                    kind: "redb",
                    source,
                })?)
            }
            StoreKind::Memory => Arc::new(MemoryStore::with_max_bytes(
                config.retention(),
                config.memory_store_bytes,
            )),
        };
        let auth = Arc::new(Authenticator::from_settings(&config.auth_settings())?);
        let hub = Hub::new(store, config.hub_config());
        Ok(Self {
            tls,
            auth,
            config,
            hub,
            listeners,
            local_addrs,
        })
    }

    /// The engine behind the Hub service (for stats and tests).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The addresses actually listened on (with the port chosen when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Serves until `shutdown` resolves; then stops accepting, sends GOAWAY, lets open calls
    /// finish for `config.shutdown_grace`, and returns. Calls still open after the grace
    /// period are dropped with their connections.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Self {
            config,
            listeners,
            hub,
            auth,
            tls,
            ..
        } = self;
        let keepalive_interval = Some(config.keepalive_interval).filter(|d| !d.is_zero());

        let max_connection_age = Some(config.max_connection_age).filter(|age| !age.is_zero());
        let routes = tonic::service::Routes::new(ChatService::new(config.max_message_size))
            .add_service(
                HubService::new(hub.clone(), auth, config.max_message_size)
                    .with_max_connection_age(max_connection_age),
            )
            .prepare();
        let service = tower::ServiceBuilder::new()
            .layer(GrpcRequestLayer)
            .layer(PathAliasLayer)
            .layer(CallDeadlineLayer)
            .service(routes);
        let http2 = Http2 {
            builder: http2_builder(&config, keepalive_interval),
            // GOAWAY at the age; the guard cuts the connection at age + grace.
            max_connection_age,
        };

        let workers = config.worker_count();
        if workers > 1 {
            return serve_on_workers(
                service, http2, listeners, hub, &config, tls, workers, shutdown,
            )
            .await;
        }

        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            hub.announce_shutdown("server is shutting down", 1000);
            info!(grace = ?config.shutdown_grace, "shutting down: no new connections, draining open calls");
            let _ = draining_tx.send(());
        };
        let gate = ConnectionGate::new(config.connection_limits());
        let admitted = stream::select_all(listeners).filter_map({
            let gate = gate.clone();
            move |accepted| {
                let admitted = match accepted {
                    Ok(tcp) => match gate.admit(&tcp) {
                        Ok(admission) => Some((tcp, admission)),
                        Err(reason) => {
                            warn!(%reason, "connection refused");
                            None
                        }
                    },
                    Err(error) => {
                        warn!(%error, "accept failed");
                        None
                    }
                };
                std::future::ready(admitted)
            }
        });
        let incoming = guarded(admitted, gate, tls);
        let serve = serve_http2(service, http2, incoming, signal);
        let grace_over = async move {
            match draining_rx.await {
                Ok(()) => tokio::time::sleep(config.shutdown_grace).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = serve => {}
            () = grace_over => warn!("grace period over: closing the calls still open"),
        }
        Ok(())
    }
}

/// The services every connection serves, behind the gRPC edge layers.
type EdgeService = GrpcRequest<PathAlias<CallDeadline<tonic::service::Routes>>>;

/// How every connection speaks HTTP/2.
#[derive(Clone)]
struct Http2 {
    builder: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// GOAWAY after this long (the guard closes the connection a grace period later).
    max_connection_age: Option<std::time::Duration>,
}

/// hyper's HTTP/2 settings from the flags. Served by hyper directly rather than through
/// tonic's server, which does not expose h2's per-stream send buffer: with a peer that
/// grants huge windows but stops reading its socket, h2 buffers up to that much per
/// stream, out of reach of the subscriber queues' bounds.
fn http2_builder(
    config: &ServeConfig,
    keepalive_interval: Option<std::time::Duration>,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
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

/// Serves each connection of `incoming` with `service` until `signal` resolves; then
/// GOAWAY on every connection, and returns once they have all closed.
async fn serve_http2(
    service: EdgeService,
    http2: Http2,
    incoming: impl futures::Stream<Item = Result<GuardedStream, std::io::Error>>,
    signal: impl Future<Output = ()>,
) {
    let (draining, drain) = watch::channel(false);
    // Boxed, so dropping it closes the listening sockets before the drain.
    let mut incoming = Box::pin(incoming);
    let mut signal = std::pin::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            accepted = incoming.next() => match accepted {
                Some(Ok(io)) => {
                    tokio::spawn(serve_connection(
                        io,
                        service.clone(),
                        http2.clone(),
                        drain.clone(),
                    ));
                }
                Some(Err(error)) => debug!(%error, "connection dropped before HTTP/2"),
                None => break,
            },
        }
    }
    // Stop accepting before draining, so the listening socket closes now.
    drop(incoming);
    let _ = draining.send(true);
    drop(drain);
    draining.closed().await;
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
    let service = tower::ServiceExt::map_request(
        service,
        move |mut request: http::Request<hyper::body::Incoming>| {
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
    let mut going_away = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = &mut age, if !going_away => {
                going_away = true;
                connection.as_mut().graceful_shutdown();
            }
            changed = drain.wait_for(|&draining| draining), if !going_away => {
                going_away = true;
                let _ = changed;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Admitted connections, guarded: TLS handshakes (if any) run concurrently, so a slow one
/// does not hold up the next; a failed one is logged and dropped.
fn guarded(
    admitted: impl futures::Stream<Item = (tokio::net::TcpStream, Admission)> + Send + 'static,
    gate: Arc<ConnectionGate>,
    tls: Option<TlsAcceptor>,
) -> impl futures::Stream<Item = Result<GuardedStream, std::io::Error>> + Send + 'static {
    admitted
        .map(move |(tcp, admission)| {
            let (gate, tls) = (gate.clone(), tls.clone());
            async move { gate.guard(tcp, admission, tls.as_ref()).await }
        })
        .buffer_unordered(CONCURRENT_HANDSHAKES)
        .filter_map(|guarded| {
            std::future::ready(match guarded {
                Ok(stream) => Some(Ok(stream)),
                Err(error) => {
                    debug!(%error, "connection dropped before HTTP/2");
                    None
                }
            })
        })
}

/// Serves on `workers` threads, each a single-threaded runtime running its own copy of the
/// router over the connections this (the main) runtime accepts and hands it round-robin.
///
/// Why: with one work-stealing runtime, a connection's socket reads, its handler tasks and
/// its writes wake one another across threads for every message (h2 measured ~50% more CPU
/// than current-thread, hyperium/h2#762). Here a connection lives on one thread for its whole
/// life, and cores are used by spreading connections. The hub, its sequencer and the store
/// stay on the main runtime; sessions on every worker reach them through their handles.
///
/// Shutdown: stop accepting, tell the hub's sessions, let every worker drain gracefully
/// (GOAWAY) for the grace period; whatever is still open then is dropped with its worker.
/// Dropping this future (an aborted server) also ends every worker at once.
#[allow(clippy::too_many_arguments)]
async fn serve_on_workers(
    service: EdgeService,
    http2: Http2,
    listeners: Vec<TcpIncoming>,
    hub: Hub,
    config: &ServeConfig,
    tls: Option<TlsAcceptor>,
    workers: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (graceful_tx, graceful_rx) = watch::channel(false);
    let gate = ConnectionGate::new(config.connection_limits());
    let mut inboxes = Vec::with_capacity(workers);
    let mut finished = Vec::with_capacity(workers);
    // Dropping these ends every worker (and the connections it holds) at once.
    let mut hard_stops = Vec::with_capacity(workers);
    for index in 0..workers {
        let (inbox, connections) = mpsc::channel::<(std::net::TcpStream, Admission)>(WORKER_INBOX);
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let (hard_stop, hard_stopped) = oneshot::channel::<()>();
        let service = service.clone();
        let http2 = http2.clone();
        let gate = gate.clone();
        let tls = tls.clone();
        let mut graceful = graceful_rx.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Worker)?;
        std::thread::Builder::new()
            .name(format!("duplex-worker-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let admitted =
                        ReceiverStream::new(connections).filter_map(|(tcp, admission)| {
                            let tcp = tokio::net::TcpStream::from_std(tcp)
                                .inspect_err(|error| warn!(%error, "cannot take a connection"));
                            std::future::ready(tcp.ok().map(|tcp| (tcp, admission)))
                        });
                    let incoming = guarded(admitted, gate, tls);
                    let signal = async move {
                        let _ = graceful.wait_for(|&draining| draining).await;
                    };
                    tokio::select! {
                        () = serve_http2(service, http2, incoming, signal) => {
                            let _ = done_tx.send(());
                        }
                        _ = hard_stopped => {}
                    }
                });
            })
            .map_err(ServeError::Worker)?;
        inboxes.push(inbox);
        finished.push(done_rx);
        hard_stops.push(hard_stop);
    }

    let mut incoming = stream::select_all(listeners);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next = 0usize;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = incoming.next() => match accepted {
                Some(Ok(tcp)) => match gate.admit(&tcp).map(|admission| (tcp.into_std(), admission)) {
                    Err(reason) => warn!(%reason, "connection refused"),
                    Ok((Err(error), _)) => warn!(%error, "cannot hand a connection to a worker"),
                    Ok((Ok(tcp), admission)) => {
                        // Never wait on one worker here: that would stall accepting (and
                        // shutdown) for all of them. A worker this far behind sheds load.
                        if inboxes[next % workers].try_send((tcp, admission)).is_err() {
                            warn!("worker backlog full: connection refused");
                        }
                        next = next.wrapping_add(1);
                    }
                },
                Some(Err(error)) => {
                    // Out of descriptors and the like: back off a little instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                None => break,
            },
        }
    }
    drop(incoming);
    hub.announce_shutdown("server is shutting down", 1000);
    info!(grace = ?config.shutdown_grace, "shutting down: no new connections, draining open calls");
    let _ = graceful_tx.send(true);
    let drained = async {
        for done in finished {
            let _ = done.await;
        }
    };
    tokio::select! {
        () = drained => {}
        () = tokio::time::sleep(config.shutdown_grace) => {
            warn!("grace period over: closing the calls still open");
        }
    }
    drop(hard_stops);
    Ok(())
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

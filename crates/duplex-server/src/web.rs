//! The web listener (`--web-listen`, `localhost:8080` by default): HTTP/1.1 and HTTP/2 for
//! what is not a gRPC client — operators' probes and browsers. The gRPC port stays
//! HTTP/2-only behind its frame guard; this listener is its own accept loop with the same
//! admission ([`ConnectionGate`], shared, so `--max-connections` and the per-IP cap count
//! both listeners together), the same TLS certificate (offering `h2` and `http/1.1`), and
//! `--preface-timeout` as the time a client has to send a request's headers (slowloris).
//!
//! Requests are routed by an [`axum::Router`] built by [`routes`]. Connections are served
//! with HTTP upgrades enabled (WebSocket) and RFC 8441 CONNECT on HTTP/2. Each request
//! carries the connection's [`ConnectionInfo`] and [`QueueBudgets`] as extensions, as on
//! the gRPC port. Shutdown: stop accepting, ask every connection to finish its request in
//! flight and close, then drop what is left when the grace period ends.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::stream;
use futures::{FutureExt as _, StreamExt as _};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::TcpIncoming;
use tracing::{Instrument as _, info, warn};

use crate::app::App;
use crate::config::ServeConfig;
use crate::guard::{Admission, ConnectionGate, tls_handshake};
use crate::server::AcceptBackoff;
use crate::websocket::{OpenSockets, SocketDrain};

/// What the web listener serves, for every connection.
#[derive(Clone)]
pub(crate) struct WebServing {
    /// The routes.
    pub(crate) router: axum::Router,
    /// HTTP/1.1 and HTTP/2 settings.
    pub(crate) builder: auto::Builder<TokioExecutor>,
    /// Admission, shared with the gRPC listener.
    pub(crate) gate: Arc<ConnectionGate>,
    /// TLS with ALPN `h2` and `http/1.1`, when the server has a certificate.
    pub(crate) tls: Option<TlsAcceptor>,
    /// The WebSockets open (they outlive their HTTP connections): a drain waits for them.
    pub(crate) websockets: Arc<OpenSockets>,
}

impl WebServing {
    /// The web listener's routes and protocol settings for `app` under `config`.
    /// `graceful` turns true when the server drains: WebSockets then end their sessions.
    pub(crate) fn new(
        app: &App,
        config: &ServeConfig,
        gate: Arc<ConnectionGate>,
        tls: Option<TlsAcceptor>,
        graceful: watch::Receiver<bool>,
    ) -> Self {
        let websockets = Arc::new(OpenSockets::default());
        let drain = SocketDrain {
            graceful,
            open: websockets.clone(),
        };
        Self {
            router: routes(app, config, drain),
            builder: builder(config),
            gate,
            tls,
            websockets,
        }
    }
}

/// Every route of the web listener: `/healthz` (live: the process serves HTTP), `/readyz`
/// (200 while serving and the store takes writes, else 503 with the reason), and
/// `/metrics` unless `--metrics false`; `/ws`, gRPC-Web and the page.
fn routes(app: &App, config: &ServeConfig, drain: SocketDrain) -> axum::Router {
    let health = app.health().clone();
    let router = axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = health.readiness();
                async move {
                    match ready {
                        Ok(()) => (http::StatusCode::OK, "ready\n".to_owned()),
                        Err(why) => (
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        )
        .merge(crate::websocket::routes(app, config, drain))
        .merge(crate::grpc_web::routes(app, config))
        .merge(crate::page::routes());
    if !config.metrics {
        return router;
    }
    let metrics = app.metrics().clone();
    router.route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                    metrics.render(),
                )
            }
        }),
    )
}

/// A connection's place in the admission counts, shared by its requests: a WebSocket
/// outlives the HTTP connection it was upgraded from and holds the place until it closes.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionHold {
    /// Released when the connection and every WebSocket upgraded from it are gone.
    _place: Arc<Admission>,
}

/// Liveness: the process serves HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// HTTP/1.1 (keep-alive, header read timeout) and HTTP/2 (the gRPC port's stream and
/// header limits, extended CONNECT for WebSockets) from the flags.
fn builder(config: &ServeConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.preface_timeout)
        .max_buf_size(config.max_header_list_size.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(u32::try_from(config.max_header_list_size).unwrap_or(u32::MAX))
        .max_send_buf_size(config.max_send_buffer)
        .keep_alive_interval(Some(config.keepalive_interval).filter(|d| !d.is_zero()))
        .keep_alive_timeout(config.keepalive_timeout);
    builder
}

/// Accepts on `listeners` until `graceful` turns true, serving each admitted connection;
/// then asks every open connection to close after its request in flight and returns once
/// they have. Dropping the future drops every connection.
pub(crate) async fn serve(
    listeners: Vec<TcpIncoming>,
    serving: WebServing,
    mut graceful: watch::Receiver<bool>,
) {
    let mut incoming = stream::select_all(listeners);
    let mut connections = JoinSet::new();
    let mut accepted = 0u64;
    let mut backoff = AcceptBackoff::new();
    // What each connection watches for its graceful close: the same signal.
    let drain = graceful.clone();
    loop {
        tokio::select! {
            () = graceful.wait_for(|&draining| draining).map(drop) => break,
            next = incoming.next() => match next {
                None => break,
                Some(Err(error)) => {
                    // Out of descriptors and the like: pause as the gRPC listener does.
                    let pause = backoff.failed();
                    warn!(%error, ?pause, "web listener: accept failed");
                    tokio::select! {
                        () = graceful.wait_for(|&draining| draining).map(drop) => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                Some(Ok(tcp)) => {
                    backoff.succeeded();
                    accepted += 1;
                    let span = tracing::info_span!(
                        "web_connection",
                        number = accepted,
                        peer = tcp.peer_addr().ok().map(tracing::field::display),
                    );
                    let admission = span.in_scope(|| {
                        serving
                            .gate
                            .admit(&tcp)
                            .map_err(|reason| warn!(%reason, "web connection refused"))
                            .ok()
                    });
                    if let Some(admission) = admission {
                        let connection =
                            serve_connection(tcp, admission, serving.clone(), drain.clone());
                        connections.spawn(connection.instrument(span));
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(incoming);
    while connections.join_next().await.is_some() {}
    // WebSockets end their sessions when the drain starts; wait for their closes to go out.
    serving.websockets.all_closed().await;
}

/// One web connection: TLS if configured, then HTTP/1.1 or HTTP/2 (with upgrades) until
/// the peer goes or the server drains.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    admission: Admission,
    serving: WebServing,
    mut drain: watch::Receiver<bool>,
) {
    let started = std::time::Instant::now();
    let info = admission.info();
    let budgets = admission.budgets();
    let hold = ConnectionHold {
        _place: Arc::new(admission),
    };
    // Still held once the connection is served: a WebSocket was upgraded from it.
    let place = Arc::downgrade(&hold._place);
    let router = serving.router.clone();
    let service = tower::ServiceExt::map_request(
        router,
        move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(info);
            request.extensions_mut().insert(budgets.clone());
            request.extensions_mut().insert(hold.clone());
            request.map(axum::body::Body::new)
        },
    );
    let service = TowerToHyperService::new(service);
    let outcome = match serving.tls {
        None => serve_io(TokioIo::new(tcp), &serving.builder, service, &mut drain).await,
        Some(acceptor) => match tls_handshake(&acceptor, tcp).await {
            Ok(tls) => serve_io(TokioIo::new(tls), &serving.builder, service, &mut drain).await,
            Err(error) => Err(error.into()),
        },
    };
    // One line per web connection end, in its span (peer).
    let duration_ms = crate::server::millis(started.elapsed());
    match outcome {
        Ok(()) if place.strong_count() > 0 => info!(
            duration_ms,
            reason = "upgraded to a WebSocket (its own line says when it closes)",
            "web connection closed"
        ),
        Ok(()) => info!(duration_ms, reason = "closed", "web connection closed"),
        Err(error) => info!(duration_ms, reason = "error", %error, "web connection closed"),
    }
}

/// Serves one connection's bytes until it ends; on drain, closes it gracefully.
async fn serve_io<I, S>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    service: S,
    drain: &mut watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<axum::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder.serve_connection_with_upgrades(io, service);
    let mut connection = std::pin::pin!(connection);
    let mut going_away = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => return served,
            () = drain.wait_for(|&draining| draining).map(drop), if !going_away => {
                going_away = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The addresses of the web listener, once bound (empty when `--web-listen off`).
pub(crate) fn urls(local_addrs: &[SocketAddr], tls: bool) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    local_addrs
        .iter()
        .map(|address| format!("{scheme}://{address}/"))
        .collect()
}

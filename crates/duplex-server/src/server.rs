//! [`Server`]: binds the listening sockets, applies [`ServeConfig`] to HTTP/2, and runs the
//! services until a shutdown future resolves, then drains for the grace period.

use std::future::Future;
use std::net::SocketAddr;

use futures::stream;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use std::sync::Arc;

use duplex_hub::Hub;
use duplex_store::{MemoryStore, RedbStore, Store};

use crate::auth::Authenticator;
use crate::chat::ChatService;
use crate::config::{ServeConfig, StoreKind};
use crate::edge::{CallDeadlineLayer, PathAliasLayer};
use crate::hub_service::HubService;

/// h2's cap on streams a peer may make us reset for protocol errors before the connection
/// is closed with GOAWAY (the fix for RUSTSEC-2024-0003). tonic passes "no limit" to hyper
/// unless it is set, so we set h2's own default explicitly.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

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
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound, not yet running server.
pub struct Server {
    config: ServeConfig,
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
            StoreKind::Redb => Arc::new(
                RedbStore::open(&config.data_dir, config.retention()).map_err(|source| {
                    ServeError::Store {
                        kind: "redb",
                        source,
                    }
                })?,
            ),
            StoreKind::Memory => Arc::new(MemoryStore::new(config.retention())),
        };
        let auth = Arc::new(Authenticator::from_settings(&config.auth_settings())?);
        let hub = Hub::new(store, config.hub_config());
        Ok(Self {
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
            ..
        } = self;
        let keepalive_interval = Some(config.keepalive_interval).filter(|d| !d.is_zero());

        let router = tonic::transport::Server::builder()
            .layer(PathAliasLayer)
            .layer(CallDeadlineLayer)
            .initial_stream_window_size(config.initial_stream_window)
            .initial_connection_window_size(config.initial_connection_window)
            .http2_adaptive_window(Some(config.adaptive_window))
            .max_frame_size(config.max_frame_size)
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_keepalive_interval(keepalive_interval)
            .http2_keepalive_timeout(Some(config.keepalive_timeout))
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
            .add_service(ChatService.into_server(config.max_message_size))
            .add_service(HubService::new(hub.clone(), auth, config.max_message_size));

        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            hub.announce_shutdown("server is shutting down", 1000);
            info!(grace = ?config.shutdown_grace, "shutting down: no new connections, draining open calls");
            let _ = draining_tx.send(());
        };
        let serve = router.serve_with_incoming_shutdown(stream::select_all(listeners), signal);
        let grace_over = async move {
            match draining_rx.await {
                Ok(()) => tokio::time::sleep(config.shutdown_grace).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            served = serve => served?,
            () = grace_over => warn!("grace period over: closing the calls still open"),
        }
        Ok(())
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

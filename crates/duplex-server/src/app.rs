//! [`App`]: the assembly of what every transport serves — the store behind the log, the
//! token check and the hub — built once from [`ServeConfig`] and shared by every listener.
//!
//! No sockets here: [`Server`](crate::Server) takes an `App` and adds listening sockets, TLS,
//! the connection guard and HTTP/2. The store choice lives here alone, so a clustered log
//! (`--cluster`) is one more arm in [`App::open`], and a second listener (HTTP/1.1 for
//! browsers) serves the same hub and the same auth as the gRPC port.

use std::sync::Arc;

use duplex_hub::Hub;
use duplex_store::{MemoryStore, RedbStore, Store};

use crate::auth::{AuthSetupError, Authenticator};
use crate::config::{ServeConfig, StoreKind};
use crate::health::Health;
use crate::metrics::Metrics;

/// Why the application could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The store named by `--store` could not be opened.
    #[error("cannot open the {kind} store: {source}")]
    Store {
        /// Which store (`redb`, `memory`).
        kind: &'static str,
        /// What the store reported.
        source: duplex_store::StoreError,
    },
    /// `--cluster`: the node could not join (NATS unreachable, JetStream missing, the
    /// stream's settings refused).
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] duplex_cluster::ClusterError),
    /// The JWT settings are unusable (a key file missing or malformed).
    #[error("auth: {0}")]
    Auth(#[from] AuthSetupError),
    /// The protobuf descriptors for reflection do not load (a build defect).
    #[error("reflection: {0}")]
    Reflection(tonic_reflection::server::Error),
}

/// The store, the token check and the hub, assembled once; cheap to clone (handles).
#[derive(Clone)]
pub struct App {
    /// The engine every service and transport publishes and subscribes through.
    hub: Hub,
    /// Token verification shared by every transport, so each one checks the same way.
    auth: Arc<Authenticator>,
    /// The registry `/metrics` renders and the server's counters every listener adds to.
    metrics: Arc<Metrics>,
    /// Serving or not (shutdown, store), for the health service and `/readyz`.
    health: Health,
    /// The standard services every gRPC listener serves beside ours: health and
    /// reflection (v1 and v1alpha).
    standard_services: tonic::service::Routes,
}

impl App {
    /// Opens the store named by `config` (`--store`, `--data-dir`, `--reset-store`,
    /// retention) or, with `--cluster`, joins the cluster (its log, live feed and
    /// presence), sets up token verification and starts the hub's tasks on the current
    /// tokio runtime.
    pub async fn open(config: &ServeConfig) -> Result<Self, AppError> {
        let hub = match config.cluster_config() {
            Some(cluster) => Self::join_cluster(cluster, config).await?,
            None => Hub::new(Self::open_store(config)?, config.hub_config()),
        };
        let auth = Arc::new(Authenticator::from_settings(&config.auth_settings())?);
        let metrics = Arc::new(Metrics::new(hub.clone(), config.lag_policy));
        let (health, health_service) = Health::new(hub.clone()).await;
        tokio::spawn(health.watch_store());
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(duplex_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let standard_services = tonic::service::Routes::new(health_service)
            .add_service(reflection().build_v1().map_err(AppError::Reflection)?)
            .add_service(reflection().build_v1alpha().map_err(AppError::Reflection)?);
        Ok(Self {
            hub,
            auth,
            metrics,
            health,
            standard_services,
        })
    }

    /// The single-node store named by `--store`.
    fn open_store(config: &ServeConfig) -> Result<Arc<dyn Store>, AppError> {
        Ok(match config.store {
            StoreKind::Redb => {
                let opened = if config.reset_store {
                    RedbStore::open_resetting(&config.data_dir, config.retention())
                } else {
                    RedbStore::open(&config.data_dir, config.retention())
                };
                Arc::new(opened.map_err(|source| AppError::Store {
                    kind: "redb",
                    source,
                })?)
            }
            StoreKind::Memory => Arc::new(MemoryStore::with_max_bytes(
                config.retention(),
                config.memory_store_bytes,
            )),
        })
    }

    /// `--cluster`: joins NATS and starts the hub on the cluster's seams (log, feed,
    /// presence), with payloads capped to what the NATS servers take.
    async fn join_cluster(
        cluster: duplex_cluster::ClusterConfig,
        config: &ServeConfig,
    ) -> Result<Hub, AppError> {
        let cluster = duplex_cluster::Cluster::connect(cluster).await?;
        let mut hub_config = config.hub_config();
        let seams = cluster.seams(hub_config.max_presence_listed).await?;
        hub_config.max_payload = hub_config.max_payload.min(cluster.max_payload());
        let hub = Hub::with_seams(seams.store, seams.feed, seams.presence, hub_config);
        tokio::spawn(announce_nats_losses(cluster.connection(), hub.clone()));
        Ok(hub)
    }

    /// Serving or not, for the health service and `/readyz`.
    pub(crate) fn health(&self) -> &Health {
        &self.health
    }

    /// Health and reflection, to serve beside the duplex services.
    pub(crate) fn standard_services(&self) -> tonic::service::Routes {
        self.standard_services.clone()
    }

    /// The engine behind the Hub service.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The token check every transport applies.
    pub fn auth(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// The metrics registry and counters.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The metrics in the Prometheus text format, as `/metrics` serves them.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

/// Tells every session when the node loses NATS (see [`Hub::announce_unavailable`]);
/// runs for as long as the NATS client does.
async fn announce_nats_losses(
    mut connection: tokio::sync::watch::Receiver<duplex_cluster::ConnectionState>,
    hub: Hub,
) {
    let mut connected = connection.borrow_and_update().connected;
    while connection.changed().await.is_ok() {
        let now = connection.borrow_and_update().connected;
        if connected && !now {
            hub.announce_unavailable(
                "this node lost its connection to NATS: publishes fail with UNAVAILABLE until \
                 it is back (live messages then resume where they stopped), or reconnect to \
                 another node",
            );
        }
        connected = now;
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

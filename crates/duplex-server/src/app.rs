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
    /// The JWT settings are unusable (a key file missing or malformed).
    #[error("auth: {0}")]
    Auth(#[from] AuthSetupError),
}

/// The store, the token check and the hub, assembled once; cheap to clone (handles).
#[derive(Clone)]
pub struct App {
    /// The engine every service and transport publishes and subscribes through.
    hub: Hub,
    /// Token verification shared by every transport, so each one checks the same way.
    auth: Arc<Authenticator>,
}

impl App {
    /// Opens the store named by `config` (`--store`, `--data-dir`, `--reset-store`,
    /// retention), sets up token verification and starts the hub's tasks on the current
    /// tokio runtime.
    pub async fn open(config: &ServeConfig) -> Result<Self, AppError> {
        let store: Arc<dyn Store> = match config.store {
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
        };
        let auth = Arc::new(Authenticator::from_settings(&config.auth_settings())?);
        let hub = Hub::new(store, config.hub_config());
        Ok(Self { hub, auth })
    }

    /// The engine behind the Hub service.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The token check every transport applies.
    pub fn auth(&self) -> &Arc<Authenticator> {
        &self.auth
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

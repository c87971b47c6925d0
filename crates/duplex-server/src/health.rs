//! Health: the standard `grpc.health.v1.Health` service (Check and Watch) on the gRPC port,
//! and the answers of `/readyz` on the web listener, from one state.
//!
//! Services reported: overall (`""`), `chat.Chat` and `duplex.v1.Hub`. All three are
//! SERVING while the server runs. From the moment shutdown starts — before the listeners
//! close — all three are NOT_SERVING, so balancers and watchers drain first. While the
//! store takes no writes (a failed commit until one succeeds, see
//! [`StoreCounters::available`](duplex_store::StoreCounters::available)), overall and
//! `duplex.v1.Hub` are NOT_SERVING; `chat.Chat` needs no store and stays SERVING.
//!
//! One task per server ([`Health::watch_store`]) looks at the store's state every
//! [`STORE_CHECK_INTERVAL`] and updates the statuses when it changes; it ends with the
//! [`Health`] value.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use duplex_hub::Hub;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthService, HealthServer};
use tonic_health::server::HealthReporter;

/// How often the store's availability is looked at.
pub(crate) const STORE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The service names reported, overall first.
const OVERALL: &str = "";
const CHAT: &str = "chat.Chat";
const HUB: &str = "duplex.v1.Hub";

/// Why the server is not ready, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotReady {
    /// Shutdown has started: the server is draining.
    ShuttingDown,
    /// The store takes no writes (its last commit failed).
    StoreUnavailable,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotReady::ShuttingDown => "shutting down",
            NotReady::StoreUnavailable => "store unavailable: its last commit failed",
        })
    }
}

/// The health state of one server, shared by the gRPC service, `/readyz` and shutdown.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Health {
    inner: Arc<HealthState>,
}

#[derive(Debug)]
struct HealthState {
    /// What the `grpc.health.v1.Health` service serves.
    reporter: HealthReporter,
    /// Whose store is watched.
    hub: Hub,
    /// Set once shutdown starts; never cleared.
    shutting_down: AtomicBool,
}

impl Health {
    /// The health of a server over `hub`, and the `grpc.health.v1.Health` service that
    /// reports it. Every service starts SERVING.
    pub(crate) async fn new(hub: Hub) -> (Self, HealthServer<impl HealthService>) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let health = Self {
            inner: Arc::new(HealthState {
                reporter,
                hub,
                shutting_down: AtomicBool::new(false),
            }),
        };
        health.inner.publish().await;
        (health, service)
    }

    /// Whether the server is ready for traffic, or why not.
    pub(crate) fn readiness(&self) -> Result<(), NotReady> {
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(NotReady::ShuttingDown);
        }
        if !store_available(&self.inner.hub) {
            return Err(NotReady::StoreUnavailable);
        }
        Ok(())
    }

    /// Shutdown starts: every service NOT_SERVING, watchers told now.
    pub(crate) async fn shutting_down(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        self.inner.publish().await;
    }

    /// Looks at the store every [`STORE_CHECK_INTERVAL`] and sets every status again when
    /// its availability changed; returns once every other handle is gone.
    pub(crate) fn watch_store(&self) -> impl Future<Output = ()> + Send + 'static {
        let state: Weak<HealthState> = Arc::downgrade(&self.inner);
        async move {
            let mut ticker = tokio::time::interval(STORE_CHECK_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // `Health::new` published the state at start.
            let mut last = state.upgrade().map(|state| store_available(&state.hub));
            loop {
                ticker.tick().await;
                let Some(state) = state.upgrade() else {
                    return;
                };
                let available = store_available(&state.hub);
                if last != Some(available) {
                    last = Some(available);
                    state.publish().await;
                }
            }
        }
    }
}

impl HealthState {
    /// Sets each service's status from the state now.
    async fn publish(&self) {
        let shutting_down = self.shutting_down.load(Ordering::Relaxed);
        let store = store_available(&self.hub);
        let status = |serving: bool| {
            if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        for (service, serving) in [
            (OVERALL, !shutting_down && store),
            (HUB, !shutting_down && store),
            (CHAT, !shutting_down),
        ] {
            self.reporter
                .set_service_status(service, status(serving))
                .await;
        }
    }
}

/// Whether `hub`'s store takes writes (a store that counts nothing always does).
fn store_available(hub: &Hub) -> bool {
    hub.store_counters().is_none_or(|store| store.available())
}

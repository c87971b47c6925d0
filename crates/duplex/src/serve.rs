//! `duplex serve`: binds, prints where it listens, and runs until SIGINT or SIGTERM.

use anyhow::Context as _;
use duplex_server::{ServeConfig, Server};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let server = Server::bind(config).await?;
    for address in server.local_addrs() {
        // Scripts and tests read this line to learn the port chosen for `:0`.
        println!("listening on {address}");
    }
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received"),
            _ = interrupt.recv() => info!("SIGINT received"),
        }
    };
    server.run(shutdown).await?;
    info!("stopped");
    Ok(())
}

//! NATS as a benchmark peer: `nats-fanout` (core NATS, one or more subjects, subscribers
//! spread over connections) and `nats-publish` (JetStream publish with a reply inbox,
//! acked/s), with the same shape and report as the room scenarios in [`crate::hub`].
//!
//! The load client is ours and speaks the text protocol directly ([`wire`], [`connection`]):
//! a client library such as async-nats spends more CPU per delivery than the server it
//! would measure. Each connection is one task with one read buffer parsed in place and one
//! write buffer sent per batch; every connection of a client thread runs on that thread's
//! runtime, as in the other scenarios. Publishes carry their publish time (on the run's
//! clock) in the first 8 payload bytes, so subscribers measure publish → delivery latency,
//! and publishers measure publish → PubAck.
//!
//! `nats-publish` creates its own stream before the run: `$JS.API.STREAM.CREATE` of
//! `duplex-bench-<tag>` on subjects `bench.<tag>.>`, file storage, `--nats-replicas`
//! replicas, limits retention (what the server's `sync_interval` does to it is the server's
//! configuration, not the stream's). It deletes the stream after the run unless
//! `--keep-stream`.
//!
//! Each figure is what the measured system promises in that configuration and no more: core
//! NATS delivers at most once, in no order across publishers, keeps no history and cuts off
//! a slow consumer (counted here as `DISCONNECTED`, and every message it did not get as
//! `DROPPED`); JetStream with the default sync acknowledges before fsync.

use crate::hub::SETUP_TIMEOUT;

mod connection;
mod fanout;
mod publish;
mod wire;

pub(crate) use fanout::fanout;
pub(crate) use publish::publish;

/// A client thread's setup, failed when it takes longer than [`SETUP_TIMEOUT`].
async fn within_setup_timeout(
    setup: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(SETUP_TIMEOUT, setup)
        .await
        .unwrap_or_else(|_| Err(format!("setup took longer than {SETUP_TIMEOUT:?}")))
}

/// Runs `future` to its end on a runtime of its own (setup and teardown steps of the
/// coordinator, which is not on a runtime).
fn block_on<T>(future: impl Future<Output = T>) -> Result<T, crate::BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::BenchError::Setup(format!("cannot start a runtime: {e}")))?;
    Ok(runtime.block_on(future))
}

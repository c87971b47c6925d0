//! Publishes each line of stdin to a room and prints the offset it was stored at.
//!
//! ```sh
//! printf 'one\ntwo\n' | cargo run -p duplex-client --example publish -- localhost:50051 lobby
//! ```
//!
//! `DUPLEX_TOKEN` is sent as a bearer token when set (`duplex token` mints one), and
//! `DUPLEX_CA` names a CA certificate (PEM) to reach a TLS server with (`duplex cert`).
//! Publishes are pipelined: each is submitted at once and its ack awaited in order, so a
//! lost connection costs nothing — the client re-sends what was not acked, with the same
//! message id, and the server stores it once.

use std::collections::VecDeque;

use bytes::Bytes;
use duplex_client::{Ack, Client, ClientOptions};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Acks awaited before reading more input: the bound on what this program holds.
const IN_FLIGHT: usize = 256;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(room)) = (args.next(), args.next()) else {
        return Err("usage: publish HOST:PORT ROOM  (lines to publish on stdin)".into());
    };
    let options = options_from_env(&addr, "publisher")?;
    let stdin = BufReader::new(tokio::io::stdin());
    let offsets = publish_lines(options, &room, stdin).await?;
    for offset in offsets {
        println!("{offset}");
    }
    Ok(())
}

/// Client options for `addr`, with `DUPLEX_TOKEN` and `DUPLEX_CA` from the environment.
pub(crate) fn options_from_env(
    addr: &str,
    name: &str,
) -> Result<ClientOptions, Box<dyn std::error::Error>> {
    let mut options = ClientOptions::new(addr, name);
    options.token = std::env::var("DUPLEX_TOKEN").ok();
    if let Ok(ca) = std::env::var("DUPLEX_CA") {
        let pem = std::fs::read(&ca).map_err(|e| format!("cannot read {ca}: {e}"))?;
        options.tls = Some(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        );
    }
    Ok(options)
}

/// Publishes every line of `input` to `room` in order; returns their offsets.
pub(crate) async fn publish_lines(
    options: ClientOptions,
    room: &str,
    input: impl tokio::io::AsyncBufRead + Unpin,
) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let (client, _events) = Client::connect(options).await?;
    client.join(room, None).await?;
    let mut lines = input.lines();
    let mut waiting: VecDeque<Ack> = VecDeque::new();
    let mut offsets = Vec::new();
    while let Some(line) = lines.next_line().await? {
        if waiting.len() == IN_FLIGHT
            && let Some(ack) = waiting.pop_front()
        {
            offsets.push(ack.await?);
        }
        waiting.push_back(
            client
                .submit(room, Bytes::from(line), "text/plain", "")
                .await?,
        );
    }
    for ack in waiting {
        offsets.push(ack.await?);
    }
    Ok(offsets)
}

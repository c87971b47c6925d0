//! `duplex chat`: an interactive room client. Lines you type are published; others'
//! messages print as they arrive. The connection is kept by `duplex-client`, which
//! reconnects with backoff and resumes from the last offset seen; this command says so on
//! screen, so a user sees exactly what happened and that nothing was lost.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use duplex_client::{Client, ClientOptions, Event};
use duplex_proto::hub::presence_event::Kind;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// Arguments of `duplex chat`.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// Room to join (letters, digits and . _ : -).
    #[arg(long)]
    room: String,

    /// Your name, shown to others as the sender.
    #[arg(long, env = "USER", default_value = "anonymous")]
    name: String,

    /// Server address: HOST:PORT or a full URL.
    #[arg(long, default_value = "localhost:50051", env = "DUPLEX_ADDR")]
    addr: String,

    /// Show this many earlier messages of the room when joining.
    #[arg(long, default_value_t = 20)]
    history: u32,

    #[command(flatten)]
    tls: crate::tls::ClientTlsArgs,

    /// Longest wait between reconnect attempts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let mut options = ClientOptions::new(&args.addr, &args.name);
    options.max_backoff = args.max_backoff;
    options.tls = args.tls.config()?;
    let (client, mut events) = Client::connect(options)
        .await
        .with_context(|| format!("is `duplex serve` running at {}?", args.addr))?;

    let joined = client.join_with_recent(&args.room, args.history).await?;
    let mut out = tokio::io::stdout();
    let others: Vec<&str> = joined.members.iter().map(|m| m.name.as_str()).collect();
    say(
        &mut out,
        &format!(
            "-- joined {} as {} ({} here: {})",
            args.room,
            args.name,
            others.len(),
            if others.is_empty() {
                "nobody else".to_owned()
            } else {
                others.join(", ")
            }
        ),
    )
    .await?;

    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut acks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            read = stdin.read_until(b'\n', &mut line) => {
                if read? == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_owned();
                line.clear();
                if text.is_empty() {
                    continue;
                }
                // Queued in typing order; the ack is awaited in the background, so typing
                // never waits for the disk.
                let ack = client.submit(&args.room, Bytes::from(text), "text/plain", "").await?;
                acks.spawn(async move {
                    if let Err(error) = ack.await {
                        eprintln!("-- not sent: {error}");
                    }
                });
            }
            event = events.next() => {
                let Some(event) = event else { break };
                if let Some(text) = render(&event, &args.name) {
                    say(&mut out, &text).await?;
                }
            }
        }
    }
    // EOF: let what was typed land, then leave.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while acks.join_next().await.is_some() {}
        client.leave(&args.room).await
    })
    .await;
    Ok(())
}

async fn say(out: &mut tokio::io::Stdout, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes()).await?;
    out.write_all(b"\n").await?;
    out.flush().await
}

/// One screen line for an event, or none for events about ourselves.
fn render(event: &Event, me: &str) -> Option<String> {
    match event {
        Event::Message(message) if message.sender != me => Some(format!(
            "[{}] {}",
            message.sender,
            String::from_utf8_lossy(&message.payload)
        )),
        Event::Message(_) => None,
        Event::Presence(presence) => {
            let who = presence
                .member
                .as_ref()
                .map_or("someone", |m| m.name.as_str());
            let what = if presence.kind == Kind::Joined as i32 {
                "joined"
            } else {
                "left"
            };
            Some(format!("-- {who} {what}"))
        }
        Event::Disconnected { reason, delay, .. } => Some(format!(
            "-- connection lost ({reason}); reconnecting in {}",
            humantime::format_duration(*delay)
        )),
        Event::Resumed { rooms } => Some(
            rooms
                .iter()
                .map(|(room, offset)| {
                    format!("-- reconnected: resumed {room} after offset {offset}")
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Event::ServerShutdown { reason } => Some(format!("-- server going away: {reason}")),
        Event::Error(error) => Some(format!("-- error: {}", error.message)),
    }
}

//! `duplex chat`: an interactive room client. Lines you type are published; others'
//! messages print as they arrive. The connection is kept by `duplex-client`, which
//! reconnects with backoff and resumes from the last offset seen; this command says so on
//! screen, so a user sees exactly what happened and that nothing was lost. A refusal that
//! retrying cannot change (no token, wrong server, a denied room) ends the command with
//! the reason and exit status 1.
//!
//! What others send is shown with control characters escaped, so a payload cannot forge a
//! `[name]` line with a newline or drive the terminal with escape sequences.

use std::time::Duration;

use bytes::Bytes;
use duplex_client::{Client, ClientError, ClientOptions, Event};
use duplex_proto::hub::presence_event::Kind;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// Arguments of `duplex chat`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChatArgs {
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

    #[command(flatten)]
    token: crate::token::ClientTokenArgs,

    /// Longest wait between reconnect attempts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
}

pub(crate) async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let mut options = ClientOptions::new(&args.addr, &args.name);
    options.max_backoff = args.max_backoff;
    options.tls = args.tls.config()?;
    options.token = args.token.token()?;
    let has_token = options.token.is_some();
    // With a token the server names us after its `sub`, whatever --name says.
    let me = options
        .token
        .as_deref()
        .and_then(crate::token::subject)
        .unwrap_or_else(|| args.name.clone());
    options.addr = crate::address::client_url(&args.addr, options.tls.is_some())?;
    let address = options.addr.clone();
    let (client, mut events) = Client::connect(options)
        .await
        .map_err(|error| match error {
            ClientError::Connect { .. } => anyhow::Error::new(error)
                .context(format!("is `duplex serve` running at {address}?")),
            error => refused(error, has_token, &args.room),
        })?;

    let joined = client
        .join_with_recent(&args.room, args.history)
        .await
        .map_err(|error| refused(error, has_token, &args.room))?;
    let mut out = tokio::io::stdout();
    say(
        &mut out,
        &format!(
            "-- joined {} as {} ({})",
            args.room,
            printable(&me),
            who_is_here(&joined.members)
        ),
    )
    .await?;

    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut acks = tokio::task::JoinSet::new();
    // Whether the session is up: the first failure after it worked is "connection lost",
    // the ones after it "still no connection".
    let mut connected = true;
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
                if let Event::Failed(error) = event {
                    return Err(refused(error, has_token, &args.room));
                }
                if let Some(text) = render(&event, &me, &mut connected) {
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

/// A refusal as the error the command ends with, with what to do about it.
fn refused(error: ClientError, has_token: bool, room: &str) -> anyhow::Error {
    use tonic::Code;
    let hint = match &error {
        ClientError::Refused {
            code: Code::Unimplemented,
            ..
        } => " (this server does not serve duplex rooms, `duplex.v1.Hub`: is it a duplex server? \
             `duplex echo` talks to the article's Chat service)"
            .to_owned(),
        ClientError::Refused {
            code: Code::Unauthenticated,
            ..
        } if !has_token => {
            " (this server requires a token: give --token-file, --token or DUPLEX_TOKEN; \
             `duplex token` mints one for development)"
                .to_owned()
        }
        ClientError::Refused {
            code: Code::Unauthenticated,
            ..
        } => " (the token was refused: check that it is signed with the server's key and not \
             expired; `duplex token` mints a new one)"
            .to_owned(),
        ClientError::Command {
            code: duplex_proto::hub::Code::PermissionDenied,
            ..
        } => {
            format!(" (the token does not grant room `{room}`: see its `rooms` claims)")
        }
        _ => String::new(),
    };
    anyhow::anyhow!("{error}{hint}")
}

/// "1 here: alice" / "0 here: nobody else".
fn who_is_here(members: &[duplex_proto::hub::Member]) -> String {
    if members.is_empty() {
        return "0 here: nobody else".to_owned();
    }
    let names: Vec<String> = members.iter().map(|m| printable(&m.name)).collect();
    format!("{} here: {}", names.len(), names.join(", "))
}

/// `text` with control characters (newlines, ESC, …) and bidirectional overrides written
/// as escapes, so what others send stays on its own line and cannot drive the terminal.
fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi_control = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi_control {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// One screen line for an event, or none for events about ourselves.
fn render(event: &Event, me: &str, connected: &mut bool) -> Option<String> {
    match event {
        Event::Message(message) if message.sender != me => Some(format!(
            "[{}] {}",
            printable(&message.sender),
            printable(&String::from_utf8_lossy(&message.payload))
        )),
        Event::Message(_) => None,
        Event::Presence(presence) => {
            let who = presence
                .member
                .as_ref()
                .map_or("someone".to_owned(), |m| printable(&m.name));
            let what = if presence.kind == Kind::Joined as i32 {
                "joined"
            } else {
                "left"
            };
            Some(format!("-- {who} {what}"))
        }
        Event::Disconnected {
            reason,
            attempt,
            delay,
        } => {
            // Whole milliseconds: the jittered delay's nanoseconds are noise on screen.
            let delay = Duration::from_millis(delay.as_millis().try_into().unwrap_or(u64::MAX));
            let what = if std::mem::replace(connected, false) {
                "connection lost"
            } else {
                "still no connection"
            };
            Some(format!(
                "-- {what} ({}); reconnect attempt {attempt} in {}",
                printable(reason),
                humantime::format_duration(delay)
            ))
        }
        Event::Resumed {
            room,
            after_offset,
            members,
        } => {
            *connected = true;
            Some(format!(
                "-- reconnected: resumed {} after offset {after_offset} ({})",
                printable(room),
                who_is_here(members)
            ))
        }
        Event::ServerShutdown { reason } => {
            Some(format!("-- server going away: {}", printable(reason)))
        }
        Event::Error(error) => Some(format!("-- error: {}", printable(&error.message))),
        Event::Failed(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped() {
        assert_eq!(printable("hi\n[alice] forged"), "hi\\n[alice] forged");
        assert_eq!(printable("\u{1b}[2Jgone"), "\\u{1b}[2Jgone");
        assert_eq!(printable("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(printable("héllo ✓ 你好\tx"), "héllo ✓ 你好\\tx");
    }
}

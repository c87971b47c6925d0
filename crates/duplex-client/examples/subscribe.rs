//! Prints a room's messages as they arrive, and resumes where it stopped — across
//! reconnects (the client does it) and across restarts of this program (the last offset
//! printed is kept in a file and the next run joins after it).
//!
//! ```sh
//! cargo run -p duplex-client --example subscribe -- localhost:50051 lobby lobby.offset
//! ```
//!
//! `DUPLEX_TOKEN` and `DUPLEX_CA` work as in the `publish` example.

#[path = "publish.rs"]
#[allow(dead_code)] // its `main` is its own
pub(crate) mod publish;

use std::path::Path;

use duplex_client::{ClientOptions, Event};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(room), Some(offset_file)) = (args.next(), args.next(), args.next())
    else {
        return Err("usage: subscribe HOST:PORT ROOM OFFSET_FILE".into());
    };
    let options = publish::options_from_env(&addr, "subscriber")?;
    follow(options, &room, Path::new(&offset_file), u64::MAX, |line| {
        println!("{line}")
    })
    .await
}

/// Joins `room` after the offset saved in `offset_file` (from the start when there is
/// none), hands each message to `show` as `OFFSET TEXT`, saves its offset, and returns
/// after `limit` messages or when the client ends for good.
pub(crate) async fn follow(
    options: ClientOptions,
    room: &str,
    offset_file: &Path,
    limit: u64,
    mut show: impl FnMut(String),
) -> Result<(), Box<dyn std::error::Error>> {
    let after = match std::fs::read_to_string(offset_file) {
        Ok(text) => Some(text.trim().parse::<u64>()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(e) => return Err(e.into()),
    };
    let (client, mut events) = duplex_client::Client::connect(options).await?;
    client.join(room, after).await?;
    let mut seen = 0;
    while seen < limit {
        let Some(event) = events.next().await else {
            break;
        };
        match event {
            Event::Message(message) => {
                let text = String::from_utf8_lossy(&message.payload);
                show(format!("{} {text}", message.offset));
                // Written after showing: a crash in between shows it again, never skips it.
                std::fs::write(offset_file, message.offset.to_string())?;
                seen += 1;
            }
            Event::Disconnected { reason, delay, .. } => {
                eprintln!("connection lost ({reason}); retrying in {delay:?}");
            }
            Event::Resumed { after_offset, .. } => {
                eprintln!("reconnected; resuming after offset {after_offset}");
            }
            Event::Failed(error) => return Err(error.into()),
            _ => {}
        }
    }
    Ok(())
}

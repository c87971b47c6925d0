//! The `duplex` command: parses arguments and hands each subcommand to its module.

mod address;
mod bench;
mod cert;
mod chat;
mod config_file;
mod echo;
mod serve;
mod tap;
mod tls;
mod token;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// Real-time bidirectional streaming over gRPC / HTTP/2.
#[derive(Debug, Parser)]
#[command(name = "duplex", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log lines on stderr as `text` (for a person) or `json` (one object per line, for a
    /// log pipeline). RUST_LOG filters either (default `info`, e.g. `info,duplex_hub=debug`).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "DUPLEX_LOG_FORMAT",
        help_heading = "Logs"
    )]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One human-readable line per event, spans as `name{field=value}:` prefixes.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's fields
    /// (`message` among them) and `spans`, the fields of each enclosing span.
    Json,
}

// `serve`'s config is large next to the other variants; it is parsed once at start-up.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: the article's Chat echo and the Hub's rooms (history, resume, auth,
    /// limits) over gRPC, on `localhost:50051` by default.
    Serve(serve::ServeArgs),
    /// The article's client: send each stdin line as a Msg, print each reply as `server: <<line>>`.
    Echo(echo::EchoArgs),
    /// Chat in a room: type to publish, see others live; reconnects and resumes by itself.
    Chat(chat::ChatArgs),
    /// Load-test a server: echo ping-pong and pipelined, room fan-out, resume, idle sessions.
    Bench(bench::BenchCommand),
    /// Proxy HTTP/2 and show every frame both ways: headers, gRPC messages, flow-control windows.
    Tap(tap::TapArgs),
    /// Mint a development JWT for a server started with --jwt-secret-file or --jwt-public-key-file.
    Token(token::TokenArgs),
    /// Make a local CA and server/client certificates for trying TLS (not for production).
    Cert(cert::CertArgs),
}

/// mimalloc rather than glibc's malloc: a server's allocations are made on one thread and
/// freed on another all day (frames, messages, store batches), which glibc's arenas handle
/// with locks and consolidation passes: they took a fifth of the server's CPU in durable
/// publish. Measured on 2 cores, binaries alternating: durable publish 140-151k → 188-199k
/// acked/s; fan-out and echo within noise; idle sessions 5.7 → 6.2 KB of RSS each.
///
/// Built with mimalloc's `no_thp` (workspace `Cargo.toml`): otherwise it asks for
/// transparent huge pages on its arenas (`MADV_HUGEPAGE`), so every region it touches
/// becomes 2 MiB of RSS: a fresh `duplex serve` held 15 MB of anonymous memory for 1.5 MB
/// of heap (26.0 → 13.3 MB RSS; echo under load 28.5–32.5 → 13.7–15.2 MB).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // flag > env > config file > default: the file's values become clap's defaults.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (command, config_file) = match config_file::layer(Cli::command(), &args) {
        Ok(layered) => layered,
        Err(error) => {
            eprintln!("error: {}", explain(&error));
            return ExitCode::from(2);
        }
    };
    let matches = command.clone().get_matches_from(&args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    init_logging(cli.log_format);

    if let Command::Serve(args) = &cli.command
        && let Err(problem) = args.config.check()
    {
        eprintln!("error: {problem}");
        return ExitCode::from(2);
    }

    // Commands that need no runtime.
    let command = match cli.command {
        Command::Token(args) => return finish(token::run(args)),
        Command::Cert(args) => return finish(cert::run(args)),
        Command::Serve(args) if args.print_config => {
            print!(
                "{}",
                config_file::render(&command, &matches, config_file.as_ref())
            );
            return ExitCode::SUCCESS;
        }
        command => command,
    };

    let runtime = match &command {
        Command::Serve(args) => args.config.runtime.build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match command {
            Command::Serve(args) => serve::run(args.config).await,
            Command::Echo(args) => echo::run(args).await,
            Command::Chat(args) => chat::run(args).await,
            Command::Tap(args) => tap::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Token(_) | Command::Cert(_) => unreachable!("run without a runtime"),
        }
    });
    // stdin is read on a blocking thread that cannot be cancelled: don't wait for it.
    runtime.shutdown_background();
    finish(outcome)
}

/// Targets whose trace lines would print what logs must never hold, capped below trace
/// whatever RUST_LOG asks: tungstenite logs every WebSocket frame with its payload in hex
/// at trace (`received frame`, `Sending frame`).
const CAPPED_TARGETS: &[(&str, &str)] = &[
    ("tungstenite", "tungstenite=debug"),
    ("tokio_tungstenite", "tokio_tungstenite=debug"),
];

/// The log filter from RUST_LOG (`info` when unset or invalid), with [`CAPPED_TARGETS`]
/// capped: RUST_LOG's own directives for them (or their modules) are dropped first, so
/// `tungstenite::protocol=trace` cannot lift the cap either.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let kept: Vec<&str> = rust_log
        .unwrap_or("info")
        .split(',')
        .map(str::trim)
        .filter(|directive| {
            !directive.is_empty()
                && !CAPPED_TARGETS
                    .iter()
                    .any(|(target, _)| directive.starts_with(target))
        })
        .collect();
    let mut filter = tracing_subscriber::EnvFilter::try_new(kept.join(","))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for (_, cap) in CAPPED_TARGETS {
        if let Ok(directive) = cap.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Logs to stderr as `format` says, filtered by RUST_LOG (see [`log_filter`]).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;

    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = log_filter(rust_log.as_deref());
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colour codes only for a person at a terminal, never into log files or pipes.
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        // `.json()` on the builder, not a JSON event format alone: spans then get JSON
        // fields too (tokio-rs/tracing#3327).
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
}

/// The exit status, after printing the error (each cause once) if there is one.
fn finish(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", explain(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: many errors repeat their
/// source's text in their own (`cannot listen on …: Address already in use` over the I/O
/// error itself), so a cause already contained in the line is skipped. Adds a hint where
/// one helps.
fn explain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    let address_in_use = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    });
    if address_in_use {
        line.push_str(
            " (another program is listening there, perhaps another duplex serve: stop it, or \
             pick a free port with --listen HOST:PORT; port 0 picks one)",
        );
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_cannot_lift_the_cap_on_targets_that_would_log_payloads() {
        for rust_log in [
            "trace",
            "trace,tungstenite=trace",
            "trace,tungstenite::protocol=trace,tokio_tungstenite=trace",
        ] {
            let filter = log_filter(Some(rust_log)).to_string();
            assert!(
                !filter.contains("tungstenite=trace"),
                "{rust_log}: {filter}"
            );
            assert!(!filter.contains("protocol=trace"), "{rust_log}: {filter}");
            assert!(filter.contains("tungstenite=debug"), "{rust_log}: {filter}");
            assert!(
                filter.contains("tokio_tungstenite=debug"),
                "{rust_log}: {filter}"
            );
        }
        let filter = log_filter(Some("duplex_hub=debug,warn")).to_string();
        assert!(filter.contains("duplex_hub=debug"), "{filter}");
        assert!(log_filter(None).to_string().contains("info"));
    }
}

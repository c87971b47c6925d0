//! The `duplex` command: parses arguments and hands each subcommand to its module.

mod address;
mod bench;
mod cert;
mod chat;
mod echo;
mod serve;
mod tap;
mod tls;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Real-time bidirectional streaming over gRPC / HTTP/2.
#[derive(Debug, Parser)]
#[command(name = "duplex", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// `serve`'s config is large next to the other variants; it is parsed once at start-up.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: the article's Chat echo and the Hub's rooms (history, resume, auth,
    /// limits) over gRPC, on `localhost:50051` by default.
    Serve(duplex_server::ServeConfig),
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
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    use std::io::IsTerminal as _;

    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into log files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // Commands that need no runtime.
    let command = match cli.command {
        Command::Token(args) => return finish(token::run(args)),
        Command::Cert(args) => return finish(cert::run(args)),
        command => command,
    };

    let runtime = match &command {
        Command::Serve(config) => config.runtime.build(),
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
            Command::Serve(config) => serve::run(config).await,
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

//! The `duplex` command: parses arguments and hands each subcommand to its module.

mod bench;
mod chat;
mod echo;
mod serve;
mod tap;
mod tls;

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
    /// Run the server: the Chat echo service on `localhost:50051` by default.
    Serve(duplex_server::ServeConfig),
    /// The article's client: send each stdin line as a Msg, print each reply as `server: <<line>>`.
    Echo(echo::EchoArgs),
    /// Chat in a room: type to publish, see others live; reconnects and resumes by itself.
    Chat(chat::ChatArgs),
    /// Load-test a server: echo ping-pong and pipelined, room fan-out, resume, idle sessions.
    Bench(bench::BenchArgs),
    /// Proxy HTTP/2 and show every frame both ways: headers, gRPC messages, flow-control windows.
    Tap(tap::TapArgs),
}

/// mimalloc rather than glibc's malloc: a server's allocations are made on one thread and
/// freed on another all day (frames, messages, store batches), which glibc's arenas handle
/// with locks and consolidation passes. Measured in the note of the commit that added it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let runtime = match &cli.command {
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
        match cli.command {
            Command::Serve(config) => serve::run(config).await,
            Command::Echo(args) => echo::run(args).await,
            Command::Chat(args) => chat::run(args).await,
            Command::Tap(args) => tap::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    // stdin is read on a blocking thread that cannot be cancelled: don't wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

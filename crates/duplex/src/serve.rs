//! `duplex serve`: binds, says where it listens and how it is set up (one line each:
//! addresses, store, auth, TLS), and runs until SIGINT or SIGTERM.

use std::io::Write as _;

use anyhow::Context as _;
use duplex_server::{ServeConfig, Server, StoreKind};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

/// `duplex serve`'s arguments: the server's settings and how to read them.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) config: ServeConfig,

    /// Read settings from this TOML file: `key = value` lines, keys being the flags without
    /// `--` (`max-connections = 20000`, `keepalive-interval = "30s"`; snake_case keys are
    /// accepted too). A flag, then a DUPLEX_* environment variable, overrides the file.
    #[arg(
        long = "config",
        value_name = "FILE",
        env = "DUPLEX_CONFIG",
        help_heading = "Configuration"
    )]
    pub(crate) config_file: Option<std::path::PathBuf>,

    /// Print the effective configuration as TOML (loadable with --config), each value
    /// followed by where it came from (flag, env, file, default), and exit.
    #[arg(long, help_heading = "Configuration")]
    pub(crate) print_config: bool,
}

/// Serves `config` until SIGINT or SIGTERM, then drains and returns.
pub(crate) async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let setup = setup_lines(&config);
    let server = Server::bind(config).await?;
    for address in server.local_addrs() {
        // Scripts and tests read this line to learn the port chosen for `:0`.
        println!("listening on {address}");
    }

    // Said after the addresses, which scripts read first. A reader that stopped after
    // those (closing the pipe) must not stop the server.
    let mut stdout = std::io::stdout().lock();
    // The web listener: a URL a person can open.
    let web = server
        .web_urls()
        .into_iter()
        .map(|url| format!("web on {url}"));
    for line in web.chain(setup) {
        let _ = writeln!(stdout, "{line}");
    }
    let _ = stdout.flush();
    drop(stdout);
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

/// What a user needs to know at start, after the addresses: store, auth, TLS.
fn setup_lines(config: &ServeConfig) -> Vec<String> {
    let store = match config.store {
        StoreKind::Redb => {
            let dir = std::path::absolute(&config.data_dir).unwrap_or(config.data_dir.clone());
            format!(
                "store: redb in {} (durable: acked after fsync)",
                dir.display()
            )
        }
        StoreKind::Memory => "store: memory (lost on exit)".to_owned(),
    };
    let auth = match (&config.jwt_secret_file, &config.jwt_public_key_file) {
        (None, None) => "auth: off (every caller may read and write every room)".to_owned(),
        (Some(path), _) | (None, Some(path)) => format!(
            "auth: JWT bearer tokens, key {}{}",
            path.display(),
            if config.allow_anonymous {
                "; token-less calls allowed (--allow-anonymous)"
            } else {
                ""
            }
        ),
    };
    let tls = match (&config.tls_cert, &config.tls_client_ca) {
        (None, _) => "tls: off (plaintext)".to_owned(),
        (Some(cert), None) => format!("tls: on, certificate {}", cert.display()),
        (Some(cert), Some(ca)) => format!(
            "tls: on, certificate {}; client certificates required, CA {}",
            cert.display(),
            ca.display()
        ),
    };
    vec![store, auth, tls]
}

//! `duplex bench`: runs one load scenario from `duplex-bench` and prints its report (text, or
//! JSON with `--json`). The load runs on its own threads, off this runtime.
//!
//! A run in which the server refused work (RESOURCE_EXHAUSTED from its publish rate limit,
//! a denied token, a method it does not serve) measured the refusal, not the server: the
//! report is still printed, and the command then fails with what to change.

use duplex_bench::BenchArgs;

/// Arguments of `duplex bench`: the load generator's, and a token for servers that
/// require one.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchCommand {
    #[command(flatten)]
    bench: BenchArgs,

    #[command(flatten)]
    token: crate::token::ClientTokenArgs,
}

/// Statuses that mean the server turned the load away.
const REFUSALS: [&str; 4] = [
    "RESOURCE_EXHAUSTED",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "UNIMPLEMENTED",
];

pub(crate) async fn run(command: BenchCommand) -> anyhow::Result<()> {
    let mut args = command.bench;
    args.token = command.token.token()?;
    // One address or several (comma-separated: a cluster's nodes), each as `client_url`
    // reads it.
    let addrs = args
        .addr
        .split(',')
        .map(|addr| {
            let url = crate::address::client_url(addr, false)?;
            Ok(url.trim_start_matches("http://").to_owned())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    args.addr = addrs.join(",");
    let json = args.json;
    let report = tokio::task::spawn_blocking(move || duplex_bench::run(&args)).await??;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    let refused: Vec<String> = REFUSALS
        .iter()
        .filter_map(|code| report.errors.get(*code).map(|n| format!("{n} × {code}")))
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let hint = if report.errors.contains_key("RESOURCE_EXHAUSTED") {
        "; a duplex server limits each session's publishes (--publish-rate, 5000/s by \
         default) as an abuse guard: start the server with --publish-rate 0 to measure the \
         engine"
    } else if report.errors.contains_key("UNAUTHENTICATED")
        || report.errors.contains_key("PERMISSION_DENIED")
    {
        "; give a token that may read and write every room (--token-file, `duplex token \
         --read '*' --write '*'`)"
    } else {
        ""
    };
    anyhow::bail!(
        "the measurement is not valid: the server refused work ({}){hint}",
        refused.join(", ")
    )
}

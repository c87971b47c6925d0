//! `duplex bench`: runs one load scenario from `duplex-bench` and prints its report (text, or
//! JSON with `--json`). The load runs on its own threads, off this runtime.

pub use duplex_bench::BenchArgs;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let json = args.json;
    let report = tokio::task::spawn_blocking(move || duplex_bench::run(&args)).await??;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

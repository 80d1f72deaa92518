//! `just bench`: floors and system numbers side by side; markdown on stdout, JSON to a file.

use clap::Parser;
use integration_tests::bench::{BenchConfig, Part, markdown, run, to_json};

#[derive(Parser)]
struct Args {
    /// Leads of the intake runs.
    #[arg(long, default_value_t = 100_000)]
    leads: usize,
    /// Deals seeded for the query runs.
    #[arg(long, default_value_t = 1_000_000)]
    deals: usize,
    /// Offered rates of the latency runs, leads per second (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 5_000],
        value_parser = clap::value_parser!(u64).range(1..))]
    rates: Vec<u64>,
    /// Length of each latency run in seconds: past ~30 s a run includes the kernel's
    /// writeback of its own pages.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    rate_seconds: u64,
    /// Length of the extra latency run at 1,000 leads/s without flushing the page cache
    /// (production does not flush for us), when 1,000 is among the rates.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    long_seconds: u64,
    /// Plans of the extra latency run at the first rate, whose leads go to each in turn.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..=1000))]
    spread_plans: u64,
    /// WatchDeals: watches held open on one deal-service replica.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    watchers: u64,
    /// WatchDeals: deal changes a second while they watch (for --rate-seconds).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    watch_rate: u64,
    /// WatchDeals: plans the watchers and changes are spread over in the first shape.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    watch_plans: u64,
    /// Tiny counts: checks that every part runs.
    #[arg(long)]
    smoke: bool,
    /// Only these parts (comma-separated); all when absent.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    #[arg(long, default_value = "target/bench/results.json")]
    out: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = if args.smoke {
        BenchConfig::smoke()
    } else {
        BenchConfig {
            leads: args.leads,
            deals: args.deals,
            rates: args.rates,
            rate_seconds: args.rate_seconds,
            long_seconds: args.long_seconds,
            spread_plans: args.spread_plans as usize,
            watchers: args.watchers as usize,
            watch_rate: args.watch_rate,
            watch_plans: args.watch_plans as usize,
            ..BenchConfig::full()
        }
    };
    if !args.only.is_empty() {
        config.parts = args.only;
    }
    let lines = run(&config).await?;
    print!("{}", markdown(&lines));
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&to_json(&lines))?)?;
    eprintln!("written to {}", args.out.display());
    Ok(())
}

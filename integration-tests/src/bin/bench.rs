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

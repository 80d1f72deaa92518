//! `just bench`: floors and system numbers side by side; markdown on stdout, JSON to a file.

use clap::Parser;
use integration_tests::bench::{BenchConfig, markdown, run, to_json};

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
    #[arg(long, default_value = "target/bench/results.json")]
    out: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = if args.smoke {
        BenchConfig::smoke()
    } else {
        BenchConfig {
            leads: args.leads,
            deals: args.deals,
            ..BenchConfig::full()
        }
    };
    let lines = run(&config).await?;
    print!("{}", markdown(&lines));
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&to_json(&lines))?)?;
    eprintln!("written to {}", args.out.display());
    Ok(())
}

//! `just chaos [LEADS]`: the fault run with a given number of leads; prints the figures.

use clap::Parser;
use integration_tests::chaos::{ChaosConfig, run};

#[derive(Parser)]
struct Args {
    /// Leads through the webhook.
    #[arg(default_value_t = 5_000)]
    leads: usize,
    /// Contacts of the bulk add (default: as many as the leads).
    #[arg(long)]
    bulk: Option<usize>,
    /// Rounds of killing every service.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let figures = run(ChaosConfig {
        leads: args.leads,
        bulk: args.bulk.unwrap_or(args.leads),
        rounds: args.rounds,
        restart_broker: true,
    })
    .await?;
    println!("chaos: every promise held\n{figures}");
    Ok(())
}

//! `just chaos [LEADS] [--cluster]`: the fault run with a given number of leads; prints the
//! figures.

use std::time::Duration;

use clap::Parser;
use integration_tests::chaos::{ChaosConfig, Topology, run};

#[derive(Parser)]
struct Args {
    /// Leads through the webhook.
    #[arg(default_value_t = 5_000)]
    leads: usize,
    /// Contacts of the bulk add (default: as many as the leads).
    #[arg(long)]
    bulk: Option<usize>,
    /// Rounds of killing every service (one node, one replica of each).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The production topology: a 3-node JetStream cluster (R3) and two replicas of every
    /// service; a node killed, one replica of each killed, a rolling restart of all.
    #[arg(long)]
    cluster: bool,
    /// Seconds over which the webhook leads are spread (so that they meet the faults).
    #[arg(long, default_value_t = 30)]
    spread: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topology = if args.cluster {
        Topology::Cluster
    } else {
        Topology::Single {
            rounds: args.rounds,
            restart_broker: true,
        }
    };
    let figures = run(ChaosConfig {
        leads: args.leads,
        bulk: args.bulk.unwrap_or(args.leads),
        spread: Duration::from_secs(args.spread),
        topology,
    })
    .await?;
    println!("chaos: every promise held\n{figures}");
    Ok(())
}

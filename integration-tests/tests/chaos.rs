//! Small fault runs inside `just test`; `just chaos [--cluster]` runs bigger ones.

use std::time::Duration;

use integration_tests::chaos::{ChaosConfig, Figures, Topology, run};

fn assert_exactly_once(figures: &Figures) {
    println!("{figures}");
    assert_eq!(figures.lost, 0);
    assert_eq!(figures.duplicates, 0);
    assert_eq!(figures.deals, figures.accepted);
    // The faults met the traffic: leads were accepted while processes went down.
    assert!(figures.accepted_during_faults > 0, "{figures}");
}

/// One replica of everything: every service killed and restarted, then PostgreSQL. The
/// broker's restart is `just chaos`'s (docs/reliability.md, known limits).
#[tokio::test]
async fn leads_survive_kills_and_restarts_exactly_once() -> anyhow::Result<()> {
    let figures = run(ChaosConfig {
        leads: 1_500,
        bulk: 1_500,
        spread: Duration::from_secs(5),
        topology: Topology::Single {
            rounds: 1,
            restart_broker: false,
        },
    })
    .await?;
    assert_exactly_once(&figures);
    assert!(figures.kills >= 5, "{figures}");
    Ok(())
}

/// The production topology: three NATS nodes with R3 streams and two replicas of every
/// service; a node killed and back, one replica of each service killed, a rolling restart
/// of everything, then PostgreSQL.
#[tokio::test]
async fn a_cluster_keeps_every_promise_through_node_and_replica_faults() -> anyhow::Result<()> {
    let figures = run(ChaosConfig {
        leads: 1_000,
        bulk: 1_000,
        spread: Duration::from_secs(20),
        topology: Topology::Cluster,
    })
    .await?;
    assert_exactly_once(&figures);
    // 1 node + 4 replicas killed, 3 nodes + 8 replicas rolled, PostgreSQL.
    assert_eq!(figures.kills, 17, "{figures}");
    Ok(())
}

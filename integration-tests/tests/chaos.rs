//! A small fault run inside `just test`: every service killed and restarted, then
//! PostgreSQL. `just chaos` runs a bigger one that restarts nats-server too.

#[tokio::test]
async fn leads_survive_kills_and_restarts_exactly_once() -> anyhow::Result<()> {
    let figures = integration_tests::chaos::run(integration_tests::chaos::ChaosConfig {
        leads: 1_500,
        bulk: 1_500,
        rounds: 1,
        // The broker's restart is `just chaos`'s (docs/reliability.md, known limits).
        restart_broker: false,
    })
    .await?;
    println!("{figures}");
    assert_eq!(figures.lost, 0);
    assert_eq!(figures.duplicates, 0);
    assert_eq!(figures.deals, figures.accepted);
    assert!(figures.kills >= 4);
    Ok(())
}

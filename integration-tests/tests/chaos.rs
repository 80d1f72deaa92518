//! A small fault run inside `just test` (`just chaos` runs a bigger one).

#[tokio::test]
async fn leads_survive_kills_and_restarts_exactly_once() -> anyhow::Result<()> {
    let figures = integration_tests::chaos::run(integration_tests::chaos::ChaosConfig {
        leads: 1_500,
        bulk: 1_500,
        rounds: 1,
    })
    .await?;
    println!("{figures}");
    assert_eq!(figures.lost, 0);
    assert_eq!(figures.duplicates, 0);
    assert_eq!(figures.deals, figures.accepted);
    assert!(figures.kills >= 4);
    Ok(())
}

//! `just bench` with tiny counts: every part of it runs (the real run is not for CI).

#[tokio::test]
async fn every_part_of_the_bench_runs() -> anyhow::Result<()> {
    let lines =
        integration_tests::bench::run(&integration_tests::bench::BenchConfig::smoke()).await?;
    let table = integration_tests::bench::markdown(&lines);
    for part in [
        "floor",
        "intake",
        "latency",
        "memory",
        "queries",
        "reports",
        "isolation",
        "privacy",
    ] {
        assert!(
            lines.iter().any(|l| l.group == part),
            "no {part} line in\n{table}"
        );
    }
    assert!(table.contains("LossReasons by manager"), "{table}");
    assert!(
        table.contains("AddAudience end to end ÷ minimal pipeline"),
        "{table}"
    );
    Ok(())
}

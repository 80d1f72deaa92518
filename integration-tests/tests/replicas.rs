//! Two of what must cooperate: two deal-service replicas (two outbox relays on one
//! outbox, one relay lock) and two reporting replicas (one shared deal consumer, each its
//! own horizons), while deals are created and closed through both: every deal counted
//! once, and a report read as of the last write from either replica includes it. Each
//! replica's own metrics show it did its part: both relays published, both reporting
//! replicas applied deal events, and no event was published twice.

use std::time::Duration;

use integration_tests::{
    Stack,
    api::{Mode, Strategy, create_plan, plan_request, write_token},
    stack::{eventually, outbox_drained},
};
use salesplan_platform::{
    Permission, bus::streams, consistency::Token, grpc::outgoing, service::Running,
};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient, report_service_client::ReportServiceClient,
};

/// Deals per round; rounds go on until each replica has done its part, at most
/// `MAX_ROUNDS`.
const ROUND: usize = 40;
const MIN_ROUNDS: usize = 3;
const MAX_ROUNDS: usize = 25;

#[tokio::test]
async fn two_relays_and_two_reporting_replicas_count_every_deal_once() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let deal_service_2 = stack.add_deal_service().await?;
    let reporting_2 = stack.add_reporting().await?;
    let admin = stack.token("acme", "admin", &[Permission::PlansAdmin]);
    let plan = create_plan(
        stack.channel(&stack.deal_service).await?,
        &admin,
        plan_request("Two", Mode::Manual, Strategy::Unspecified, false, &["m1"]),
    )
    .await?;
    let won = plan
        .stages
        .iter()
        .find(|s| s.kind == pb::StageKind::Won as i32)
        .map(|s| s.id.clone())
        .expect("a won stage");

    // Every deal is created through one replica and closed as won through the other.
    let boss = stack.token("acme", "boss", &[Permission::DealsEditAll]);
    let replicas = [
        DealServiceClient::new(stack.channel(&stack.deal_service).await?),
        DealServiceClient::new(stack.channel(&deal_service_2).await?),
    ];
    let running = [
        &stack.deal_service,
        &deal_service_2,
        &stack.reporting,
        &reporting_2,
    ];
    let mut last = Token(0);
    let mut deals: usize = 0;
    for round in 1..=MAX_ROUNDS {
        for n in deals..deals + ROUND {
            let (made_by, closed_by) = (&replicas[n % 2], &replicas[(n + 1) % 2]);
            let created = made_by
                .clone()
                .create_deal(outgoing(
                    pb::CreateDealRequest {
                        plan_id: plan.id.clone(),
                        contact: Some(pb::Contact {
                            external_id: format!("c{n}"),
                            ..Default::default()
                        }),
                        manager_id: Some("m1".into()),
                        idempotency_key: format!("k{n}"),
                        ..Default::default()
                    },
                    &boss,
                ))
                .await?;
            let deal = created.get_ref().deal.clone().expect("a deal");
            if n % 3 == 0 {
                let moved = closed_by
                    .clone()
                    .move_deal(outgoing(
                        pb::MoveDealRequest {
                            deal_id: deal.id,
                            expected_version: deal.version,
                            stage_id: won.clone(),
                            loss_reason_id: None,
                        },
                        &boss,
                    ))
                    .await?;
                last = last.max(write_token(&moved)?);
            } else {
                last = last.max(write_token(&created)?);
            }
        }
        deals += ROUND;
        let parts = shares(&running).await?;
        if round >= MIN_ROUNDS && parts.iter().all(|&n| n > 0.0) {
            break;
        }
        anyhow::ensure!(
            round < MAX_ROUNDS,
            "after {deals} deals a replica still did nothing: {parts:?}"
        );
    }

    // Each reporting replica, read as of the last write, counts each deal once.
    let viewer = stack.token(
        "acme",
        "viewer",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    for reporting in [&stack.reporting, &reporting_2] {
        let summary = ReportServiceClient::new(stack.channel(reporting).await?)
            .pipeline_summary(outgoing(
                pb::PipelineSummaryRequest {
                    plan_id: Some(plan.id.clone()),
                    min_consistency_token: last.to_string(),
                },
                &viewer,
            ))
            .await?
            .into_inner();
        let counted: i64 = summary.stages.iter().map(|s| s.deals).sum();
        let won: i64 = summary.managers.iter().map(|m| m.won).sum();
        assert_eq!(counted, deals as i64, "{summary:?}");
        assert_eq!(won, deals.div_ceil(3) as i64, "{summary:?}");
    }
    // Both relays drained the one outbox, and the kept totals equal a recount.
    outbox_drained(&stack.pool().await?).await?;
    let config = reporting::Config::local(&stack.db.url, &stack.nats.url);
    let (closed, differences) =
        reporting::maintenance::verify(&config, config.deal_database_url.expose()).await?;
    assert_eq!((closed, differences), (deals.div_ceil(3), vec![]));
    // Every event in the streams was published once: the two relays' counts add up to
    // what the streams hold (a second publish of one event is dropped by the broker, but
    // counted by the relay that made it). A relay counts a pass once it has committed it,
    // a moment after the outbox looks drained.
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let mut stored = 0;
    for stream in [streams::DEALS.name, streams::PLANS.name] {
        stored += js.get_stream(stream).await?.info().await?.state.messages;
    }
    let published = eventually(Duration::from_secs(10), || async {
        let [relay_1, relay_2, ..] = shares(&running).await?;
        Ok((relay_1 + relay_2 >= stored as f64).then_some(relay_1 + relay_2))
    })
    .await
    .map_err(|err| err.context("the relays counted fewer events than the streams hold"))?;
    assert_eq!(published, stored as f64, "published by each relay");
    drop((deal_service_2, reporting_2));
    stack.stop().await
}

/// Each replica's part, from its own metrics: events each relay published, deal events
/// each reporting replica applied.
async fn shares(replicas: &[&Running; 4]) -> anyhow::Result<[f64; 4]> {
    use integration_tests::metrics::{sample, scrape};
    let mut parts = [0.0; 4];
    for (i, replica) in replicas.iter().enumerate() {
        let text = scrape(replica).await?;
        parts[i] = if i < 2 {
            sample(&text, "salesplan_outbox_published_total", &[])
        } else {
            sample(
                &text,
                "salesplan_consumer_handled_total",
                &["consumer=\"reporting-deals\""],
            )
        };
    }
    Ok(parts)
}

//! Two of what must cooperate: two deal-service replicas (two outbox relays on one
//! outbox, one relay lock) and two reporting replicas (one shared deal consumer, each its
//! own horizons), while deals are created and closed through both: every deal counted
//! once, and a report read as of the last write from either replica includes it.

use integration_tests::{
    Stack,
    api::{Mode, Strategy, create_plan, plan_request, write_token},
    stack::outbox_drained,
};
use salesplan_platform::{Permission, consistency::Token, grpc::outgoing};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient, report_service_client::ReportServiceClient,
};

const DEALS: usize = 120;

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
    let mut last = Token(0);
    for n in 0..DEALS {
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
        let deals: i64 = summary.stages.iter().map(|s| s.deals).sum();
        let won: i64 = summary.managers.iter().map(|m| m.won).sum();
        assert_eq!(deals, DEALS as i64, "{summary:?}");
        assert_eq!(won, DEALS.div_ceil(3) as i64, "{summary:?}");
    }
    // Both relays drained the one outbox, and the kept totals equal a recount.
    outbox_drained(&stack.pool().await?).await?;
    let config = reporting::Config::local(&stack.db.url, &stack.nats.url);
    let (closed, differences) =
        reporting::maintenance::verify(&config, config.deal_database_url.expose()).await?;
    assert_eq!((closed, differences), (DEALS.div_ceil(3), vec![]));
    drop((deal_service_2, reporting_2));
    stack.stop().await
}

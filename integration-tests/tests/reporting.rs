//! The "by reasons for refusal" report end to end, its click-through, reopening, replays,
//! rebuild and verify.

use std::{collections::HashMap, time::Duration};

use integration_tests::{
    Stack,
    api::{Mode, Strategy, all_deals, create_plan, plan_request},
    stack::eventually,
};
use salesplan_platform::{Permission, grpc::outgoing};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient, plan_service_client::PlanServiceClient,
    report_service_client::ReportServiceClient,
};
use tonic::transport::Channel;

const ACCOUNT: &str = "acme";

struct World {
    stack: Stack,
    deals: DealServiceClient<Channel>,
    reports: ReportServiceClient<Channel>,
    boss: String,
    viewer: String,
    plan_a: pb::Plan,
    plan_b: pb::Plan,
    price: String,
    timing: String,
}

fn stage(plan: &pb::Plan, kind: pb::StageKind) -> String {
    plan.stages
        .iter()
        .find(|s| s.kind == kind as i32)
        .expect("stage")
        .id
        .clone()
}

async fn world() -> anyhow::Result<World> {
    let stack = Stack::start().await?;
    let admin = stack.token(ACCOUNT, "admin", &[Permission::PlansAdmin]);
    let boss = stack.token(
        ACCOUNT,
        "boss",
        &[Permission::DealsEditAll, Permission::DealsBulkEdit],
    );
    let viewer = stack.token(
        ACCOUNT,
        "viewer",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let channel = stack.channel(&stack.deal_service).await?;
    let plan_a = create_plan(
        channel.clone(),
        &admin,
        plan_request(
            "Plan A",
            Mode::Manual,
            Strategy::Unspecified,
            false,
            &["m1", "m2"],
        ),
    )
    .await?;
    let plan_b = create_plan(
        channel.clone(),
        &admin,
        plan_request(
            "Plan B",
            Mode::Manual,
            Strategy::Unspecified,
            false,
            &["m1", "m2"],
        ),
    )
    .await?;
    let mut plans = PlanServiceClient::new(channel.clone());
    let mut reasons = HashMap::new();
    for plan in [&plan_a, &plan_b] {
        let set = plans
            .set_loss_reasons(outgoing(
                pb::SetLossReasonsRequest {
                    plan_id: plan.id.clone(),
                    require_reason: false,
                    reasons: ["Price", "Timing"]
                        .map(|n| pb::LossReasonInput {
                            id: String::new(),
                            name: n.into(),
                        })
                        .to_vec(),
                },
                &admin,
            ))
            .await?
            .into_inner()
            .plan
            .expect("plan")
            .loss_reasons
            .expect("reasons");
        reasons.insert(plan.id.clone(), set.reasons);
    }
    let a_reasons = &reasons[&plan_a.id];
    Ok(World {
        deals: DealServiceClient::new(channel),
        reports: ReportServiceClient::new(stack.channel(&stack.reporting).await?),
        price: a_reasons[0].id.clone(),
        timing: a_reasons[1].id.clone(),
        stack,
        boss,
        viewer,
        plan_a,
        plan_b,
    })
}

impl World {
    async fn deal(
        &mut self,
        plan: &pb::Plan,
        n: usize,
        manager: Option<&str>,
    ) -> anyhow::Result<pb::Deal> {
        Ok(self
            .deals
            .create_deal(outgoing(
                pb::CreateDealRequest {
                    plan_id: plan.id.clone(),
                    contact: Some(pb::Contact {
                        external_id: format!("{}-{n}", plan.name),
                        ..Default::default()
                    }),
                    manager_id: manager.map(str::to_owned),
                    idempotency_key: format!("{}-{n}", plan.id),
                    ..Default::default()
                },
                &self.boss,
            ))
            .await?
            .into_inner()
            .deal
            .expect("deal"))
    }

    async fn close(
        &mut self,
        deal: &pb::Deal,
        stage: &str,
        reason: Option<&str>,
    ) -> anyhow::Result<pb::Deal> {
        Ok(self
            .deals
            .move_deal(outgoing(
                pb::MoveDealRequest {
                    deal_id: deal.id.clone(),
                    expected_version: deal.version,
                    stage_id: stage.to_owned(),
                    loss_reason_id: reason.map(str::to_owned),
                },
                &self.boss,
            ))
            .await?
            .into_inner()
            .deal
            .expect("deal"))
    }

    async fn reopen(&mut self, deal: &pb::Deal) -> anyhow::Result<pb::Deal> {
        Ok(self
            .deals
            .reopen_deal(outgoing(
                pb::ReopenDealRequest {
                    deal_id: deal.id.clone(),
                    expected_version: deal.version,
                },
                &self.boss,
            ))
            .await?
            .into_inner()
            .deal
            .expect("deal"))
    }

    async fn report(
        &mut self,
        request: pb::LossReasonsRequest,
    ) -> anyhow::Result<pb::LossReasonsResponse> {
        Ok(self
            .reports
            .loss_reasons(outgoing(request, &self.viewer))
            .await?
            .into_inner())
    }

    /// Waits until the report's totals show `won` and `lost`.
    async fn settled(&self, won: i64, lost: i64) -> anyhow::Result<()> {
        let viewer = self.viewer.clone();
        eventually(Duration::from_secs(20), || {
            let mut reports = self.reports.clone();
            let request = outgoing(
                pb::LossReasonsRequest {
                    group_by: pb::ReportGrouping::Plan as i32,
                    ..Default::default()
                },
                &viewer,
            );
            async move {
                let totals = reports
                    .loss_reasons(request)
                    .await?
                    .into_inner()
                    .totals
                    .expect("totals");
                Ok((totals.won == won && totals.lost == lost).then_some(()))
            }
        })
        .await
    }
}

fn reasons_of(row: &pb::ReportRow) -> Vec<(String, i64, f64)> {
    row.reasons
        .iter()
        .map(|r| (r.name.clone(), r.count, r.percent_of_lost))
        .collect()
}

#[tokio::test]
async fn loss_reasons_by_plan_and_manager_with_click_through() -> anyhow::Result<()> {
    let mut w = world().await?;
    let (plan_a, plan_b) = (w.plan_a.clone(), w.plan_b.clone());
    let (won_a, lost_a) = (
        stage(&plan_a, pb::StageKind::Won),
        stage(&plan_a, pb::StageKind::Lost),
    );
    let lost_b = stage(&plan_b, pb::StageKind::Lost);
    let (price, timing) = (w.price.clone(), w.timing.clone());
    let b_price = {
        let plans = PlanServiceClient::new(w.stack.channel(&w.stack.deal_service).await?)
            .get_plan(outgoing(
                pb::GetPlanRequest {
                    plan_id: plan_b.id.clone(),
                    with_availability: false,
                },
                &w.viewer,
            ))
            .await?
            .into_inner()
            .plan
            .expect("plan");
        plans.loss_reasons.expect("reasons").reasons[0].id.clone()
    };

    // Plan A: m1 wins 2, loses 3 on price; m2 loses 1 on timing, 1 without a reason;
    // an unassigned deal is lost on price. Plan B: m1 loses 2 on price. Open deals: 2.
    // (plan, manager, closing stage, reason); None stage: stays open.
    type Step<'a> = (
        &'a pb::Plan,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    let script: Vec<Step> = vec![
        (&plan_a, Some("m1"), Some(&won_a), None),
        (&plan_a, Some("m1"), Some(&won_a), None),
        (&plan_a, Some("m1"), Some(&lost_a), Some(&price)),
        (&plan_a, Some("m1"), Some(&lost_a), Some(&price)),
        (&plan_a, Some("m1"), Some(&lost_a), Some(&price)),
        (&plan_a, Some("m2"), Some(&lost_a), Some(&timing)),
        (&plan_a, Some("m2"), Some(&lost_a), None),
        (&plan_a, None, Some(&lost_a), Some(&price)),
        (&plan_b, Some("m1"), Some(&lost_b), Some(&b_price)),
        (&plan_b, Some("m1"), Some(&lost_b), Some(&b_price)),
        (&plan_a, Some("m1"), None, None),
        (&plan_a, Some("m1"), None, None),
    ];
    for (n, (plan, manager, close, reason)) in script.into_iter().enumerate() {
        let deal = w.deal(plan, n, manager).await?;
        if let Some(stage) = close {
            w.close(&deal, stage, reason).await?;
        }
    }
    w.settled(2, 8).await?;

    // By plan, without details.
    let by_plan = w
        .report(pb::LossReasonsRequest {
            group_by: pb::ReportGrouping::Plan as i32,
            ..Default::default()
        })
        .await?;
    let rows: Vec<(String, i64, i64, f64, f64)> = by_plan
        .rows
        .iter()
        .map(|r| (r.name.clone(), r.won, r.lost, r.won_percent, r.lost_percent))
        .collect();
    let mut expected = vec![
        ("Plan A".to_owned(), 2, 6, 25.0, 75.0),
        ("Plan B".to_owned(), 0, 2, 0.0, 100.0),
    ];
    expected.sort_by_key(|r| plan_key(&by_plan, &r.0));
    assert_eq!(rows, expected);
    let a = by_plan
        .rows
        .iter()
        .find(|r| r.name == "Plan A")
        .expect("plan A");
    assert_eq!(
        reasons_of(a),
        [
            ("Price".to_owned(), 4, 66.7),
            ("Timing".to_owned(), 1, 16.7),
            ("No reason".to_owned(), 1, 16.7)
        ]
    );
    assert!(a.details.is_empty());
    assert_eq!(
        a.chart.as_ref().map(|c| c.values.clone()),
        Some(vec![4, 1, 1])
    );
    let totals = by_plan.totals.expect("totals");
    assert_eq!((totals.won, totals.lost), (2, 8));
    assert_eq!(
        totals.reasons.iter().map(|r| r.count).sum::<i64>(),
        8,
        "reasons sum to lost"
    );

    // By manager with details: plans nested inside each manager.
    let by_manager = w
        .report(pb::LossReasonsRequest {
            group_by: pb::ReportGrouping::Manager as i32,
            with_details: true,
            ..Default::default()
        })
        .await?;
    let managers: Vec<(String, i64, i64)> = by_manager
        .rows
        .iter()
        .map(|r| (r.name.clone(), r.won, r.lost))
        .collect();
    assert_eq!(
        managers,
        [
            ("(unassigned)".to_owned(), 0, 1),
            ("m1".to_owned(), 2, 5),
            ("m2".to_owned(), 0, 2)
        ]
    );
    let m1 = &by_manager.rows[1];
    let nested: Vec<(String, i64, i64)> = m1
        .details
        .iter()
        .map(|r| (r.name.clone(), r.won, r.lost))
        .collect();
    assert_eq!(nested.len(), 2);
    assert!(
        nested.contains(&("Plan A".to_owned(), 2, 3))
            && nested.contains(&("Plan B".to_owned(), 0, 2))
    );

    // Click-through: each filter lists exactly the counted deals.
    let channel = w.stack.channel(&w.stack.deal_service).await?;
    for row in by_manager.rows.iter().chain(by_plan.rows.iter()) {
        let listed = all_deals(
            channel.clone(),
            &w.viewer,
            row.lost_filter.clone().expect("filter"),
        )
        .await?;
        assert_eq!(listed.len() as i64, row.lost, "row {}", row.name);
        for reason in &row.reasons {
            let listed = all_deals(
                channel.clone(),
                &w.viewer,
                reason.filter.clone().expect("filter"),
            )
            .await?;
            assert_eq!(
                listed.len() as i64,
                reason.count,
                "{} / {}",
                row.name,
                reason.name
            );
            assert!(
                listed
                    .iter()
                    .all(|d| d.status == pb::DealStatus::Lost as i32)
            );
        }
        for detail in &row.details {
            let listed = all_deals(
                channel.clone(),
                &w.viewer,
                detail.lost_filter.clone().expect("filter"),
            )
            .await?;
            assert_eq!(
                listed.len() as i64,
                detail.lost,
                "{} / {}",
                row.name,
                detail.name
            );
        }
    }

    // A period: nothing closed yesterday; everything closed in the last hour.
    let now = std::time::SystemTime::now();
    let hour = Duration::from_secs(3600);
    let period = |from: std::time::SystemTime, to: std::time::SystemTime| pb::TimeRange {
        from: Some(from.into()),
        to: Some(to.into()),
    };
    let empty = w
        .report(pb::LossReasonsRequest {
            group_by: pb::ReportGrouping::Plan as i32,
            period: Some(period(now - 48 * hour, now - 24 * hour)),
            ..Default::default()
        })
        .await?;
    assert!(empty.rows.is_empty());
    let recent = w
        .report(pb::LossReasonsRequest {
            group_by: pb::ReportGrouping::Plan as i32,
            period: Some(period(now - hour, now + hour)),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        recent.totals.as_ref().map(|t| (t.won, t.lost)),
        Some((2, 8))
    );
    let whole_days = w
        .report(pb::LossReasonsRequest {
            group_by: pb::ReportGrouping::Plan as i32,
            period: Some(period(now - 72 * hour, now + 72 * hour)),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        whole_days.totals.as_ref().map(|t| (t.won, t.lost)),
        Some((2, 8)),
        "whole days from the kept totals"
    );
    let listed = all_deals(
        channel.clone(),
        &w.viewer,
        recent.rows[0].lost_filter.clone().expect("filter"),
    )
    .await?;
    assert_eq!(listed.len() as i64, recent.rows[0].lost);

    // Filters: one manager.
    let only_m2 = w
        .report(pb::LossReasonsRequest {
            group_by: pb::ReportGrouping::Plan as i32,
            manager_ids: vec!["m2".into()],
            ..Default::default()
        })
        .await?;
    assert_eq!(only_m2.totals.as_ref().map(|t| t.lost), Some(2));

    // An archived reason still names its losses.
    PlanServiceClient::new(channel.clone())
        .set_loss_reasons(outgoing(
            pb::SetLossReasonsRequest {
                plan_id: plan_a.id.clone(),
                require_reason: false,
                reasons: vec![pb::LossReasonInput {
                    id: timing.clone(),
                    name: "Bad timing".into(),
                }],
            },
            &w.stack.token(ACCOUNT, "admin", &[Permission::PlansAdmin]),
        ))
        .await?;
    let renamed = eventually(Duration::from_secs(10), || {
        let mut reports = w.reports.clone();
        let request = outgoing(
            pb::LossReasonsRequest {
                group_by: pb::ReportGrouping::Plan as i32,
                plan_ids: vec![plan_a.id.clone()],
                ..Default::default()
            },
            &w.viewer,
        );
        async move {
            let report = reports.loss_reasons(request).await?.into_inner();
            let row = report.rows[0].clone();
            Ok(row
                .reasons
                .iter()
                .any(|r| r.name == "Bad timing")
                .then_some(row))
        }
    })
    .await?;
    let price_line = renamed
        .reasons
        .iter()
        .find(|r| r.name == "Price")
        .expect("archived reason still shown");
    assert!(price_line.archived);
    assert_eq!(price_line.count, 4);

    // Where deals die.
    let stages = w
        .reports
        .stage_losses(outgoing(pb::StageLossesRequest::default(), &w.viewer))
        .await?
        .into_inner();
    let a_stages = stages
        .plans
        .iter()
        .find(|p| p.name == "Plan A")
        .expect("plan A");
    assert_eq!(a_stages.lost, 6);
    assert_eq!(
        a_stages
            .stages
            .iter()
            .map(|s| (s.name.as_str(), s.lost))
            .collect::<Vec<_>>(),
        [("New", 6)]
    );

    // Errors and isolation.
    let err = w
        .reports
        .loss_reasons(outgoing(pb::LossReasonsRequest::default(), &w.viewer))
        .await
        .expect_err("no grouping");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let stranger = w.stack.token(
        "globex",
        "viewer",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let theirs = w
        .reports
        .loss_reasons(outgoing(
            pb::LossReasonsRequest {
                group_by: 1,
                ..Default::default()
            },
            &stranger,
        ))
        .await?
        .into_inner();
    assert!(theirs.rows.is_empty());
    assert_eq!(theirs.totals.map(|t| t.lost), Some(0));
    w.stack.stop().await
}

fn plan_key(report: &pb::LossReasonsResponse, name: &str) -> String {
    report
        .rows
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.key.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn reopening_takes_deals_out_of_the_report_and_closing_again_puts_them_back()
-> anyhow::Result<()> {
    let mut w = world().await?;
    let plan = w.plan_a.clone();
    let (won, lost) = (
        stage(&plan, pb::StageKind::Won),
        stage(&plan, pb::StageKind::Lost),
    );
    let price = w.price.clone();
    let timing = w.timing.clone();
    let a = w.deal(&plan, 1, Some("m1")).await?;
    let a = w.close(&a, &won, None).await?;
    let b = w.deal(&plan, 2, Some("m1")).await?;
    let b = w.close(&b, &lost, Some(&price)).await?;
    w.settled(1, 1).await?;

    let a = w.reopen(&a).await?;
    w.settled(0, 1).await?;
    let b = w.reopen(&b).await?;
    w.settled(0, 0).await?;
    // Lost again, with another reason, and transferred: counted under the new manager.
    w.close(&b, &lost, Some(&timing)).await?;
    w.deals
        .transfer_deals(outgoing(
            pb::TransferDealsRequest {
                from_manager_id: "m1".into(),
                to_manager_id: "m2".into(),
                filter: None,
            },
            &w.boss,
        ))
        .await?;
    w.settled(0, 1).await?;
    assert_eq!(a.status, pb::DealStatus::Open as i32);
    let eventually_m2 = eventually(Duration::from_secs(10), || {
        let mut reports = w.reports.clone();
        let request = outgoing(
            pb::LossReasonsRequest {
                group_by: pb::ReportGrouping::Manager as i32,
                ..Default::default()
            },
            &w.viewer,
        );
        async move {
            let rows = reports.loss_reasons(request).await?.into_inner().rows;
            Ok((rows.len() == 1 && rows[0].name == "m2").then_some(rows))
        }
    })
    .await?;
    assert_eq!(
        reasons_of(&eventually_m2[0]),
        [("Timing".to_owned(), 1, 100.0)]
    );
    w.stack.stop().await
}

#[tokio::test]
async fn rebuild_then_verify_finds_no_difference_and_verify_catches_one() -> anyhow::Result<()> {
    let mut w = world().await?;
    let plan = w.plan_a.clone();
    let (won, lost) = (
        stage(&plan, pb::StageKind::Won),
        stage(&plan, pb::StageKind::Lost),
    );
    let price = w.price.clone();
    for i in 0..6 {
        let d = w
            .deal(&plan, i, Some(if i % 2 == 0 { "m1" } else { "m2" }))
            .await?;
        if i < 3 {
            w.close(&d, &won, None).await?;
        } else {
            w.close(&d, &lost, Some(&price)).await?;
        }
    }
    w.settled(3, 3).await?;

    let config = reporting::Config::local(&w.stack.db.url, &w.stack.nats.url);
    let (plans, deals) = reporting::maintenance::rebuild(&config).await?;
    assert_eq!(plans, 4, "two creations and two reason changes");
    assert_eq!(deals, 12, "6 created and 6 closed");
    let (closed, differences) = reporting::maintenance::verify(&config, &w.stack.db.url).await?;
    assert_eq!(closed, 6);
    assert!(differences.is_empty(), "{differences:?}");
    let report = w
        .report(pb::LossReasonsRequest {
            group_by: pb::ReportGrouping::Plan as i32,
            ..Default::default()
        })
        .await?;
    assert_eq!(report.totals.map(|t| (t.won, t.lost)), Some((3, 3)));

    // Tamper with a daily total: verify names it, and nothing else.
    let pool = w.stack.pool().await?;
    let bump = |by: i64| {
        sqlx::query(
            "UPDATE reporting.closed_daily SET deals = deals + $1
             WHERE (account_id, day, plan_id, manager_id, status, reason_id) =
                   (SELECT account_id, day, plan_id, manager_id, status, reason_id
                    FROM reporting.closed_daily ORDER BY 1, 2, 3, 4, 5, 6 LIMIT 1)",
        )
        .bind(by)
        .execute(&pool)
    };
    bump(1).await?;
    let (_, differences) = reporting::maintenance::verify(&config, &w.stack.db.url).await?;
    assert_eq!(differences.len(), 1, "{differences:?}");
    assert!(
        differences[0].starts_with("daily totals "),
        "{differences:?}"
    );
    bump(-1).await?;

    // Tamper with the read model: verify names the deal and the totals.
    sqlx::query("UPDATE reporting.deals SET status = 'won' WHERE status = 'lost' AND deal_id = (SELECT min(deal_id::text)::uuid FROM reporting.deals WHERE status = 'lost')")
        .execute(&pool)
        .await?;
    let (_, differences) = reporting::maintenance::verify(&config, &w.stack.db.url).await?;
    assert!(
        differences.iter().any(|d| d.starts_with("deal ")),
        "{differences:?}"
    );
    assert!(
        differences.iter().any(|d| d.starts_with("totals ")),
        "{differences:?}"
    );
    w.stack.stop().await
}

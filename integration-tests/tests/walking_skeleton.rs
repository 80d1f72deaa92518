//! One lead flowing through all four services: webhook → intake event → distributor →
//! CreateDeal → outbox → deal event → reporting.

use std::{collections::HashMap, time::Duration};

use integration_tests::{Stack, stack::eventually};
use salesplan_platform::{Permission, grpc::outgoing};
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient, plan_service_client::PlanServiceClient,
    report_service_client::ReportServiceClient,
};
use serde_json::json;

const ACCOUNT: &str = "acme";

async fn create_plan(stack: &Stack, managers: &[&str]) -> anyhow::Result<pb::Plan> {
    let admin = stack.token(ACCOUNT, "admin", &[Permission::PlansAdmin]);
    let mut plans = PlanServiceClient::new(stack.channel(&stack.deal_service).await?);
    let plan = plans
        .create_plan(outgoing(
            pb::CreatePlanRequest {
                name: "Inbound".into(),
                average_amount: Some(pb::Money {
                    amount_minor: 5_000,
                    currency: "USD".into(),
                }),
                chat_label: "INBOUND".into(),
                distribution: Some(pb::Distribution {
                    mode: pb::distribution::Mode::Auto as i32,
                    prefer_related: false,
                    keep_related_when_unavailable: false,
                    response_deadline_seconds: 0,
                    max_reassignments: 0,
                    strategy: pb::distribution::Strategy::RoundRobin as i32,
                }),
                manager_ids: managers.iter().map(|m| (*m).to_owned()).collect(),
                members: vec![],
            },
            &admin,
        ))
        .await?
        .into_inner()
        .plan
        .expect("the response carries the plan");
    Ok(plan)
}

fn lead(plan_id: &str, run: usize) -> serde_json::Value {
    json!({
        "plan_id": plan_id,
        "tunnel_id": "welcome-funnel",
        "block_id": "add-to-plan-1",
        "run_id": format!("run-{run}"),
        "contact": {
            "external_id": format!("tg-{run}"),
            "name": format!("Lead {run}"),
            "phone": format!("+1 (555) 010-{run:04}"),
        },
    })
}

async fn summary(stack: &Stack, plan_id: &str) -> anyhow::Result<pb::PipelineSummaryResponse> {
    let token = stack.token(
        ACCOUNT,
        "viewer",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let mut reports = ReportServiceClient::new(stack.channel(&stack.reporting).await?);
    Ok(reports
        .pipeline_summary(outgoing(
            pb::PipelineSummaryRequest {
                plan_id: Some(plan_id.to_owned()),
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner())
}

#[tokio::test]
async fn webhook_leads_become_assigned_deals_that_reporting_counts() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let plan = create_plan(&stack, &["m1", "m2", "m3"]).await?;
    let intake = stack.token(ACCOUNT, "funnel", &[Permission::IntakeWrite]);
    let http = reqwest::Client::new();

    let mut intake_ids = Vec::new();
    for run in 0..30 {
        let response = http
            .post(stack.webhook_url())
            .bearer_auth(&intake)
            .json(&lead(&plan.id, run))
            .send()
            .await?;
        assert_eq!(response.status(), 202, "lead {run}");
        let body: serde_json::Value = response.json().await?;
        assert_eq!(body["duplicate"], false);
        intake_ids.push(body["intake_id"].as_str().expect("intake_id").to_owned());
    }

    // A retried webhook (same run) is accepted again but is the same lead.
    let retry = http
        .post(stack.webhook_url())
        .bearer_auth(&intake)
        .json(&lead(&plan.id, 7))
        .send()
        .await?;
    assert_eq!(retry.status(), 202);
    let retry: serde_json::Value = retry.json().await?;
    assert_eq!(retry["duplicate"], true);
    assert_eq!(retry["intake_id"].as_str(), Some(intake_ids[7].as_str()));

    // Reporting counts every deal once the events went all the way through.
    let counted = eventually(Duration::from_secs(30), || async {
        let s = summary(&stack, &plan.id).await?;
        Ok((s.total_deals == 30).then_some(s))
    })
    .await?;
    let per_manager: HashMap<String, i64> = counted
        .managers
        .iter()
        .map(|m| (m.manager_id.clone().unwrap_or_default(), m.open))
        .collect();
    assert_eq!(
        per_manager,
        HashMap::from([("m1".into(), 10), ("m2".into(), 10), ("m3".into(), 10)]),
        "round robin over three managers"
    );
    assert_eq!(
        counted.stages.len(),
        1,
        "every new deal is in the first stage"
    );
    assert_eq!(counted.stages[0].stage_id, plan.stages[0].id);
    assert_eq!(counted.stages[0].amount_minor, 30 * 5_000);

    // deal-service holds exactly one deal per accepted lead, keyed by its intake id.
    let pool = stack.pool().await?;
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM deal_service.deals WHERE account_id = $1 ORDER BY 1",
    )
    .bind(ACCOUNT)
    .fetch_all(&pool)
    .await?;
    let mut expected = intake_ids.clone();
    expected.sort();
    assert_eq!(keys, expected);

    // The deal reads back through the API with its manager and contact.
    let viewer = stack.token(
        ACCOUNT,
        "viewer",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let deal_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM deal_service.deals WHERE idempotency_key = $1")
            .bind(&intake_ids[0])
            .fetch_one(&pool)
            .await?;
    let mut deals = DealServiceClient::new(stack.channel(&stack.deal_service).await?);
    let deal = deals
        .get_deal(outgoing(
            pb::GetDealRequest {
                deal_id: deal_id.to_string(),
                ..Default::default()
            },
            &viewer,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    // Turns follow the order of decisions; a lead that arrived before its plan was known
    // waits for it, so any member may have this one.
    assert!(
        deal.manager_id
            .as_deref()
            .is_some_and(|m| ["m1", "m2", "m3"].contains(&m))
    );
    assert_eq!(deal.title, "Lead 0");
    assert_eq!(deal.contact.expect("contact").external_id, "tg-0");
    let history: Vec<(String, String)> =
        sqlx::query_as("SELECT action, actor_id FROM deal_service.deal_history WHERE deal_id = $1")
            .bind(deal_id)
            .fetch_all(&pool)
            .await?;
    assert_eq!(
        history,
        [("created".to_owned(), distributor::ACTOR_ID.to_owned())]
    );

    // Another account sees none of it.
    let stranger = stack.token(
        "globex",
        "viewer",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let err = deals
        .get_deal(outgoing(
            pb::GetDealRequest {
                deal_id: deal_id.to_string(),
                ..Default::default()
            },
            &stranger,
        ))
        .await
        .expect_err("another account's deal");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // The outbox is empty once everything was published.
    integration_tests::stack::outbox_drained(&pool).await?;

    stack.stop().await
}

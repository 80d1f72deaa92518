//! The Prometheus endpoint of each service, scraped while leads flow: the counters move,
//! each on the endpoint of the service that counts them (four services in one process,
//! each with its own meter provider).

use std::time::Duration;

use integration_tests::{
    Stack,
    api::{Mode, Strategy, create_plan, lead_json, plan_request},
    metrics::{sample, scrape},
    stack::eventually,
};
use salesplan_platform::Permission;

#[tokio::test]
async fn the_metrics_endpoints_show_the_counters_moving() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = stack.token("acme", "admin", &[Permission::PlansAdmin]);
    let plan = create_plan(
        stack.channel(&stack.deal_service).await?,
        &admin,
        plan_request("Measured", Mode::Auto, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let funnel = stack.token("acme", "funnel", &[Permission::IntakeWrite]);
    let http = reqwest::Client::new();
    let accepted = |text: &str| {
        sample(
            text,
            "salesplan_intake_leads_total",
            &["outcome=\"accepted\"", "source=\"webhook\""],
        )
    };
    let before = accepted(&scrape(&stack.tunnel_listener).await?);

    for run in 0..3 {
        let status = http
            .post(stack.webhook_url())
            .bearer_auth(&funnel)
            .json(&lead_json(
                &plan.id,
                &format!("run-{run}"),
                &format!("c-{run}"),
            ))
            .send()
            .await?
            .status();
        assert_eq!(status, 202);
    }
    let bad = http
        .post(stack.webhook_url())
        .bearer_auth(&funnel)
        .json(&lead_json("not-a-plan", "r", "c"))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);

    let text = scrape(&stack.tunnel_listener).await?;
    assert_eq!(accepted(&text) - before, 3.0, "{text}");
    assert!(
        sample(
            &text,
            "salesplan_intake_leads_total",
            &["outcome=\"rejected\""]
        ) >= 1.0
    );

    // Deals were created: CreateDeal calls counted by method and code, lead-to-deal timed
    // by the distributor.
    let text = eventually(Duration::from_secs(20), || async {
        let text = scrape(&stack.deal_service).await?;
        let created = sample(
            &text,
            "salesplan_grpc_requests_total",
            &[
                "method=\"/salesplan.v1.DealService/CreateDeals\"",
                "code=\"Ok\"",
            ],
        );
        let published = sample(&text, "salesplan_outbox_published_total", &[]);
        let timed = sample(
            &scrape(&stack.distributor).await?,
            "salesplan_distributor_lead_to_deal_seconds_count",
            &[],
        );
        Ok((created >= 1.0 && timed >= 3.0 && published >= 4.0).then_some(text))
    })
    .await?;
    assert!(
        sample(
            &text,
            "salesplan_grpc_requests_total",
            &["method=\"/salesplan.v1.PlanService/CreatePlan\""]
        ) >= 1.0
    );
    // Each endpoint shows its own service's metrics only.
    let listener = scrape(&stack.tunnel_listener).await?;
    let distributor = scrape(&stack.distributor).await?;
    // The distributor consumes, and shows its consumers' lag.
    assert!(
        distributor.contains("salesplan_consumer_pending"),
        "{distributor}"
    );
    let reporting = scrape(&stack.reporting).await?;
    for (name, text, others) in [
        (
            "deal-service",
            &text,
            ["salesplan_intake_", "salesplan_distributor_"],
        ),
        (
            "listener",
            &listener,
            ["salesplan_outbox_", "salesplan_distributor_"],
        ),
        (
            "distributor",
            &distributor,
            ["salesplan_intake_", "salesplan_outbox_"],
        ),
        (
            "reporting",
            &reporting,
            ["salesplan_intake_", "salesplan_outbox_"],
        ),
    ] {
        for other in others {
            assert!(!text.contains(other), "{name} shows {other}…:\n{text}");
        }
    }
    // Calls are counted where they are served: CreatePlan by deal-service only.
    assert_eq!(
        sample(
            &listener,
            "salesplan_grpc_requests_total",
            &["method=\"/salesplan.v1.PlanService/CreatePlan\""]
        ),
        0.0
    );
    stack.stop().await
}

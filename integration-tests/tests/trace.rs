//! One trace from the webhook request through the intake event, the distributor,
//! CreateDeal, the outbox relay and the reporting update. Its own test binary: it installs
//! the process's tracing subscriber with an in-memory span exporter.

use std::time::Duration;

use integration_tests::{
    Stack,
    api::{Mode, Strategy, create_plan, lead_json, plan_request},
    stack::eventually,
};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use salesplan_platform::{Permission, grpc::outgoing};
use salesplan_proto::v1::{self as pb, report_service_client::ReportServiceClient};
use tracing_subscriber::{Layer, layer::SubscriberExt};

#[tokio::test]
async fn one_trace_crosses_every_service() -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    // Our spans only: the HTTP/2 internals trace at lower levels.
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
    );
    tracing::subscriber::set_global_default(subscriber)?;

    let stack = Stack::start().await?;
    let admin = stack.token("acme", "admin", &[Permission::PlansAdmin]);
    let plan = create_plan(
        stack.channel(&stack.deal_service).await?,
        &admin,
        plan_request("Traced", Mode::Auto, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    exporter.reset();
    let funnel = stack.token("acme", "funnel", &[Permission::IntakeWrite]);
    let response = reqwest::Client::new()
        .post(stack.webhook_url())
        .bearer_auth(&funnel)
        .json(&lead_json(&plan.id, "run-1", "tg-1"))
        .send()
        .await?;
    assert_eq!(response.status(), 202);

    let viewer = stack.token(
        "acme",
        "viewer",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let reports = ReportServiceClient::new(stack.channel(&stack.reporting).await?);
    eventually(Duration::from_secs(20), || {
        let request = outgoing(
            pb::PipelineSummaryRequest {
                plan_id: Some(plan.id.clone()),
                ..Default::default()
            },
            &viewer,
        );
        let mut reports = reports.clone();
        async move {
            Ok((reports
                .pipeline_summary(request)
                .await?
                .into_inner()
                .total_deals
                == 1)
                .then_some(()))
        }
    })
    .await?;

    let spans = eventually(Duration::from_secs(10), || {
        let exporter = exporter.clone();
        let provider = provider.clone();
        async move {
            provider.force_flush()?;
            let spans = exporter.get_finished_spans()?;
            Ok(spans
                .iter()
                .any(|s| s.name == "reporting.apply")
                .then_some(spans))
        }
    })
    .await?;
    let webhook = spans
        .iter()
        .find(|s| s.name == "POST add-to-sales-plan")
        .expect("the webhook span");
    let trace_id = webhook.span_context.trace_id();
    for name in [
        "publish",
        "distributor.lead",
        "salesplan.v1.DealService/CreateDeals",
        "/salesplan.v1.DealService/CreateDeals",
        "outbox.relay",
        "reporting.apply",
    ] {
        let in_trace = spans
            .iter()
            .any(|s| s.name == name && s.span_context.trace_id() == trace_id);
        let names: Vec<(String, String)> = spans
            .iter()
            .map(|s| (s.name.to_string(), s.span_context.trace_id().to_string()))
            .collect();
        assert!(
            in_trace,
            "{name} is not in the webhook's trace {trace_id}: {names:?}"
        );
    }
    stack.stop().await?;
    provider.shutdown()?;
    Ok(())
}

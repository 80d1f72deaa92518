//! The OTLP export path, against an in-process OTLP/gRPC receiver (the collector's trace
//! and metrics services): with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a call's spans and the
//! service's metrics arrive, named by their service; a lead is one small trace of the
//! services' own spans, and services at rest export nothing. Each test installs the
//! process's tracing subscriber (nextest runs each in a process of its own).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use integration_tests::{
    TestDatabase, TestNats,
    api::{Mode, Strategy, create_plan, plan_request},
};
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{KeyValue, any_value::Value},
};
use salesplan_platform::{
    Actor, Permission, auth::TokenIssuer, config::AuthConfig, service::Service,
    telemetry::TelemetryConfig,
};
use tonic::{Request, Response, Status};

/// A span as exported: its trace id and its name.
type TracedSpan = (Vec<u8>, String);

/// What the receiver got: (service.name, span or metric name), and each span's trace.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, String)>>>,
    traces: Arc<Mutex<Vec<TracedSpan>>>,
    metrics: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    /// Every span so far: (trace id, name).
    fn traces(&self) -> Vec<TracedSpan> {
        self.traces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serves the receiver on a free port; its endpoint URL.
    async fn serve(&self) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let receiver = self.clone();
        let served = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .add_service(MetricsServiceServer::new(receiver))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Ok((endpoint, served))
    }
}

fn service_name(attributes: &[KeyValue]) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        let mut traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        for resource in request.into_inner().resource_spans {
            let service = service_name(&resource.resource.unwrap_or_default().attributes);
            for scope in resource.scope_spans {
                for span in scope.spans {
                    traces.push((span.trace_id.clone(), span.name.clone()));
                    spans.push((service.clone(), span.name));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        for resource in request.into_inner().resource_metrics {
            let service = service_name(&resource.resource.unwrap_or_default().attributes);
            for scope in resource.scope_metrics {
                metrics.extend(scope.metrics.into_iter().map(|m| (service.clone(), m.name)));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_an_otlp_receiver() -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let (endpoint, served) = receiver.serve().await?;
    let telemetry = TelemetryConfig {
        otlp_endpoint: Some(endpoint.clone()),
        filter: Some("info".into()),
        ..TelemetryConfig::default()
    };
    let guard = salesplan_platform::telemetry::init("salesplan-test", &telemetry);

    let database = TestDatabase::create().await?;
    let nats = TestNats::start().await?;
    let mut config = deal_service::Config::local(&database.url, &nats.url);
    config.common.telemetry = telemetry;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = config.start(shutdown.clone()).await?;
    let admin = TokenIssuer::hs256(AuthConfig::DEV_SECRET.as_bytes()).issue(
        &Actor::new("acme", "admin", [Permission::PlansAdmin]),
        Duration::from_secs(600),
    )?;
    let channel = tonic::transport::Endpoint::from_shared(running.grpc_url())?
        .connect()
        .await?;
    create_plan(
        channel,
        &admin,
        plan_request("Exported", Mode::Manual, Strategy::Unspecified, false, &[]),
    )
    .await?;

    // Stopping flushes: the service's metrics as it drains, the process's spans as the
    // telemetry guard is dropped (a blocking shutdown, off the runtime's threads).
    shutdown.cancel();
    running.wait().await?;
    tokio::task::spawn_blocking(move || drop(guard)).await?;

    let spans = receiver
        .spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(
        spans.contains(&(
            "salesplan-test".to_owned(),
            "/salesplan.v1.PlanService/CreatePlan".to_owned()
        )),
        "{spans:?}"
    );
    let metrics = receiver
        .metrics
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(
        metrics.contains(&(
            "deal-service".to_owned(),
            "salesplan.grpc.requests".to_owned()
        )),
        "{metrics:?}"
    );
    served.abort();
    Ok(())
}

/// The names of the services' own spans (besides each gRPC method's path).
const OWN_SPANS: [&str; 4] = [
    "POST add-to-sales-plan",
    "distributor.create_deals",
    "outbox.relay",
    "reporting.apply",
];

/// Spans a lead's trace is made of, at most (docs/operations.md lists them).
const MOST_SPANS_PER_LEAD: usize = 15;

/// One webhook lead is one trace of at most 15 of the services' own spans, from the
/// webhook to reporting; nothing of the libraries (h2, hyper, tower, async-nats, sqlx) is
/// exported, though `RUST_LOG` asks for everything; and services at rest export nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_is_one_small_trace_and_services_at_rest_export_nothing() -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let (endpoint, served) = receiver.serve().await?;
    let telemetry = TelemetryConfig {
        otlp_endpoint: Some(endpoint),
        filter: Some("trace".into()),
        ..TelemetryConfig::default()
    };
    let guard = Arc::new(salesplan_platform::telemetry::init(
        "salesplan-test",
        &telemetry,
    ));
    let flush = || {
        let guard = guard.clone();
        async move { tokio::task::spawn_blocking(move || guard.flush()).await }
    };
    let stack = integration_tests::Stack::start().await?;
    let admin = stack.token("acme", "admin", &[Permission::PlansAdmin]);
    let plan = create_plan(
        stack.channel(&stack.deal_service).await?,
        &admin,
        plan_request("Traced", Mode::Auto, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let funnel = stack.token("acme", "funnel", &[Permission::IntakeWrite]);
    let answer = reqwest::Client::new()
        .post(stack.webhook_url())
        .bearer_auth(&funnel)
        .json(&integration_tests::api::lead_json(&plan.id, "run-1", "c-1"))
        .send()
        .await?;
    anyhow::ensure!(
        answer.status() == 202,
        "the webhook answered {}",
        answer.status()
    );

    // The lead's trace, once reporting has applied its deal.
    let lead = integration_tests::stack::eventually(Duration::from_secs(30), || async {
        flush().await?;
        let traces = receiver.traces();
        let Some((lead, _)) = traces.iter().find(|(_, name)| name == OWN_SPANS[0]) else {
            return Ok(None);
        };
        let spans: Vec<String> = traces
            .iter()
            .filter(|(trace, _)| trace == lead)
            .map(|(_, name)| name.clone())
            .collect();
        Ok(spans
            .iter()
            .any(|n| n == "reporting.apply")
            .then_some(spans))
    })
    .await?;
    for expected in OWN_SPANS.iter().copied().chain([
        "/salesplan.v1.PlanService/GetPlan",
        "/salesplan.v1.DealService/CreateDeals",
    ]) {
        assert!(
            lead.iter().any(|n| n == expected),
            "{expected} not in {lead:?}"
        );
    }
    assert!(
        lead.len() <= MOST_SPANS_PER_LEAD,
        "{} spans: {lead:?}",
        lead.len()
    );
    let foreign: Vec<String> = receiver
        .traces()
        .into_iter()
        .map(|(_, name)| name)
        .filter(|n| !n.starts_with("/salesplan.v1.") && !OWN_SPANS.contains(&n.as_str()))
        .collect();
    assert!(
        foreign.is_empty(),
        "spans not the services' own: {foreign:?}"
    );

    // At rest: over a window in which every polling loop of the four services runs several
    // times (the relay every 500 ms, the bulk lane every 100 ms), nothing more is exported.
    // Probes (Kubernetes checks health every few seconds) are not traced either.
    flush().await?;
    let before = receiver.traces().len();
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        stack.channel(&stack.deal_service).await?,
    );
    for _ in 0..5 {
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    flush().await?;
    let after = receiver.traces();
    assert_eq!(
        after.len(),
        before,
        "exported at rest: {:?}",
        &after[before..]
    );

    stack.stop().await?;
    served.abort();
    Ok(())
}

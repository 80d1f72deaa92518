//! The OTLP export path, against an in-process OTLP/gRPC receiver (the collector's trace
//! and metrics services): with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a call's spans and the
//! service's metrics arrive, named by their service. Its own test binary: it installs the
//! process's tracing subscriber.

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

/// What the receiver got: (service.name, span or metric name).
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, String)>>>,
    metrics: Arc<Mutex<Vec<(String, String)>>>,
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
        for resource in request.into_inner().resource_spans {
            let service = service_name(&resource.resource.unwrap_or_default().attributes);
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s.name)));
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let served = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .add_service(MetricsServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
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

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

/// The process's telemetry as a test installed it.
struct Exporter {
    guard: Arc<salesplan_platform::telemetry::TelemetryGuard>,
}

impl Exporter {
    fn install(telemetry: &TelemetryConfig) -> Self {
        let guard = salesplan_platform::telemetry::init("salesplan-test", telemetry);
        Self {
            guard: Arc::new(guard),
        }
    }

    /// Exports every span ended so far (a blocking call, off the runtime's threads).
    async fn flush(&self) -> Result<(), tokio::task::JoinError> {
        let guard = self.guard.clone();
        tokio::task::spawn_blocking(move || guard.flush()).await
    }
}

/// A span as exported: its trace id and its name.
type TracedSpan = (Vec<u8>, String);

/// An exported resource's string attributes.
type Attributes = Vec<(String, String)>;

/// What the receiver got: (service.name, span or metric name), and each span.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, String)>>>,
    metrics: Arc<Mutex<Vec<(String, String)>>>,
    /// The string attributes of each exported resource (of spans and of metrics).
    resources: Arc<Mutex<Vec<Attributes>>>,
    /// Each span's trace, name, string attributes and status.
    details: Arc<Mutex<Vec<SpanDetail>>>,
}

/// An exported span: its trace id, name, string attributes and status (code, message).
#[derive(Clone, Debug)]
struct SpanDetail {
    trace: Vec<u8>,
    name: String,
    attributes: Attributes,
    code: i32,
    message: String,
    /// The span kind (2 server, 3 client, 4 producer, 5 consumer).
    kind: i32,
}

/// The kind of the first span named `name`.
fn span_kind(details: &[SpanDetail], name: &str) -> Option<&'static str> {
    let kind = details.iter().find(|s| s.name == name)?.kind;
    Some(match kind {
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "internal",
    })
}

fn string_attributes(attributes: &[KeyValue]) -> Attributes {
    attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(v) => Some((kv.key.clone(), v.clone())),
            Value::IntValue(v) => Some((kv.key.clone(), v.to_string())),
            _ => None,
        })
        .collect()
}

impl Receiver {
    /// Every span so far.
    fn details(&self) -> Vec<SpanDetail> {
        self.details
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every span so far: (trace id, name).
    fn traces(&self) -> Vec<TracedSpan> {
        self.details()
            .into_iter()
            .map(|span| (span.trace, span.name))
            .collect()
    }

    /// Waits (at most 10 s, flushing) until a span `name` of the trace `trace` (hex) has
    /// ended with an error whose reason holds `reason`.
    async fn ended_in_error<F>(
        &self,
        flush: impl Fn() -> F,
        trace: &str,
        name: &str,
        reason: &str,
    ) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = Result<(), tokio::task::JoinError>>,
    {
        let trace = hex_bytes(trace);
        integration_tests::stack::eventually(Duration::from_secs(10), || async {
            flush().await?;
            Ok(self
                .details()
                .iter()
                .any(|s| {
                    s.trace == trace && s.name == name && s.code == 2 && s.message.contains(reason)
                })
                .then_some(()))
        })
        .await
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
        for resource in request.into_inner().resource_spans {
            let attributes = resource.resource.unwrap_or_default().attributes;
            let service = service_name(&attributes);
            self.resources
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(string_attributes(&attributes));
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let status = span.status.clone().unwrap_or_default();
                    self.details
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(SpanDetail {
                            trace: span.trace_id.clone(),
                            name: span.name.clone(),
                            attributes: string_attributes(&span.attributes),
                            code: status.code,
                            message: status.message,
                            kind: span.kind,
                        });
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

/// The names of the services' own spans (besides each gRPC method's: the server span by its
/// path, `/salesplan.v1.DealService/CreateDeals`, the client span by service and method,
/// `salesplan.v1.DealService/CreateDeals`).
const OWN_SPANS: [&str; 5] = [
    "POST add-to-sales-plan",
    "publish",
    "distributor.lead",
    "outbox.relay",
    "reporting.apply",
];

/// The gRPC spans of a lead: the listener's look-up of the plan and the distributor's
/// CreateDeals call, each as its client and server see it.
const GRPC_SPANS: [&str; 4] = [
    "salesplan.v1.PlanService/GetPlan",
    "/salesplan.v1.PlanService/GetPlan",
    "salesplan.v1.DealService/CreateDeals",
    "/salesplan.v1.DealService/CreateDeals",
];

/// Whether a span is one the services export: their own, a gRPC call's, a statement's.
fn is_services_span(name: &str) -> bool {
    name.starts_with("/salesplan.v1.")
        || name.starts_with("salesplan.v1.")
        || OWN_SPANS.contains(&name)
        || name == "dead-letter"
        || is_db_span(name)
}

/// The database spans of a lead: deal-service's look-up of the plan and its insert of the
/// deal, each named by its operation and table.
const DB_SPANS: [&str; 2] = ["SELECT plans", "INSERT deals"];

/// A database client span (the plan made first and the counts read are traced too).
fn is_db_span(name: &str) -> bool {
    ["SELECT ", "INSERT ", "UPDATE ", "DELETE "]
        .iter()
        .any(|op| name.starts_with(op))
}

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
    let exporter = Exporter::install(&telemetry);
    let flush = || exporter.flush();
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
        .json(&serde_json::json!({
            "plan_id": plan.id,
            "run_id": "run-1",
            "contact": {
                "external_id": "ann-external",
                "name": "Ann Person",
                "email": "ann.person@example.com",
                "phone": "+1 555 0100",
            },
        }))
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
    for expected in OWN_SPANS.iter().chain(&DB_SPANS).chain(&GRPC_SPANS) {
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
    // An operator finds the lead by its account, plan or intake id; each span says what
    // kind of work it is in the semantic conventions' words.
    let details = receiver.details();
    let attribute = |span: &str, key: &str| {
        details
            .iter()
            .find(|s| s.name == span)
            .and_then(|s| s.attributes.iter().find(|(k, _)| k == key))
            .map(|(_, v)| v.clone())
    };
    let webhook = OWN_SPANS[0];
    assert_eq!(
        attribute(webhook, "salesplan.account_id").as_deref(),
        Some("acme")
    );
    assert_eq!(
        attribute(webhook, "salesplan.plan_id"),
        Some(plan.id.clone())
    );
    assert!(attribute(webhook, "salesplan.intake_id").is_some_and(|id| id.len() == 36));
    assert_eq!(
        attribute("distributor.lead", "salesplan.plan_id"),
        Some(plan.id.clone())
    );
    assert_eq!(
        attribute("distributor.lead", "salesplan.intake_id"),
        attribute(webhook, "salesplan.intake_id")
    );
    for (span, kind) in [
        ("salesplan.v1.DealService/CreateDeals", "client"),
        ("/salesplan.v1.DealService/CreateDeals", "server"),
    ] {
        assert_eq!(
            attribute(span, "rpc.service").as_deref(),
            Some("salesplan.v1.DealService")
        );
        assert_eq!(
            attribute(span, "rpc.method").as_deref(),
            Some("CreateDeals")
        );
        assert_eq!(
            attribute(span, "rpc.grpc.status_code").as_deref(),
            Some("0")
        );
        assert_eq!(span_kind(&details, span), Some(kind));
    }
    assert_eq!(
        attribute("publish", "messaging.operation.type").as_deref(),
        Some("send")
    );
    for consumed in ["distributor.lead", "reporting.apply", "outbox.relay"] {
        assert_eq!(
            attribute(consumed, "messaging.system").as_deref(),
            Some("nats")
        );
        assert_eq!(
            attribute(consumed, "salesplan.account_id").as_deref(),
            Some("acme")
        );
        assert!(attribute(consumed, "messaging.destination.name").is_some());
    }
    assert_eq!(
        attribute("/salesplan.v1.DealService/CreateDeals", "rpc.system").as_deref(),
        Some("grpc")
    );
    // A statement's span names the operation and the table, never a value of the lead.
    let insert = details
        .iter()
        .find(|s| s.name == DB_SPANS[1])
        .expect("INSERT deals");
    for (key, value) in [
        ("db.system.name", "postgresql"),
        ("db.namespace", "deal_service"),
        ("db.operation.name", "INSERT"),
        ("db.collection.name", "deals"),
    ] {
        assert!(
            insert
                .attributes
                .iter()
                .any(|(k, v)| k == key && v == value),
            "{key}={value} not in {:?}",
            insert.attributes
        );
    }
    assert!(
        details
            .iter()
            .filter(|s| DB_SPANS.contains(&s.name.as_str()))
            .flat_map(|s| &s.attributes)
            .all(|(_, v)| !v.contains("acme")),
        "a database span carries a value of the lead"
    );
    // No span carries the person: name, e-mail, phone or external id.
    let personal: Vec<&(String, String)> = details
        .iter()
        .flat_map(|s| &s.attributes)
        .filter(|(_, v)| {
            [
                "Ann Person",
                "ann.person",
                "555 0100",
                "5550100",
                "ann-external",
            ]
            .iter()
            .any(|p| v.contains(p))
        })
        .collect();
    assert!(personal.is_empty(), "personal data on spans: {personal:?}");

    // A refused lead's span has an error status and the reason.
    let refused = reqwest::Client::new()
        .post(stack.webhook_url())
        .bearer_auth(&funnel)
        .json(&integration_tests::api::lead_json(
            "00000000-0000-7000-8000-000000000000",
            "run-2",
            "c-2",
        ))
        .send()
        .await?;
    assert_eq!(refused.status(), 404);
    let error = integration_tests::stack::eventually(Duration::from_secs(10), || async {
        flush().await?;
        Ok(receiver
            .details()
            .into_iter()
            .find(|s| s.name == webhook && s.code == 2))
    })
    .await?;
    assert!(error.message.contains("plan"), "{error:?}");

    // A lead the distributor rejects (its plan exists nowhere) ends its trace with an
    // error status and the reason.
    let nats = async_nats::connect(&stack.nats.url).await?;
    let nowhere = "00000000-0000-7000-8000-0000000000aa";
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    let event = salesplan_proto::v1::IntakeEvent {
        intake_id: "0190b8a6-0000-7000-8000-000000000001".into(),
        account_id: "acme".into(),
        lead: Some(salesplan_proto::v1::Lead {
            plan_id: nowhere.into(),
            run_id: "run-x".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    async_nats::jetstream::new(nats.clone())
        .publish_with_headers(
            salesplan_platform::bus::streams::intake_subject("acme", nowhere),
            headers,
            prost::Message::encode_to_vec(&event).into(),
        )
        .await?
        .await?;
    receiver
        .ended_in_error(
            &flush,
            "1af7651916cd43dd8448eb211c80319c",
            "distributor.lead",
            nowhere,
        )
        .await?;

    // A lead refused over gRPC: its call's span has the error status, the reason and the
    // lead's ids, as the webhook's has.
    let mut intake = salesplan_proto::v1::intake_service_client::IntakeServiceClient::new(
        stack.channel(&stack.tunnel_listener).await?,
    );
    let mut request = tonic::Request::new(salesplan_proto::v1::AddToSalesPlanRequest {
        lead: Some(salesplan_proto::v1::Lead {
            plan_id: "00000000-0000-7000-8000-0000000000bb".into(),
            run_id: "grpc-1".into(),
            contact: Some(salesplan_proto::v1::Contact {
                external_id: "g-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {funnel}").parse()?);
    request.metadata_mut().insert(
        "traceparent",
        "00-2af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse()?,
    );
    let refused = intake.add_to_sales_plan(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    let entry = "/salesplan.v1.IntakeService/AddToSalesPlan";
    receiver
        .ended_in_error(
            &flush,
            "2af7651916cd43dd8448eb211c80319c",
            entry,
            "NotFound",
        )
        .await?;
    let grpc_entry = receiver
        .details()
        .into_iter()
        .find(|s| s.name == entry)
        .expect("the call's span");
    for key in ["salesplan.plan_id", "salesplan.intake_id"] {
        assert!(
            grpc_entry.attributes.iter().any(|(k, _)| k == key),
            "{key} not in {:?}",
            grpc_entry.attributes
        );
    }
    assert!(
        grpc_entry
            .attributes
            .contains(&("rpc.grpc.status_code".to_owned(), "5".to_owned()))
    );

    // An anonymous caller is not traced, whatever trace it names.
    let anonymous = reqwest::Client::new()
        .post(stack.webhook_url())
        .header(
            "traceparent",
            "00-3af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&integration_tests::api::lead_json(&plan.id, "run-3", "c-3"))
        .send()
        .await?;
    assert_eq!(anonymous.status(), 401);

    // Nor is an anonymous gRPC call, whatever trace it names.
    let mut plans = salesplan_proto::v1::plan_service_client::PlanServiceClient::new(
        stack.channel(&stack.deal_service).await?,
    );
    let mut anonymous_call = tonic::Request::new(salesplan_proto::v1::ListPlansRequest::default());
    anonymous_call.metadata_mut().insert(
        "traceparent",
        "00-4af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse()?,
    );
    let refused = plans.list_plans(anonymous_call).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // A bulk add is one trace, the call's: its leads start none anywhere downstream.
    integration_tests::stack::eventually(Duration::from_secs(10), || async {
        flush().await?;
        Ok(receiver
            .traces()
            .iter()
            .any(|(_, n)| n == "reporting.apply")
            .then_some(()))
    })
    .await?;
    stack.intake_settled().await?;
    flush().await?;
    let traces_before: std::collections::HashSet<Vec<u8>> = receiver
        .traces()
        .into_iter()
        .map(|(trace, _)| trace)
        .collect();
    let chunks = integration_tests::api::audience_chunks(&plan.id, "traced-bulk", 120, 40, |i| {
        format!("bulk-{i}")
    });
    let mut audience = salesplan_proto::v1::intake_service_client::IntakeServiceClient::new(
        stack.channel(&stack.tunnel_listener).await?,
    )
    .add_audience(salesplan_platform::grpc::outgoing(
        futures::stream::iter(chunks),
        &funnel,
    ))
    .await?
    .into_inner();
    while let Some(answer) = futures::StreamExt::next(&mut audience).await {
        answer?;
    }
    let viewer = stack.token("acme", "viewer", &[Permission::DealsRead]);
    integration_tests::stack::eventually(Duration::from_secs(30), || async {
        let deals = integration_tests::api::deal_count(
            stack.channel(&stack.deal_service).await?,
            &viewer,
            &plan.id,
        )
        .await?;
        Ok((deals >= 121).then_some(()))
    })
    .await?;
    stack.intake_settled().await?;
    flush().await?;
    let bulk: std::collections::HashMap<Vec<u8>, Vec<String>> = receiver
        .traces()
        .into_iter()
        .filter(|(trace, _)| !traces_before.contains(trace))
        .fold(Default::default(), |mut traces, (trace, name)| {
            traces.entry(trace).or_default().push(name);
            traces
        });
    // The test's own reads of the deal count are traces of their own.
    let bulk: std::collections::HashMap<_, _> = bulk
        .into_iter()
        .filter(|(_, names)| {
            !names
                .iter()
                .any(|n| n == "/salesplan.v1.DealService/ListDeals")
        })
        .collect();
    assert_eq!(bulk.len(), 1, "the bulk add's traces: {bulk:?}");
    let names = bulk.values().next().expect("one trace");
    assert!(
        names
            .iter()
            .any(|n| n == "/salesplan.v1.IntakeService/AddAudience"),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n == "outbox.relay" || n == "distributor.lead"),
        "{names:?}"
    );

    // A message no consumer can read is dead-lettered in its own trace, with the reason.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    async_nats::jetstream::new(nats)
        .publish_with_headers(
            salesplan_platform::bus::streams::intake_subject("acme", &plan.id),
            headers,
            "not protobuf".into(),
        )
        .await?
        .await?;
    receiver
        .ended_in_error(
            &flush,
            "0af7651916cd43dd8448eb211c80319c",
            "dead-letter",
            "undecodable",
        )
        .await?;
    let foreign: Vec<String> = receiver
        .traces()
        .into_iter()
        .map(|(_, name)| name)
        .filter(|n| !is_services_span(n))
        .collect();
    assert!(
        foreign.is_empty(),
        "spans not the services' own: {foreign:?}"
    );

    // At rest: over a window in which every polling loop of the four services runs at least
    // once (the relay every 500 ms, the bulk lane every 100 ms, the relay's backlog every
    // 5 s, consumer heartbeats every 5 s), nothing more is exported.
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
    tokio::time::sleep(Duration::from_secs(6)).await;
    flush().await?;
    let after = receiver.traces();
    assert_eq!(
        after.len(),
        before,
        "exported at rest: {:?}",
        &after[before..]
    );
    for anonymous in [
        "3af7651916cd43dd8448eb211c80319c",
        "4af7651916cd43dd8448eb211c80319c",
    ] {
        let anonymous = hex_bytes(anonymous);
        assert!(
            after.iter().all(|(trace, _)| *trace != anonymous),
            "an anonymous request was traced"
        );
    }

    stack.stop().await?;
    served.abort();
    Ok(())
}

/// The OpenTelemetry environment decides what is exported: with
/// `parentbased_traceidratio` at 0, a lead that starts its own trace is exported nowhere,
/// and a lead whose caller sampled it (a `traceparent` with the sampled flag) is exported
/// whole, in the caller's trace, across NATS and gRPC; spans and metrics carry
/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`; metrics come every
/// `OTEL_METRIC_EXPORT_INTERVAL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_environment_decides_what_is_exported() -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let (endpoint, served) = receiver.serve().await?;
    let telemetry = TelemetryConfig::from_env(&salesplan_platform::config::Env::from_pairs([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "salesplan-eu"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,service.version=9.9.9",
        ),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ("RUST_LOG", "info"),
    ]))?;
    let exporter = Exporter::install(&telemetry);
    let flush = || exporter.flush();
    let stack = integration_tests::Stack::start().await?;
    let admin = stack.token("acme", "admin", &[Permission::PlansAdmin]);
    let plan = create_plan(
        stack.channel(&stack.deal_service).await?,
        &admin,
        plan_request("Sampled", Mode::Auto, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let funnel = stack.token("acme", "funnel", &[Permission::IntakeWrite]);
    let http = reqwest::Client::new();
    let send = |run: &'static str, traceparent: Option<String>| {
        let mut request = http
            .post(stack.webhook_url())
            .bearer_auth(&funnel)
            .json(&integration_tests::api::lead_json(&plan.id, run, run));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        async move {
            let status = request.send().await?.status();
            anyhow::ensure!(status == 202, "the webhook answered {status}");
            anyhow::Ok(())
        }
    };
    let deals = |n: i64| {
        let channel = stack.channel(&stack.deal_service);
        let viewer = stack.token("acme", "viewer", &[Permission::DealsRead]);
        let plan = plan.id.clone();
        async move {
            let channel = channel.await?;
            integration_tests::stack::eventually(Duration::from_secs(30), || {
                let (channel, viewer, plan) = (channel.clone(), viewer.clone(), plan.clone());
                async move {
                    let count = integration_tests::api::deal_count(channel, &viewer, &plan).await?;
                    Ok((count == n).then_some(()))
                }
            })
            .await
        }
    };

    // A lead that starts its own trace: not sampled, exported nowhere (its deal is made).
    send("unsampled", None).await?;
    deals(1).await?;
    stack.intake_settled().await?;

    // A lead whose caller sampled it: exported whole, in the caller's trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    send(
        "sampled",
        Some(format!("00-{trace_id}-00f067aa0ba902b7-01")),
    )
    .await?;
    let wanted = hex_bytes(trace_id);
    let lead = integration_tests::stack::eventually(Duration::from_secs(30), || async {
        flush().await?;
        let spans: Vec<String> = receiver
            .traces()
            .into_iter()
            .filter(|(trace, _)| *trace == wanted)
            .map(|(_, name)| name)
            .collect();
        Ok(spans
            .iter()
            .any(|n| n == "reporting.apply")
            .then_some(spans))
    })
    .await?;
    for expected in OWN_SPANS {
        assert!(
            lead.iter().any(|n| n == expected),
            "{expected} not in {lead:?}"
        );
    }
    flush().await?;
    let other: Vec<TracedSpan> = receiver
        .traces()
        .into_iter()
        .filter(|(trace, _)| *trace != wanted)
        .collect();
    assert!(other.is_empty(), "spans of unsampled traces: {other:?}");
    let resources = receiver
        .resources
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for wanted in [
        ("service.name", "salesplan-eu"),
        ("deployment.environment", "test"),
        ("service.version", "9.9.9"),
    ] {
        assert!(
            resources
                .iter()
                .all(|r| r.contains(&(wanted.0.to_owned(), wanted.1.to_owned()))),
            "{wanted:?} missing: {resources:?}"
        );
    }

    // Metrics every 200 ms, under the configured name: long before the default minute.
    let metrics = salesplan_platform::metrics::Metrics::new("deal-service", &telemetry);
    metrics
        .meter("test")
        .u64_counter("salesplan.test.ticks")
        .build()
        .add(1, &[]);
    integration_tests::stack::eventually(Duration::from_secs(10), || async {
        let got = receiver
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(got
            .contains(&("salesplan-eu".to_owned(), "salesplan.test.ticks".to_owned()))
            .then_some(()))
    })
    .await?;
    metrics.shutdown();
    stack.stop().await?;
    served.abort();
    Ok(())
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// Leads decided in one batch keep their own traces, and sampling keeps each lead whole or
/// nowhere: with `parentbased_traceidratio` at 0, three leads whose callers sampled them
/// and three that start their own (unsampled) traces wait in the intake stream, an
/// unsampled one first, and are decided together once the distributor starts. Each sampled
/// lead's trace holds its own distributor span and its own deal's relay span, at most 15
/// spans; nothing of the unsampled leads is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leads_decided_together_keep_their_own_traces() -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let (endpoint, served) = receiver.serve().await?;
    let telemetry = TelemetryConfig {
        otlp_endpoint: Some(endpoint),
        filter: Some("info".into()),
        sampler: salesplan_platform::telemetry::SamplerConfig::ParentBasedTraceIdRatio(0.0),
        ..TelemetryConfig::default()
    };
    let exporter = Exporter::install(&telemetry);
    let flush = || exporter.flush();
    let stack = integration_tests::stack::DealStack::start().await?;
    let listener = stack.start_listener().await?;
    let admin = stack.token("acme", "admin", &[Permission::PlansAdmin]);
    let plan = create_plan(
        stack.channel().await?,
        &admin,
        plan_request("Batched", Mode::Auto, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let webhook = format!(
        "http://{}{}",
        listener.http_addr.expect("the listener serves HTTP"),
        tunnel_listener::http::webhook::PATH
    );
    let funnel = stack.token("acme", "funnel", &[Permission::IntakeWrite]);
    let sampled = [
        "5bf92f3577b34da6a3ce929d0e0e4736",
        "6bf92f3577b34da6a3ce929d0e0e4736",
        "7bf92f3577b34da6a3ce929d0e0e4736",
    ];
    let http = reqwest::Client::new();
    for (i, trace) in sampled.iter().enumerate() {
        for traceparent in [None, Some(format!("00-{trace}-00f067aa0ba902b7-01"))] {
            let mut request =
                http.post(&webhook)
                    .bearer_auth(&funnel)
                    .json(&integration_tests::api::lead_json(
                        &plan.id,
                        &format!("run-{i}-{}", traceparent.is_some()),
                        "c",
                    ));
            if let Some(traceparent) = traceparent {
                request = request.header("traceparent", traceparent);
            }
            let status = request.send().await?.status();
            anyhow::ensure!(status == 202, "the webhook answered {status}");
        }
    }
    let distributor = stack.start_distributor().await?;
    let wanted: Vec<Vec<u8>> = sampled.iter().map(|t| hex_bytes(t)).collect();
    let traces = integration_tests::stack::eventually(Duration::from_secs(30), || async {
        flush().await?;
        let spans = receiver.traces();
        let of = |trace: &Vec<u8>| -> Vec<String> {
            spans
                .iter()
                .filter(|(t, _)| t == trace)
                .map(|(_, n)| n.clone())
                .collect()
        };
        let traces: Vec<Vec<String>> = wanted.iter().map(of).collect();
        Ok(traces
            .iter()
            .all(|t| t.iter().any(|n| n == "outbox.relay"))
            .then_some(traces))
    })
    .await?;
    for (trace, names) in sampled.iter().zip(&traces) {
        let count = |name: &str| names.iter().filter(|n| *n == name).count();
        assert_eq!(count("distributor.lead"), 1, "{trace}: {names:?}");
        assert_eq!(count("outbox.relay"), 1, "{trace}: {names:?}");
        assert!(names.len() <= MOST_SPANS_PER_LEAD, "{trace}: {names:?}");
    }
    // The CreateDeals calls went into sampled leads' traces.
    let calls: usize = traces
        .iter()
        .map(|t| {
            t.iter()
                .filter(|n| *n == "salesplan.v1.DealService/CreateDeals")
                .count()
        })
        .sum();
    assert!(calls >= 1, "{traces:?}");
    flush().await?;
    let unsampled: Vec<TracedSpan> = receiver
        .traces()
        .into_iter()
        .filter(|(trace, _)| !wanted.contains(trace))
        .collect();
    assert!(
        unsampled.is_empty(),
        "spans of unsampled leads: {unsampled:?}"
    );
    stack.stop().await?;
    listener.wait().await?;
    distributor.wait().await?;
    served.abort();
    Ok(())
}

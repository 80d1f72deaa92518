//! Logs and traces: one `init` per process, and W3C trace context carried across NATS
//! headers and gRPC metadata. (Metrics are per service: `crate::metrics::Metrics`.)
//!
//! Logs: `RUST_LOG` filter (default `info,sqlx=warn,async_nats=warn`), pretty locally, JSON with
//! `SALESPLAN_LOG_FORMAT=json`. Traces (and each service's metrics) go to OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{ConfigError, Env};

#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    pub json_logs: bool,
    pub otlp_endpoint: Option<String>,
    pub filter: Option<String>,
}

impl TelemetryConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let json_logs = match env.get("SALESPLAN_LOG_FORMAT") {
            None | Some("pretty") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    "SALESPLAN_LOG_FORMAT",
                    format!("expected pretty or json, got {other:?}"),
                ));
            }
        };
        Ok(Self {
            json_logs,
            otlp_endpoint: env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(str::to_owned),
            filter: env.get("RUST_LOG").map(str::to_owned),
        })
    }
}

/// Flushes and shuts the trace exporter down when dropped (at the end of `main`).
pub struct TelemetryGuard {
    tracer: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports the spans ended so far (blocking: call it off the async runtime's threads).
    pub fn flush(&self) {
        if let Some(tracer) = &self.tracer
            && let Err(err) = tracer.force_flush()
        {
            eprintln!("trace exporter flush: {err}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take()
            && let Err(err) = tracer.shutdown()
        {
            eprintln!("trace exporter shutdown: {err}");
        }
    }
}

/// Installs the process's subscriber. Call once from `main`; a second call (several
/// services in one test process) leaves the first in place.
pub fn init(service: &'static str, config: &TelemetryConfig) -> TelemetryGuard {
    let filter = || {
        EnvFilter::try_new(
            config
                .filter
                .as_deref()
                .unwrap_or("info,sqlx=warn,async_nats=warn"),
        )
        .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let fmt = if config.json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let resource = Resource::builder().with_service_name(service).build();
    let (otel, tracer) = match &config.otlp_endpoint {
        Some(endpoint) => match otlp_tracer(endpoint, resource) {
            Ok(tracer) => {
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer.tracer(service))
                    .with_filter(exported())
                    .boxed();
                (Some(layer), Some(tracer))
            }
            Err(err) => {
                eprintln!("OTLP trace export disabled: {err}");
                (None, None)
            }
        },
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel)
        .try_init();
    TelemetryGuard { tracer }
}

/// The crates whose spans (and the events in them) are exported: the services' own, which
/// name the work (a request, a consumed batch, a relayed event). Library internals (h2,
/// hyper, tower, tonic, async-nats, sqlx) never are, whatever `RUST_LOG` says for logs: at
/// thousands of leads a second their spans would outnumber the ones that explain a lead
/// by hundreds to one.
pub const EXPORTED_CRATES: [&str; 5] = [
    "salesplan_platform",
    "tunnel_listener",
    "distributor",
    "deal_service",
    "reporting",
];

fn exported() -> tracing_subscriber::filter::Targets {
    EXPORTED_CRATES.iter().fold(
        tracing_subscriber::filter::Targets::new(),
        |targets, krate| targets.with_target(*krate, tracing::Level::INFO),
    )
}

/// For tests: compact logs captured per test, `RUST_LOG` or warnings only.
pub fn init_for_tests() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

fn otlp_tracer(
    endpoint: &str,
    resource: Resource,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig;
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource)
        .build())
}

struct NatsHeaders<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct NatsHeadersRef<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's trace context (`traceparent`, `tracestate`) into NATS headers.
pub fn inject_into_nats(headers: &mut async_nats::HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut NatsHeaders(headers));
}

/// The current span's trace context as plain pairs, for storing beside an outbox row.
pub fn trace_headers() -> std::collections::HashMap<String, String> {
    let mut pairs = std::collections::HashMap::new();
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut pairs);
    pairs
}

/// A trace context stored as plain pairs (see [`trace_headers`]).
pub fn extract_from_pairs(pairs: &std::collections::HashMap<String, String>) -> Context {
    TraceContextPropagator::new().extract(pairs)
}

/// The trace context a NATS message carries (empty when it carries none).
pub fn extract_from_nats(headers: Option<&async_nats::HeaderMap>) -> Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&NatsHeadersRef(headers)),
        None => Context::new(),
    }
}

/// Writes the current span's trace context into HTTP headers (gRPC metadata).
pub fn inject_into_http(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HttpHeaders(headers));
}

/// The trace context of an incoming HTTP or gRPC request.
pub fn extract_from_http(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HttpHeadersRef(headers))
}

/// Links `span` to the span of another context (a batch that serves several traces).
pub fn add_link(span: &tracing::Span, other: &Context) {
    use opentelemetry::trace::TraceContextExt;
    let context = other.span().span_context().clone();
    if context.is_valid() {
        span.add_link(context);
    }
}

/// Makes `span` a child of the remote `parent` context (no-op without an OTel layer).
pub fn set_parent(span: &tracing::Span, parent: Context) {
    let _ = span.set_parent(parent);
}

struct HttpHeaders<'a>(&'a mut http::HeaderMap);

impl Injector for HttpHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HttpHeadersRef<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn trace_context_survives_nats_headers() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let cx = extract_from_nats(Some(&headers));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn log_format_is_validated() {
        let env = Env::from_pairs([("SALESPLAN_LOG_FORMAT", "xml")]);
        assert!(TelemetryConfig::from_env(&env).is_err());
    }
}

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
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: where traces and metrics go, unless one of them has
    /// an endpoint of its own (below).
    pub otlp_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`.
    pub signal_endpoints: SignalEndpoints,
    pub filter: Option<String>,
    /// `OTEL_SERVICE_NAME`: the name spans and metrics are exported under, instead of the
    /// service's own (it wins over a `service.name` in the resource attributes).
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs (comma-separated, values
    /// percent-encoded) on everything exported, e.g. `service.version`,
    /// `deployment.environment`, the pod's name.
    pub resource_attributes: Vec<(String, String)>,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub sampler: SamplerConfig,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds; 60,000 by default).
    pub metric_interval: Option<std::time::Duration>,
    /// What was read but not taken (a malformed `OTEL_RESOURCE_ATTRIBUTES`), logged once
    /// the logs are set up.
    pub warnings: Vec<String>,
}

/// The per-signal endpoints, each winning over the general one for its signal.
#[derive(Debug, Clone, Default)]
pub struct SignalEndpoints {
    pub traces: Option<String>,
    pub metrics: Option<String>,
}

/// Which traces are kept, decided where a trace starts (the webhook, a gRPC call without a
/// parent) and, with the `parentbased_` samplers, followed downstream: the trace context
/// carries the decision across NATS and gRPC, so a sampled lead is whole and an unsampled
/// one is exported nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SamplerConfig {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    #[default]
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl SamplerConfig {
    /// From the two variables as the OpenTelemetry specification names them; an unknown
    /// sampler or a ratio outside 0–1 stops the start (the SDK would fall back silently).
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        const SAMPLER: &str = "OTEL_TRACES_SAMPLER";
        const ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
        let ratio = || -> Result<f64, ConfigError> {
            match env.get(ARG) {
                None => Ok(1.0),
                Some(arg) => arg
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| {
                        ConfigError::new(ARG, format!("expected a ratio from 0 to 1, got {arg:?}"))
                    }),
            }
        };
        // Enum values are case-insensitive (the specification's words).
        let sampler = env.get(SAMPLER).map(|s| s.trim().to_ascii_lowercase());
        Ok(match sampler.as_deref() {
            None | Some("parentbased_always_on") => Self::ParentBasedAlwaysOn,
            Some("always_on") => Self::AlwaysOn,
            Some("always_off") => Self::AlwaysOff,
            Some("traceidratio") => Self::TraceIdRatio(ratio()?),
            Some("parentbased_always_off") => Self::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => Self::ParentBasedTraceIdRatio(ratio()?),
            Some(other) => {
                return Err(ConfigError::new(
                    SAMPLER,
                    format!(
                        "expected always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off or parentbased_traceidratio, got {other:?}"
                    ),
                ));
            }
        })
    }

    fn sampler(self) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler;
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,key=value`, values percent-decoded. A value that
/// is not is discarded whole and reported, as the specification says (the service still
/// starts, its telemetry without those attributes).
fn resource_attributes(env: &Env, warnings: &mut Vec<String>) -> Vec<(String, String)> {
    const KEY: &str = "OTEL_RESOURCE_ATTRIBUTES";
    let Some(raw) = env.get(KEY) else {
        return Vec::new();
    };
    parse_resource_attributes(raw).unwrap_or_else(|err| {
        warnings.push(format!("{err}; the whole value is discarded"));
        Vec::new()
    })
}

fn parse_resource_attributes(raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    const KEY: &str = "OTEL_RESOURCE_ATTRIBUTES";
    raw.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| {
                    ConfigError::new(KEY, format!("expected key=value, got {pair:?}"))
                })?;
            let value = percent_decode(value.trim()).ok_or_else(|| {
                ConfigError::new(KEY, format!("bad percent-encoding in {pair:?}"))
            })?;
            Ok((key.trim().to_owned(), value))
        })
        .collect()
}

pub(crate) fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl TelemetryConfig {
    /// Where traces go: their own endpoint, else the general one.
    pub fn traces_endpoint(&self) -> Option<&str> {
        self.signal_endpoints
            .traces
            .as_deref()
            .or(self.otlp_endpoint.as_deref())
    }

    /// Where metrics go: their own endpoint, else the general one.
    pub fn metrics_endpoint(&self) -> Option<&str> {
        self.signal_endpoints
            .metrics
            .as_deref()
            .or(self.otlp_endpoint.as_deref())
    }

    /// What spans and metrics are exported as: `OTEL_SERVICE_NAME`, else a `service.name`
    /// of the resource attributes, else `service`; with the resource attributes.
    pub fn resource(&self, service: &str) -> Resource {
        let named = self
            .resource_attributes
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone());
        let name = self
            .service_name
            .clone()
            .or(named)
            .unwrap_or_else(|| service.to_owned());
        Resource::builder()
            .with_attributes(
                self.resource_attributes
                    .iter()
                    .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
            )
            .with_service_name(name)
            .build()
    }

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
        for key in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ] {
            match env.get(key).map(str::trim) {
                None | Some("grpc") => {}
                Some(other) => {
                    return Err(ConfigError::new(
                        key,
                        format!("only grpc is built in, got {other:?}"),
                    ));
                }
            }
        }
        let metric_interval = match env.get("OTEL_METRIC_EXPORT_INTERVAL") {
            None => None,
            Some(ms) => Some(
                ms.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(std::time::Duration::from_millis)
                    .ok_or_else(|| {
                        ConfigError::new(
                            "OTEL_METRIC_EXPORT_INTERVAL",
                            format!("expected milliseconds above 0, got {ms:?}"),
                        )
                    })?,
            ),
        };
        let mut warnings = Vec::new();
        Ok(Self {
            json_logs,
            otlp_endpoint: otlp_endpoint(env, "OTEL_EXPORTER_OTLP_ENDPOINT")?,
            signal_endpoints: SignalEndpoints {
                traces: otlp_endpoint(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")?,
                metrics: otlp_endpoint(env, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")?,
            },
            filter: env.get("RUST_LOG").map(str::to_owned),
            service_name: env
                .get("OTEL_SERVICE_NAME")
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            resource_attributes: resource_attributes(env, &mut warnings),
            sampler: SamplerConfig::from_env(env)?,
            metric_interval,
            warnings,
        })
    }
}

/// An endpoint variable (`KEY`), unless `OTEL_SDK_DISABLED` is `true` (then nothing is
/// exported) or it is empty. Only plain `http://` is built in: an `https://` collector
/// stops the start (exit 64) instead of a service that runs and exports nothing.
fn otlp_endpoint(env: &Env, key: &'static str) -> Result<Option<String>, ConfigError> {
    let disabled = env
        .get("OTEL_SDK_DISABLED")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let Some(endpoint) = env.get(key).map(str::trim).filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    if disabled {
        return Ok(None);
    }
    let uri: http::Uri = endpoint.parse().map_err(|_| {
        ConfigError::new(key, format!("expected http://host:port, got {endpoint:?}"))
    })?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) => Ok(Some(endpoint.to_owned())),
        (Some("https"), _) => Err(ConfigError::new(
            key,
            "TLS to the collector is not built in: use http:// to a collector (or its \
             agent) in the cluster",
        )),
        _ => Err(ConfigError::new(
            key,
            format!("expected http://host:port, got {endpoint:?}"),
        )),
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
        json_logs(std::io::stdout).boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let resource = config.resource(service);
    let (otel, tracer) = match config.traces_endpoint() {
        Some(endpoint) => match otlp_tracer(endpoint, resource, config.sampler) {
            Ok(tracer) => {
                // Spans carry what explains the work, not the runtime's bookkeeping
                // (busy/idle times, threads, source locations, targets).
                let layer = tracing_opentelemetry::layer()
                    .with_tracked_inactivity(false)
                    .with_threads(false)
                    .with_location(false)
                    .with_target(false)
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
    for warning in &config.warnings {
        tracing::warn!("OTEL_RESOURCE_ATTRIBUTES: {warning}");
    }
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

/// JSON log lines, one object each, with the current span's fields: inside the services'
/// spans, their `trace_id` and `span_id` ([`set_parent`] records them), so a log line
/// leads to its trace and back.
fn json_logs<S, W>(writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_writer(writer)
}

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
    sampler: SamplerConfig,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig;
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_sampler(sampler.sampler())
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

/// [`inject_into_http`] for a call between the services: one made in no trace (a bulk
/// add's leads, a polling loop's look-up) carries an unsampled context of its own, so the
/// service it calls does not start a trace for it. Traces start where leads and callers
/// enter, never inside.
pub fn inject_between_services(headers: &mut http::HeaderMap) {
    inject_into_http(headers);
    if !headers.contains_key(TRACEPARENT)
        && let Ok(value) = http::HeaderValue::from_str(&unsampled_traceparent())
    {
        headers.insert(TRACEPARENT, value);
    }
}

/// A `traceparent` of a trace of its own that is not sampled: what it is carried by is
/// exported nowhere, and starts no trace where it arrives (with the `parentbased_`
/// samplers).
pub fn unsampled_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-00", &span[..16])
}

/// The trace context of an incoming HTTP or gRPC request.
pub fn extract_from_http(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HttpHeadersRef(headers))
}

/// Marks `span` as ended in error, with the reason (its `otel.status_*` fields, which the
/// services' spans declare).
pub fn fail(span: &tracing::Span, reason: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", reason);
}

/// Whether `cx` continues a trace (a remote parent was there to extract).
pub fn has_trace(cx: &Context) -> bool {
    use opentelemetry::trace::TraceContextExt;
    cx.span().span_context().is_valid()
}

/// Whether `span` is in a trace that is kept (sampled): a batch made for several leads
/// joins the trace of one that is.
pub fn is_sampled(span: &tracing::Span) -> bool {
    use opentelemetry::trace::TraceContextExt;
    span.context().span().span_context().is_sampled()
}

/// `span`'s W3C `traceparent`, to carry one item's trace through a call made for many;
/// none when it is in no trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut pairs = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut pairs);
    pairs.remove(TRACEPARENT)
}

/// A caller's `traceparent` when it is a well-formed one (at most 55 characters, as
/// version 00 has), else none.
pub fn valid_traceparent(value: &str) -> Option<String> {
    if value.len() > 55 {
        return None;
    }
    let pairs = std::collections::HashMap::from([(TRACEPARENT.to_owned(), value.to_owned())]);
    has_trace(&extract_from_pairs(&pairs)).then(|| value.to_owned())
}

/// The W3C trace context header (and the key of a stored one).
pub const TRACEPARENT: &str = "traceparent";

/// Links `span` to `other` (a batch that serves several traces).
pub fn add_link(span: &tracing::Span, other: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt;
    let context = other.context().span().span_context().clone();
    if context.is_valid() {
        span.add_link(context);
    }
}

/// The span `make` builds (a child of the current one), when the current span is one of
/// the services' own, with its ids recorded for the logs; none outside them, so work
/// outside a request, a message or an event (a polling loop's) starts no trace.
pub fn own_child(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if !inside_own_span() {
        return tracing::Span::none();
    }
    let span = make();
    record_ids(&span);
    span
}

/// Awaits `work` inside `span`, which ends in error with the reason when `work` fails.
pub async fn in_span<T, E, F>(span: tracing::Span, work: F) -> Result<T, E>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    use tracing::Instrument as _;
    let done = work.instrument(span.clone()).await;
    if let Err(err) = &done {
        fail(&span, &err.to_string());
    }
    done
}

/// Whether the current span is one of the services' own (a request, a consumed message, a
/// relayed event): work outside them, such as a polling loop's, starts no trace of its own.
pub fn inside_own_span() -> bool {
    tracing::Span::current()
        .metadata()
        .is_some_and(|meta| is_own_target(meta.target()))
}

fn is_own_target(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    EXPORTED_CRATES.contains(&krate)
}

/// Makes `span` a child of the remote `parent` context (no-op without an OTel layer).
pub fn set_parent(span: &tracing::Span, parent: Context) {
    let _ = span.set_parent(parent);
    record_ids(span);
}

/// Writes the span's trace and span ids into its `trace_id` and `span_id` fields (the
/// services' spans declare them), for the log lines inside it; nothing when no trace is
/// kept (no OpenTelemetry layer).
pub(crate) fn record_ids(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    let context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    if ids.is_valid() {
        span.record("trace_id", ids.trace_id().to_string());
        span.record("span_id", ids.span_id().to_string());
    }
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
    fn only_well_formed_traceparents_are_carried() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(valid_traceparent(good).as_deref(), Some(good));
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
            &format!("{good}-{}", "x".repeat(64)),
        ] {
            assert_eq!(valid_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_the_services_crates_are_their_own() {
        assert!(is_own_target("deal_service::store::deals"));
        assert!(is_own_target("salesplan_platform"));
        assert!(!is_own_target("sqlx::query"));
        assert!(!is_own_target("deal_service_extra::x"));
        assert!(!is_own_target("h2::proto"));
    }

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
    fn the_opentelemetry_variables_are_read_and_checked() {
        let config = TelemetryConfig::from_env(&Env::from_pairs([
            ("OTEL_SERVICE_NAME", "sp-eu"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.version=1.2.3, deployment.environment=prod,k8s.pod.name=a%2Cb",
            ),
            ("OTEL_TRACES_SAMPLER", "ParentBased_TraceIdRatio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ]))
        .unwrap();
        assert_eq!(
            config.otlp_endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(config.service_name.as_deref(), Some("sp-eu"));
        assert_eq!(
            config.resource_attributes,
            [
                ("service.version".to_owned(), "1.2.3".to_owned()),
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("k8s.pod.name".to_owned(), "a,b".to_owned()),
            ]
        );
        assert_eq!(config.sampler, SamplerConfig::ParentBasedTraceIdRatio(0.25));
        assert_eq!(
            config.metric_interval,
            Some(std::time::Duration::from_millis(500))
        );
        let defaults = TelemetryConfig::from_env(&Env::from_pairs::<&str, &str>([])).unwrap();
        assert_eq!(defaults.sampler, SamplerConfig::ParentBasedAlwaysOn);
        assert_eq!(defaults.otlp_endpoint, None);
        // Each sampler by its name.
        for (name, sampler) in [
            ("always_on", SamplerConfig::AlwaysOn),
            ("ALWAYS_OFF", SamplerConfig::AlwaysOff),
            ("traceidratio", SamplerConfig::TraceIdRatio(1.0)),
            ("parentbased_always_on", SamplerConfig::ParentBasedAlwaysOn),
            (
                "parentbased_always_off",
                SamplerConfig::ParentBasedAlwaysOff,
            ),
        ] {
            let config =
                TelemetryConfig::from_env(&Env::from_pairs([("OTEL_TRACES_SAMPLER", name)]))
                    .unwrap();
            assert_eq!(config.sampler, sampler, "{name}");
        }
        // Malformed resource attributes are discarded whole and reported, not fatal.
        let discarded = TelemetryConfig::from_env(&Env::from_pairs([(
            "OTEL_RESOURCE_ATTRIBUTES",
            "a=1,novalue",
        )]))
        .unwrap();
        assert!(discarded.resource_attributes.is_empty());
        assert_eq!(discarded.warnings.len(), 1, "{:?}", discarded.warnings);
        // A signal's own endpoint wins over the general one, for that signal only.
        let split = TelemetryConfig::from_env(&Env::from_pairs([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ]))
        .unwrap();
        assert_eq!(split.traces_endpoint(), Some("http://traces:4317"));
        assert_eq!(split.metrics_endpoint(), Some("http://collector:4317"));
        let metrics_only = TelemetryConfig::from_env(&Env::from_pairs([(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "http://metrics:4317",
        )]))
        .unwrap();
        assert_eq!(metrics_only.traces_endpoint(), None);
        assert_eq!(metrics_only.metrics_endpoint(), Some("http://metrics:4317"));
        // The SDK switched off: nothing exported, whatever the endpoint.
        let disabled = TelemetryConfig::from_env(&Env::from_pairs([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]))
        .unwrap();
        assert_eq!(disabled.traces_endpoint(), None);
        assert_eq!(disabled.metrics_endpoint(), None);
        for (key, value) in [
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "not-a-url"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
        ] {
            let mut pairs = vec![(key, value)];
            if key == "OTEL_TRACES_SAMPLER_ARG" {
                pairs.push(("OTEL_TRACES_SAMPLER", "traceidratio"));
            }
            let err = TelemetryConfig::from_env(&Env::from_pairs(pairs)).unwrap_err();
            assert_eq!(err.key, key);
        }
    }

    #[test]
    fn the_service_name_comes_from_the_variable_then_the_attributes_then_the_service() {
        let name = |config: &TelemetryConfig| {
            config
                .resource("deal-service")
                .get(&opentelemetry::Key::new("service.name"))
                .map(|v| v.to_string())
        };
        let mut config = TelemetryConfig::default();
        assert_eq!(name(&config).as_deref(), Some("deal-service"));
        config.resource_attributes = vec![("service.name".into(), "from-attributes".into())];
        assert_eq!(name(&config).as_deref(), Some("from-attributes"));
        config.service_name = Some("from-variable".into());
        assert_eq!(name(&config).as_deref(), Some("from-variable"));
    }

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    #[test]
    fn json_log_lines_inside_a_services_span_carry_its_trace_and_span_ids() {
        let tracer = SdkTracerProvider::builder().build();
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry()
            .with(json_logs(lines.clone()))
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer.tracer("test"))
                    .with_filter(exported()),
            );
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span_id = tracing::subscriber::with_default(subscriber, || {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("traceparent", parent);
            // As the services make theirs: a consumed message's span.
            let delivery = crate::bus::Delivery {
                subject: "salesplan.deals.v1.acme.created".into(),
                payload: Default::default(),
                headers: Some(headers),
                delivered: 1,
                stream_sequence: 1,
            };
            let span = delivery.span("reporting.apply");
            let _entered = span.enter();
            tracing::info!("applied");
            use opentelemetry::trace::TraceContextExt as _;
            span.context().span().span_context().span_id().to_string()
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value =
            serde_json::from_str(text.lines().find(|l| l.contains("applied")).unwrap()).unwrap();
        assert_eq!(
            line["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
            "{line}"
        );
        assert_eq!(line["span"]["span_id"], span_id.as_str(), "{line}");
    }

    #[test]
    fn log_format_is_validated() {
        let env = Env::from_pairs([("SALESPLAN_LOG_FORMAT", "xml")]);
        assert!(TelemetryConfig::from_env(&env).is_err());
    }
}

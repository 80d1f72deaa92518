//! Metrics: one OpenTelemetry meter provider per service, read on demand for the
//! Prometheus scrape endpoint (`/metrics` on `SALESPLAN_METRICS_ADDR`) and pushed over OTLP
//! when configured. No process-global provider: what measures is handed its service's.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Weak},
    time::Duration,
};

use opentelemetry::KeyValue;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, MeterProviderBuilder, Pipeline, SdkMeterProvider,
        Temporality,
        data::{AggregatedMetrics, MetricData, ResourceMetrics},
        reader::MetricReader,
    },
};

/// The reader behind `/metrics`, shared with the provider that owns it.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// One service's metrics: its own meter provider, read on demand for `/metrics` and pushed
/// over OTLP when configured. Made in the service's `start` and handed to what measures,
/// so several services in one process (the tests) each show only their own.
#[derive(Clone)]
pub struct Metrics {
    provider: SdkMeterProvider,
    reader: Arc<ManualReader>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// The metrics of `service`, also exported over OTLP/gRPC when the telemetry
    /// configuration names an endpoint (an exporter that cannot be built is logged and left
    /// out: metrics stay scrapable), as its resource says, every metric interval.
    pub fn new(service: &'static str, telemetry: &crate::telemetry::TelemetryConfig) -> Self {
        let reader = Arc::new(ManualReader::builder().build());
        let mut builder: MeterProviderBuilder = SdkMeterProvider::builder()
            .with_resource(telemetry.resource(service))
            .with_reader(SharedReader(reader.clone()));
        if let Some(endpoint) = telemetry.metrics_endpoint() {
            use opentelemetry_otlp::WithExportConfig;
            match opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
            {
                Ok(exporter) => {
                    let mut periodic =
                        opentelemetry_sdk::metrics::PeriodicReader::builder(exporter);
                    if let Some(interval) = telemetry.metric_interval {
                        periodic = periodic.with_interval(interval);
                    }
                    builder = builder.with_reader(periodic.build());
                }
                Err(err) => tracing::warn!(error = %err, "OTLP metric export disabled"),
            }
        }
        Self {
            provider: builder.build(),
            reader,
        }
    }

    /// For a part tested on its own: metrics nobody reads.
    pub fn unread() -> Self {
        Self::new("test", &crate::telemetry::TelemetryConfig::default())
    }

    /// The meter of one part of the service (`scope`: "grpc", "consumer", …).
    pub fn meter(&self, scope: &'static str) -> opentelemetry::metrics::Meter {
        use opentelemetry::metrics::MeterProvider as _;
        self.provider.meter(scope)
    }

    /// Flushes the OTLP exporter (if any) and stops; at the end of the service.
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::debug!(error = %err, "metric provider shutdown");
        }
    }

    /// Everything measured so far, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut metrics = ResourceMetrics::default();
        if let Err(err) = self.reader.collect(&mut metrics) {
            return format!("# collection failed: {err}\n");
        }
        let mut out = String::new();
        for scope in metrics.scope_metrics() {
            for metric in scope.metrics() {
                let name = sanitize(metric.name());
                match metric.data() {
                    AggregatedMetrics::U64(data) => {
                        write_data(&mut out, &name, metric.description(), data, |v| v as f64)
                    }
                    AggregatedMetrics::I64(data) => {
                        write_data(&mut out, &name, metric.description(), data, |v| v as f64)
                    }
                    AggregatedMetrics::F64(data) => {
                        write_data(&mut out, &name, metric.description(), data, |v| v)
                    }
                }
            }
        }
        out
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn labels<'a>(
    attributes: impl Iterator<Item = &'a KeyValue>,
    extra: Option<(&str, String)>,
) -> String {
    let mut parts: Vec<String> = attributes
        .map(|kv| {
            let value = kv
                .value
                .to_string()
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{}=\"{value}\"", sanitize(kv.key.as_str()))
        })
        .collect();
    if let Some((key, value)) = extra {
        parts.push(format!("{key}=\"{value}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn write_data<T: Copy>(
    out: &mut String,
    name: &str,
    help: &str,
    data: &MetricData<T>,
    f: impl Fn(T) -> f64,
) {
    if !help.is_empty() {
        let _ = writeln!(out, "# HELP {name} {help}");
    }
    match data {
        MetricData::Sum(sum) if sum.is_monotonic() => {
            let _ = writeln!(out, "# TYPE {name}_total counter");
            for p in sum.data_points() {
                let _ = writeln!(
                    out,
                    "{name}_total{} {}",
                    labels(p.attributes(), None),
                    f(p.value())
                );
            }
        }
        MetricData::Sum(sum) => {
            let _ = writeln!(out, "# TYPE {name} gauge");
            for p in sum.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(p.attributes(), None),
                    f(p.value())
                );
            }
        }
        MetricData::Gauge(gauge) => {
            let _ = writeln!(out, "# TYPE {name} gauge");
            for p in gauge.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(p.attributes(), None),
                    f(p.value())
                );
            }
        }
        MetricData::Histogram(histogram) => {
            let _ = writeln!(out, "# TYPE {name} histogram");
            for p in histogram.data_points() {
                let mut cumulative = 0;
                for (bound, count) in p.bounds().zip(p.bucket_counts()) {
                    cumulative += count;
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {cumulative}",
                        labels(p.attributes(), Some(("le", bound.to_string())))
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    labels(p.attributes(), Some(("le", "+Inf".into()))),
                    p.count()
                );
                let _ = writeln!(
                    out,
                    "{name}_sum{} {}",
                    labels(p.attributes(), None),
                    f(p.sum())
                );
                let _ = writeln!(
                    out,
                    "{name}_count{} {}",
                    labels(p.attributes(), None),
                    p.count()
                );
            }
        }
        MetricData::ExponentialHistogram(_) => {}
    }
}

/// Serves `GET /metrics` of `metrics` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            (
                [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                metrics.render(),
            )
        }),
    );
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_prometheus_text() {
        let metrics = Metrics::unread();
        let meter = metrics.meter("test");
        let counter = meter.u64_counter("salesplan.test.things").build();
        counter.add(3, &[KeyValue::new("kind", "a")]);
        let histogram = meter.f64_histogram("salesplan.test.seconds").build();
        histogram.record(0.2, &[]);
        let text = metrics.render();
        assert!(
            text.contains("salesplan_test_things_total{kind=\"a\"} 3"),
            "{text}"
        );
        assert!(text.contains("salesplan_test_seconds_count 1"), "{text}");
        assert!(
            text.contains("salesplan_test_seconds_bucket{le=\"+Inf\"} 1"),
            "{text}"
        );
    }
}

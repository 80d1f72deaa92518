//! Metrics: one OpenTelemetry meter provider per process, read on demand for the Prometheus
//! scrape endpoint (`/metrics` on `SALESPLAN_METRICS_ADDR`) and pushed over OTLP when
//! configured.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use opentelemetry::KeyValue;
use opentelemetry_sdk::{
    Resource,
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

struct Installed {
    provider: SdkMeterProvider,
    reader: Arc<ManualReader>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Installs the process's meter provider (first call wins), with `otlp` as an extra
/// periodic exporter when given. Instruments made before it are no-ops, so every service
/// gets its meters through [`crate::telemetry::meter`], which installs first.
pub fn install(
    service: &'static str,
    otlp: Option<opentelemetry_otlp::MetricExporter>,
) -> SdkMeterProvider {
    INSTALLED
        .get_or_init(|| {
            let reader = Arc::new(ManualReader::builder().build());
            let mut builder: MeterProviderBuilder = SdkMeterProvider::builder()
                .with_resource(Resource::builder().with_service_name(service).build())
                .with_reader(SharedReader(reader.clone()));
            if let Some(exporter) = otlp {
                builder = builder.with_periodic_exporter(exporter);
            }
            let provider = builder.build();
            opentelemetry::global::set_meter_provider(provider.clone());
            Installed { provider, reader }
        })
        .provider
        .clone()
}

/// Everything measured so far, in the Prometheus text format.
pub fn render() -> String {
    install("salesplan", None);
    let Some(installed) = INSTALLED.get() else {
        return String::new();
    };
    let mut metrics = ResourceMetrics::default();
    if let Err(err) = installed.reader.collect(&mut metrics) {
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

/// Serves `GET /metrics` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                render(),
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
        let meter = crate::telemetry::meter("test");
        let counter = meter.u64_counter("salesplan.test.things").build();
        counter.add(3, &[KeyValue::new("kind", "a")]);
        let histogram = meter.f64_histogram("salesplan.test.seconds").build();
        histogram.record(0.2, &[]);
        let text = render();
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

//! The gRPC server every service runs (health, reflection, gRPC-Web for browsers, a span
//! per request that joins the caller's trace, graceful drain) and helpers for outgoing
//! calls.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, service::Routes, transport::Server};
use tonic_health::ServingStatus;

/// Binds the listen address; port 0 picks a free port (tests), `local_addr` tells which.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `routes` plus health and reflection until `shutdown` is cancelled, then reports
/// NOT_SERVING, waits `drain_delay` (so load balancers stop sending), and finishes the
/// requests in flight. A call is answered within `timeout` (or the client's shorter
/// `grpc-timeout`), or cut off.
/// How a service's gRPC server runs (from [`crate::service::ServiceConfig`]).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Between NOT_SERVING and refusing new calls.
    pub drain_delay: Duration,
    /// The longest a call may take (a client's shorter deadline wins).
    pub timeout: Duration,
    /// Serve the reflection service.
    pub reflection: bool,
    /// Calls at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams: u32,
    /// The web origins allowed to call from a browser (CORS); none: no page of another
    /// origin may.
    pub cors_origins: Vec<http::HeaderValue>,
}

/// Parses `SALESPLAN_CORS_ORIGINS` (`key`): comma-separated origins, each a scheme, a host
/// and an optional port, nothing else. `*` is refused: a browser page the operator did not
/// name must not drive the API with a token it obtained.
pub fn cors_origins(
    key: &str,
    value: &str,
) -> Result<Vec<http::HeaderValue>, crate::config::ConfigError> {
    let bad = |origin: &str, why: &str| {
        crate::config::ConfigError::new(key, format!("{origin:?} is not an origin: {why}"))
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|origin| {
            let (scheme, rest) = origin
                .split_once("://")
                .ok_or_else(|| bad(origin, "write it as https://host[:port]"))?;
            if scheme != "https" && scheme != "http" {
                return Err(bad(
                    origin,
                    "the scheme is http or https, in lower case (as browsers send it)",
                ));
            }
            if rest.is_empty() || rest.contains(['/', '*', '?', '#', '@', ' ']) {
                return Err(bad(
                    origin,
                    "a host and an optional port, no path or wildcard",
                ));
            }
            if rest.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(bad(origin, "in lower case, as browsers send it"));
            }
            let (host, port) = match rest.rsplit_once(':') {
                // An IPv6 address without a port ends in `]`.
                Some((host, port)) if !port.ends_with(']') => (host, Some(port)),
                _ => (rest, None),
            };
            // As a browser writes its Origin: digits without a leading zero, not the
            // scheme's default port (which it leaves out); an IPv6 host in brackets.
            let default_port = if scheme == "https" { "443" } else { "80" };
            let port_ok = port.is_none_or(|p| {
                p.bytes().all(|b| b.is_ascii_digit())
                    && !p.starts_with('0')
                    && p.parse::<u16>().is_ok()
                    && p != default_port
            });
            let host_ok = if host.starts_with('[') {
                host.ends_with(']') && host.len() > 2
            } else {
                !host.is_empty() && !host.contains([':', '[', ']'])
            };
            if !host_ok || !port_ok {
                return Err(bad(
                    origin,
                    "a host and a port from 1 to 65535 as a browser writes it (no leading \
                     zero; the scheme's default port left out)",
                ));
            }
            http::HeaderValue::from_str(origin).map_err(|_| bad(origin, "not a header value"))
        })
        .collect()
}

/// The request headers a gRPC-Web page may send, and the response headers it may read.
const CORS_REQUEST_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "grpc-timeout",
    "traceparent",
    "tracestate",
    "x-grpc-web",
    "x-user-agent",
];
const CORS_RESPONSE_HEADERS: [&str; 4] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    crate::consistency::HEADER,
];

/// Cross-origin calls from `origins` (none: the layer answers no preflight and adds no
/// header, so a browser refuses every cross-origin call).
fn cors(origins: &[http::HeaderValue]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let layer = CorsLayer::new();
    if origins.is_empty() {
        return layer;
    }
    layer
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([http::Method::POST])
        .allow_headers(CORS_REQUEST_HEADERS.map(http::HeaderName::from_static))
        .expose_headers(CORS_RESPONSE_HEADERS.map(http::HeaderName::from_static))
        .max_age(Duration::from_secs(600))
}

pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    verifier: std::sync::Arc<crate::auth::TokenVerifier>,
    service_names: &[&str],
    shutdown: CancellationToken,
    options: ServerOptions,
    metrics: &crate::metrics::Metrics,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    for name in service_names {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let mut routes = routes.add_service(health);
    if options.reflection {
        routes = routes.add_service(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(salesplan_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .expect("the compiled descriptor sets are valid"),
        );
    }
    let drain_delay = options.drain_delay;
    let names: Vec<String> = service_names.iter().map(|s| (*s).to_owned()).collect();
    let signal = async move {
        shutdown.cancelled().await;
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for name in &names {
            reporter
                .set_service_status(name.as_str(), ServingStatus::NotServing)
                .await;
        }
        tokio::time::sleep(drain_delay).await;
    };
    Server::builder()
        .timeout(options.timeout)
        .max_concurrent_streams(Some(options.max_streams))
        // gRPC-Web arrives over HTTP/1.1 too (browsers without HTTP/2 to this port).
        .accept_http1(true)
        .trace_fn(move |request| request_span(request, &verifier))
        .layer(cors(&options.cors_origins))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(MetricsLayer::new(metrics))
        .layer(crate::consistency::ConsistencyLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming(listener), signal)
        .await
}

/// Accepted connections with Nagle's algorithm off: without it, a small response waits for
/// the peer's delayed ACK (~40 ms) and every call pays it.
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// The server span of a call, named by its method, with the RPC semantic conventions;
/// none for a call that is not traced. Health checks and reflection are not: probes every
/// few seconds would make a service at rest export a trace for each. Nor is a call of a
/// method no service has, or one without a valid token: an anonymous caller can neither
/// name spans, nor choose a trace, nor have one sampled (the token is checked again, the
/// check the call itself makes after this).
fn request_span(
    request: &http::Request<()>,
    verifier: &crate::auth::TokenVerifier,
) -> tracing::Span {
    let path = request.uri().path();
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return tracing::Span::none();
    };
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !KNOWN_METHODS.contains(path) || verifier.verify_header(authorization).is_err() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        salesplan.account_id = tracing::field::Empty,
        salesplan.plan_id = tracing::field::Empty,
        salesplan.intake_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    crate::telemetry::set_parent(
        &span,
        crate::telemetry::extract_from_http(request.headers()),
    );
    span
}

/// An outgoing request with a bearer token and the current trace context.
pub fn outgoing<T>(message: T, bearer: &str) -> Request<T> {
    with_headers(message, bearer, crate::telemetry::inject_into_http)
}

/// [`outgoing`] from one service to another: never the start of a trace downstream (see
/// [`crate::telemetry::inject_between_services`]).
pub fn between_services<T>(message: T, bearer: &str) -> Request<T> {
    with_headers(message, bearer, crate::telemetry::inject_between_services)
}

fn with_headers<T>(message: T, bearer: &str, inject: fn(&mut http::HeaderMap)) -> Request<T> {
    let mut request = Request::new(message);
    let mut headers = http::HeaderMap::new();
    inject(&mut headers);
    let mut metadata = tonic::metadata::MetadataMap::from_headers(headers);
    if let Ok(value) = format!("Bearer {bearer}").parse() {
        metadata.insert("authorization", value);
    }
    *request.metadata_mut() = metadata;
    request
}

/// A channel that connects on first use, so services start in any order.
pub fn lazy_channel(url: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect_lazy())
}

/// The status a response's headers carry (where tonic puts it for errors: trailers-only
/// responses); none there is OK (a streamed answer's status comes in its trailers).
fn answered_status(headers: &http::HeaderMap) -> tonic::Status {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
        .unwrap_or(tonic::Code::Ok);
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| crate::telemetry::percent_decode(m).unwrap_or_else(|| m.to_owned()))
        .unwrap_or_default();
    tonic::Status::new(code, message)
}

/// Writes how a call ended into its span: `rpc.grpc.status_code`, and for any status but
/// OK an error status with the message. A refused call (a lead for an unknown plan, an
/// invalid field) is an error here, unlike the HTTP conventions for 4xx: a refused lead is
/// what an operator looks for; `rpc.grpc.status_code` tells refusals from failures.
pub fn record_status(span: &tracing::Span, status: &tonic::Status) {
    span.record("rpc.grpc.status_code", status.code() as i64);
    if status.code() != tonic::Code::Ok {
        let reason = format!("{:?}: {}", status.code(), status.message());
        crate::telemetry::fail(span, &reason);
    }
}

/// Writes how a call made in a [`client_span`] ended.
pub fn record_answer<T>(span: &tracing::Span, answer: &Result<T, tonic::Status>) {
    match answer {
        Ok(_) => record_status(span, &tonic::Status::ok("")),
        Err(status) => record_status(span, status),
    }
}

/// A call to `service`/`method` in its [`client_span`] (child of the current span): the
/// request is built inside it (so it carries the trace), `send` makes the call, and how it
/// ended is recorded.
pub async fn call<Q, A, Fut>(
    service: &'static str,
    method: &'static str,
    request: impl FnOnce() -> Request<Q>,
    send: impl FnOnce(Request<Q>) -> Fut,
) -> Result<tonic::Response<A>, tonic::Status>
where
    Fut: std::future::Future<Output = Result<tonic::Response<A>, tonic::Status>>,
{
    use tracing::Instrument as _;
    let span = client_span(None, service, method);
    let request = span.in_scope(request);
    let answer = send(request).instrument(span.clone()).await;
    record_answer(&span, &answer);
    answer
}

/// The client span of a call to `service`/`method` (`salesplan.v1.PlanService`, `GetPlan`),
/// child of `parent` (or of the current span when it is one of the services' own; none
/// outside them, so a polling loop's calls start no trace). Build the request inside it
/// (`span.in_scope(|| outgoing(…))`) so the call carries it, and [`record_status`] after.
pub fn client_span(
    parent: Option<&tracing::Span>,
    service: &'static str,
    method: &'static str,
) -> tracing::Span {
    let parent = match parent {
        Some(parent) => parent.clone(),
        None if crate::telemetry::inside_own_span() => tracing::Span::current(),
        None => return tracing::Span::none(),
    };
    let span = tracing::info_span!(
        parent: &parent,
        "grpc.client",
        otel.name = format!("{service}/{method}"),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    crate::telemetry::record_ids(&span);
    span
}

/// Counts gRPC requests by method and status code, and times them. The code is read from
/// the response headers, where tonic puts it for errors (trailers-only responses); a
/// response without it counts as OK.
#[derive(Clone)]
pub struct MetricsLayer {
    requests: opentelemetry::metrics::Counter<u64>,
    seconds: opentelemetry::metrics::Histogram<f64>,
    /// The paths counted by name; any other (a scanner's, a typo) is counted as `unknown`,
    /// so the series stay as many as the methods served.
    known: std::sync::Arc<std::collections::HashSet<String>>,
}

/// The health and reflection methods every server answers, beside salesplan's own.
const PLATFORM_METHODS: [&str; 3] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
];

/// Salesplan's own methods, by path (`/salesplan.v1.DealService/CreateDeals`).
static KNOWN_METHODS: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| salesplan_proto::method_paths().into_iter().collect());

impl MetricsLayer {
    pub fn new(metrics: &crate::metrics::Metrics) -> Self {
        let meter = metrics.meter("grpc");
        let known = KNOWN_METHODS
            .iter()
            .cloned()
            .chain(PLATFORM_METHODS.map(str::to_owned))
            .collect();
        Self {
            known: std::sync::Arc::new(known),
            requests: meter
                .u64_counter("salesplan.grpc.requests")
                .with_description("gRPC requests by method and status code")
                .build(),
            seconds: meter
                .f64_histogram("salesplan.grpc.request_seconds")
                .with_unit("s")
                .build(),
        }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    layer: MetricsLayer,
}

impl<S, B, R> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = std::time::Instant::now();
        let layer = self.layer.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(r) => {
                    let status = answered_status(r.headers());
                    // Polled inside the call's span: it says how the call ended.
                    record_status(&tracing::Span::current(), &status);
                    format!("{:?}", status.code())
                }
                Err(_) => "Transport".into(),
            };
            let method = if layer.known.contains(&method) {
                method
            } else {
                "unknown".to_owned()
            };
            let attrs = [
                opentelemetry::KeyValue::new("method", method),
                opentelemetry::KeyValue::new("code", code),
            ];
            layer.requests.add(1, &attrs);
            layer
                .seconds
                .record(started.elapsed().as_secs_f64(), &attrs[..1]);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::{cors_origins, request_span};
    use crate::{Actor, Permission, auth::TokenIssuer, auth::TokenVerifier, config::AuthConfig};

    #[test]
    fn cors_origins_are_named_one_by_one_and_nothing_else() {
        let origins = cors_origins(
            "K",
            " https://crm.example.com, http://localhost:3000 ,http://[::1]",
        )
        .expect("three origins");
        assert_eq!(
            origins,
            [
                "https://crm.example.com",
                "http://localhost:3000",
                "http://[::1]"
            ]
        );
        assert!(cors_origins("K", "").expect("none").is_empty());
        for bad in [
            "*",
            "https://*.example.com",
            "crm.example.com",
            "ftp://crm.example.com",
            "https://crm.example.com/",
            "https://crm.example.com/app",
            "https://user@crm.example.com",
            "https://",
            "HTTPS://crm.example.com",
            "https://CRM.example.com",
            "https://crm.example.com:99999",
            "https://crm.example.com:0",
            "https://crm.example.com:",
            "https://:443",
            "https://crm.example.com:443",
            "http://crm.example.com:80",
            "https://crm.example.com:080",
            "https://crm.example.com:+80",
            "https://[::1",
            "https://a:b:80",
        ] {
            let err = cors_origins("K", bad).expect_err(bad);
            assert!(err.to_string().contains('K'), "{err}");
        }
    }

    fn call(path: &str, bearer: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::builder().uri(path);
        if let Some(bearer) = bearer {
            request = request.header("authorization", format!("Bearer {bearer}"));
        }
        request.body(()).expect("a request")
    }

    /// Only an authenticated call of a method the services have is traced: an anonymous
    /// caller names no span and chooses no trace.
    #[test]
    fn only_authenticated_calls_of_known_methods_are_traced() {
        let verifier = TokenVerifier::from_config(&AuthConfig::dev()).expect("a verifier");
        let token = TokenIssuer::hs256(AuthConfig::DEV_SECRET.as_bytes())
            .issue(
                &Actor::new("acme", "u", [Permission::DealsRead]),
                std::time::Duration::from_secs(60),
            )
            .expect("a token");
        let subscriber = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer());
        tracing::subscriber::with_default(subscriber, || {
            let known = "/salesplan.v1.PlanService/ListPlans";
            assert!(!request_span(&call(known, Some(&token)), &verifier).is_none());
            assert!(request_span(&call(known, None), &verifier).is_none());
            assert!(request_span(&call(known, Some("garbage")), &verifier).is_none());
            for unknown in ["/attacker.Svc/Zelda", "/grpc.health.v1.Health/Check", "/"] {
                assert!(
                    request_span(&call(unknown, Some(&token)), &verifier).is_none(),
                    "{unknown}"
                );
            }
        });
    }
}

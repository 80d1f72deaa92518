//! The gRPC server every service runs (health, reflection, a span per request that joins
//! the caller's trace, graceful drain) and helpers for outgoing calls.

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
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    service_names: &[&str],
    shutdown: CancellationToken,
    drain_delay: Duration,
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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(salesplan_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the compiled descriptor sets are valid");
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
        .trace_fn(request_span)
        .add_routes(routes.add_service(health).add_service(reflection))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await
}

fn request_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let span = tracing::info_span!("grpc", otel.name = %path, rpc.method = %path);
    crate::telemetry::set_parent(
        &span,
        crate::telemetry::extract_from_http(request.headers()),
    );
    span
}

/// An outgoing request with a bearer token and the current trace context.
pub fn outgoing<T>(message: T, bearer: &str) -> Request<T> {
    let mut request = Request::new(message);
    let mut headers = http::HeaderMap::new();
    crate::telemetry::inject_into_http(&mut headers);
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

//! The webhook's HTTP server: hyper with a deadline on a request's headers, so a client
//! that connects and sends nothing (or a byte a minute) cannot hold a connection. The
//! body's deadline is the handler's ([`super::webhook`]): it is read after the token is
//! checked.

use std::time::Duration;

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the connection's first byte (or the previous response) to the end of the
    /// request's headers; past it the connection is closed.
    pub headers: Duration,
    /// From the handler's start to the end of the body; past it, 408.
    pub body: Duration,
}

impl Timeouts {
    pub const DEFAULT: Self = Self {
        headers: Duration::from_secs(10),
        body: Duration::from_secs(10),
    };
}

/// Serves `router` until `shutdown`, then lets the requests in progress finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.headers);
    let graceful = GracefulShutdown::new();
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    // Out of descriptors, a reset before accept: the next one may work.
                    tracing::debug!(error = %err, "webhook accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Nagle off, as on the gRPC side: no delayed-ACK wait on each answer.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "webhook connection ended");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

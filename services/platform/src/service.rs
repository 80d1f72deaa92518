//! What every service process has in common: its base configuration and the handle of a
//! started service (addresses, and the task that ends when it has drained).

use std::{net::SocketAddr, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{AuthConfig, ConfigError, Env, NatsConfig, shutdown_grace},
    telemetry::TelemetryConfig,
};

/// The settings every service reads, each from its own variables:
/// `SALESPLAN_GRPC_ADDR`, `NATS_URL`, the JWT keys, telemetry,
/// `SALESPLAN_SHUTDOWN_GRACE_MS` and `SALESPLAN_DRAIN_DELAY_MS`. The database is not
/// among them: a service that keeps state reads its own (`DatabaseConfig`), and one that
/// keeps none (the listener) takes no `DATABASE_URL`.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub grpc_addr: SocketAddr,
    pub nats: NatsConfig,
    pub auth: AuthConfig,
    pub telemetry: TelemetryConfig,
    /// Longest time a stopping service may take to drain before it is cut off.
    pub shutdown_grace: Duration,
    /// Time between reporting NOT_SERVING and refusing new requests (load balancers and
    /// Kubernetes readiness need a moment to stop sending).
    pub drain_delay: Duration,
    /// `SALESPLAN_METRICS_ADDR`: where `/metrics` (Prometheus) is served; unset: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// `SALESPLAN_GRPC_TIMEOUT_MS`: the longest a unary call (or the start of a stream) may
    /// take; a client's shorter `grpc-timeout` wins.
    pub grpc_timeout: Duration,
    /// `SALESPLAN_GRPC_REFLECTION` (default on): the reflection service, which lists every
    /// method to anyone who asks; the prod overlay turns it off.
    pub grpc_reflection: bool,
    /// `SALESPLAN_GRPC_MAX_STREAMS` (default 200): calls at once on one HTTP/2 connection,
    /// so one client cannot hold an unbounded number open.
    pub grpc_max_streams: u32,
    /// `SALESPLAN_CORS_ORIGINS` (default none): the web origins whose pages may call the
    /// gRPC-Web API from a browser, comma-separated (`https://crm.example.com`).
    pub cors_origins: Vec<http::HeaderValue>,
}

/// A call nobody waits for after this long (a client's own deadline may be shorter).
pub const DEFAULT_GRPC_TIMEOUT: Duration = Duration::from_secs(30);

impl ServiceConfig {
    pub fn from_env(env: &Env, default_grpc_addr: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            grpc_addr: env.addr("SALESPLAN_GRPC_ADDR", default_grpc_addr)?,
            nats: NatsConfig::from_env(env)?,
            auth: AuthConfig::from_env(env)?,
            telemetry: TelemetryConfig::from_env(env)?,
            shutdown_grace: shutdown_grace(env)?,
            drain_delay: env.millis("SALESPLAN_DRAIN_DELAY_MS", Duration::ZERO)?,
            metrics_addr: env
                .get("SALESPLAN_METRICS_ADDR")
                .map(|_| env.addr("SALESPLAN_METRICS_ADDR", ""))
                .transpose()?,
            grpc_timeout: match env.millis("SALESPLAN_GRPC_TIMEOUT_MS", DEFAULT_GRPC_TIMEOUT)? {
                zero if zero.is_zero() => {
                    return Err(ConfigError::new(
                        "SALESPLAN_GRPC_TIMEOUT_MS",
                        "must be at least 1",
                    ));
                }
                timeout => timeout,
            },
            grpc_reflection: env.flag("SALESPLAN_GRPC_REFLECTION", true)?,
            grpc_max_streams: match env.parse("SALESPLAN_GRPC_MAX_STREAMS", 200u32)? {
                0 => {
                    return Err(ConfigError::new(
                        "SALESPLAN_GRPC_MAX_STREAMS",
                        "must be at least 1",
                    ));
                }
                n => n,
            },
            cors_origins: crate::grpc::cors_origins(
                "SALESPLAN_CORS_ORIGINS",
                env.get("SALESPLAN_CORS_ORIGINS").unwrap_or_default(),
            )?,
        })
    }

    /// For tests: everything local, gRPC on a free port.
    pub fn local(nats_url: &str) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            nats: NatsConfig::local(nats_url),
            auth: AuthConfig::dev(),
            telemetry: TelemetryConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            grpc_timeout: DEFAULT_GRPC_TIMEOUT,
            grpc_reflection: true,
            grpc_max_streams: 200,
            cors_origins: Vec::new(),
        }
    }
}

/// A started service.
pub struct Running {
    pub grpc_addr: SocketAddr,
    /// The HTTP listener, for services that have one.
    pub http_addr: Option<SocketAddr>,
    /// The Prometheus endpoint, when configured.
    pub metrics_addr: Option<SocketAddr>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn new(
        grpc_addr: SocketAddr,
        http_addr: Option<SocketAddr>,
        task: JoinHandle<anyhow::Result<()>>,
    ) -> Self {
        Self {
            grpc_addr,
            http_addr,
            metrics_addr: None,
            task,
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Waits until the service stops by itself (after its shutdown token is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }

    /// Waits for `shutdown`, then gives the service `grace` to drain before cutting it off.
    pub async fn run_until(
        self,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let mut task = self.task;
        tokio::select! {
            result = &mut task => return result?,
            _ = shutdown.cancelled() => {}
        }
        match tokio::time::timeout(grace, &mut task).await {
            Ok(result) => result?,
            Err(_) => {
                task.abort();
                anyhow::bail!("did not drain within {grace:?}, stopped")
            }
        }
    }
}

/// A service's configuration, and what the process can do with it.
pub trait Service: Sized + Send + 'static {
    const NAME: &'static str;

    fn from_env(env: &Env) -> Result<Self, ConfigError>;

    fn common(&self) -> &ServiceConfig;

    /// Starts serving; the returned task ends once `shutdown` is cancelled and the service
    /// has drained.
    fn start(
        self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<Running>> + Send;

    /// The service's own schema, where it is and its migrations; `None` for a service
    /// that keeps nothing in PostgreSQL.
    fn store(&self) -> Option<crate::db::Schema<'_>>;

    /// Applies the service's migrations (a Kubernetes Job runs this before an upgrade).
    fn migrate(&self) -> impl std::future::Future<Output = anyhow::Result<()>> + Send {
        let store = self
            .store()
            .map(|s| (s.database.clone(), s.name, s.migrator));
        async move {
            if let Some((database, schema, migrator)) = store {
                crate::db::migrate(&database, schema, migrator).await?;
            }
            Ok(())
        }
    }
}

/// The commands every service binary takes.
#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply the database migrations and exit (a Kubernetes Job runs this before an
    /// upgrade).
    Migrate,
}

/// A salesplan service: configured by its environment (README.md, "Configuration").
#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// The command line parsed by `P`, named after the service: `--help` prints the usage
/// and exits 0; a command line that is not one exits 64 (EX_USAGE) with the usage.
pub fn parse_args<P: clap::Parser>(name: &'static str) -> Result<P, std::process::ExitCode> {
    let matches = P::command().name(name).try_get_matches();
    match matches.and_then(|m| P::from_arg_matches(&m)) {
        Ok(parsed) => Ok(parsed),
        Err(err) if !err.use_stderr() => {
            let _ = err.print();
            Err(std::process::ExitCode::SUCCESS)
        }
        Err(err) => {
            let _ = err.print();
            Err(std::process::ExitCode::from(
                crate::config::EXIT_INVALID_CONFIG as u8,
            ))
        }
    }
}

/// The whole `main` of a service binary: `serve` (default) or `migrate`.
pub async fn main<S: Service>() -> std::process::ExitCode {
    match parse_args::<Cli>(S::NAME) {
        Ok(cli) => run::<S>(cli.command.unwrap_or(Command::Serve)).await,
        Err(code) => code,
    }
}

/// Runs `command` of the service `S`: its configuration from the environment (exit 64
/// naming the variable when it is not valid), telemetry, then the command.
pub async fn run<S: Service>(command: Command) -> std::process::ExitCode {
    use std::process::ExitCode;
    let env = Env::from_process();
    let config = crate::config::load_or_exit(|| S::from_env(&env));
    let _telemetry = crate::telemetry::init(S::NAME, &config.common().telemetry);
    let result = match command {
        Command::Migrate => config.migrate().await,
        Command::Serve => {
            let grace = config.common().shutdown_grace;
            let shutdown = crate::shutdown::on_signal();
            match config.start(shutdown.clone()).await {
                Ok(running) => {
                    tracing::info!(service = S::NAME, grpc = %running.grpc_addr, http = ?running.http_addr, metrics = ?running.metrics_addr, "serving");
                    running.run_until(shutdown, grace).await
                }
                Err(err) => Err(err),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(
                service = S::NAME,
                error = format!("{err:#}"),
                "stopped with an error"
            );
            eprintln!("{}: {err:#}", S::NAME);
            ExitCode::from(exit_code_of(&err))
        }
    }
}

/// 69 (EX_UNAVAILABLE) when the service could not reach or was refused by NATS at start,
/// so an orchestrator and an operator tell it from a crash (1).
fn exit_code_of(err: &anyhow::Error) -> u8 {
    let unavailable = err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<crate::bus::BusError>(),
            Some(crate::bus::BusError::Connect { .. })
        )
    });
    if unavailable {
        crate::config::EXIT_UNAVAILABLE as u8
    } else {
        1
    }
}

/// The long-running tasks of a service beside its servers (consumers, the outbox relay).
/// They are stopped only after the servers have drained, so the work of the last requests
/// is still published and consumed.
pub struct Background {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The service's metrics: its consumers count into them, and `/metrics` shows them.
    metrics: crate::metrics::Metrics,
}

impl Background {
    pub fn new(metrics: crate::metrics::Metrics) -> Self {
        Self {
            stop: CancellationToken::new(),
            tasks: Vec::new(),
            metrics,
        }
    }

    /// The service's metrics, for a task that measures.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The token a task watches to know it should finish.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Runs a durable consumer until the service stops.
    pub fn consume<H: crate::bus::BatchHandler>(
        &mut self,
        bus: &crate::bus::Bus,
        spec: crate::bus::ConsumerSpec,
        handler: std::sync::Arc<H>,
    ) {
        let stop = self.stop_token();
        let metrics = self.metrics.clone();
        self.spawn(crate::bus::run_consumer(
            bus.clone(),
            spec,
            handler,
            stop,
            metrics,
        ));
    }

    /// Runs a fair consumer (accounts served in turn) until the service stops.
    pub fn consume_fairly<H: crate::bus::BatchHandler>(
        &mut self,
        bus: &crate::bus::Bus,
        spec: crate::bus::FairSpec,
        handler: std::sync::Arc<H>,
    ) {
        let stop = self.stop_token();
        let metrics = self.metrics.clone();
        self.spawn(crate::bus::run_fair_consumer(
            bus.clone(),
            spec,
            handler,
            stop,
            metrics,
        ));
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for task in self.tasks {
            task.await?;
        }
        Ok(())
    }
}

/// The gRPC side of a service, bound and ready to serve.
pub struct GrpcParts {
    pub listener: tokio::net::TcpListener,
    /// The callers' token check: only an authenticated call is traced (see
    /// [`crate::grpc::serve`]).
    pub verifier: std::sync::Arc<crate::auth::TokenVerifier>,
    pub routes: tonic::service::Routes,
    /// Fully-qualified service names reported by the health service.
    pub names: Vec<&'static str>,
}

/// Serves until `shutdown`, drains, stops the background tasks, closes the bus. `http` is
/// an extra server future (the webhook) that must itself stop on `shutdown`.
pub async fn spawn_service(
    config: &ServiceConfig,
    grpc: GrpcParts,
    http: Option<(
        SocketAddr,
        futures::future::BoxFuture<'static, std::io::Result<()>>,
    )>,
    background: Background,
    bus: crate::bus::Bus,
    shutdown: CancellationToken,
) -> std::io::Result<Running> {
    let grpc_addr = grpc.listener.local_addr()?;
    let drain_delay = config.drain_delay;
    let options = crate::grpc::ServerOptions {
        drain_delay,
        timeout: config.grpc_timeout,
        reflection: config.grpc_reflection,
        max_streams: config.grpc_max_streams,
        cors_origins: config.cors_origins.clone(),
    };
    let metrics_stop = CancellationToken::new();
    let service_metrics = background.metrics.clone();
    let metrics = match config.metrics_addr {
        Some(addr) => {
            Some(crate::metrics::serve(addr, service_metrics.clone(), metrics_stop.clone()).await?)
        }
        None => None,
    };
    let metrics_addr = metrics.as_ref().map(|(addr, _)| *addr);
    let (http_addr, http_server) = match http {
        Some((addr, server)) => (Some(addr), Some(server)),
        None => (None, None),
    };
    let task = tokio::spawn(async move {
        let grpc_server = crate::grpc::serve(
            grpc.listener,
            grpc.routes,
            grpc.verifier,
            &grpc.names,
            shutdown,
            options,
            &service_metrics,
        );
        let http_server = async {
            match http_server {
                Some(server) => server.await,
                None => Ok(()),
            }
        };
        let (served, http_served) = tokio::join!(grpc_server, http_server);
        // Each step of the drain is logged: a drain cut off by its grace shows where it was.
        tracing::info!("servers drained, stopping background tasks");
        let stopped = background.stop().await;
        tracing::info!("background tasks stopped, closing the bus");
        bus.close().await;
        metrics_stop.cancel();
        if let Some((_, task)) = metrics {
            let _ = task.await;
        }
        // Flushes the OTLP exporter, if any: a blocking call, bounded by its export
        // timeout, kept off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || service_metrics.shutdown()).await;
        served?;
        http_served?;
        stopped
    });
    let mut running = Running::new(grpc_addr, http_addr, task);
    running.metrics_addr = metrics_addr;
    Ok(running)
}

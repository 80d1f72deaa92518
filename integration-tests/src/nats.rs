//! A private nats-server with JetStream for one test.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

pub struct TestNats {
    child: Child,
    pub url: String,
    dir: tempfile::TempDir,
}

impl TestNats {
    pub fn binary() -> String {
        std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into())
    }

    /// Starts a server on a free port and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_config("").await
    }

    /// Like [`TestNats::start`], with extra lines of server configuration (e.g.
    /// `max_payload: 65536`).
    pub async fn start_with_config(config: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store");
        let config_file = dir.path().join("nats.conf");
        std::fs::write(&config_file, config)?;
        let child = Command::new(Self::binary())
            .arg("-c")
            .arg(&config_file)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "--store_dir"])
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (install the nats-server package, or set NATS_SERVER_BIN)",
                    Self::binary()
                )
            })?;
        let ports_file = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let mut nats = Self {
            child,
            url: String::new(),
            dir,
        };
        nats.url = wait_for_url(&ports_file, &mut nats.child).await?;
        Ok(nats)
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_for_url(ports_file: &PathBuf, child: &mut Child) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(ports_file)
            && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(url) = ports["nats"][0].as_str()
        {
            let url = url.to_owned();
            // Answering, even to refuse a client without credentials, is being up.
            match async_nats::connect(&url).await {
                Ok(_) => return Ok(url),
                Err(err)
                    if matches!(
                        err.kind(),
                        async_nats::ConnectErrorKind::AuthorizationViolation
                            | async_nats::ConnectErrorKind::Authentication
                    ) =>
                {
                    return Ok(url);
                }
                Err(_) => {}
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("nats-server exited at start: {status}");
        }
        if Instant::now() > deadline {
            bail!("nats-server did not start within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connects to `url`: one server, or several separated by commas (a cluster), as the
/// services read `NATS_URL`.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    Ok(async_nats::connect(servers).await?)
}

/// What a durable consumer has yet to receive (`pending`) and to ack (`unacked`).
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    pub pending: u64,
    pub unacked: usize,
}

impl Backlog {
    pub fn is_empty(self) -> bool {
        self.pending == 0 && self.unacked == 0
    }
}

/// Waits until `consumer` of `stream` has received and acked everything, asking every
/// `poll`; fails after `within` naming what is left.
pub async fn wait_until_consumed(
    js: &async_nats::jetstream::Context,
    (stream, consumer): (&str, &str),
    within: Duration,
    poll: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let backlog = consumer_backlog(js, stream, consumer).await?;
        if backlog.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{consumer}: {} pending, {} unacked after {within:?}\n{}",
            backlog.pending,
            backlog.unacked,
            describe_stream(js, stream).await
        );
        tokio::time::sleep(poll).await;
    }
}

pub async fn consumer_backlog(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> anyhow::Result<Backlog> {
    let mut c: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await?
        .get_consumer(consumer)
        .await
        .map_err(|e| anyhow::anyhow!("{consumer}: {e}"))?;
    let info = c.info().await?;
    Ok(Backlog {
        pending: info.num_pending,
        unacked: info.num_ack_pending,
    })
}

/// Messages still in the bulk lane: a work queue, so every one is a contact not yet
/// distributed (or delivered and not yet acked).
pub async fn bulk_backlog(js: &async_nats::jetstream::Context) -> anyhow::Result<u64> {
    Ok(js
        .get_stream(salesplan_platform::bus::streams::BULK.name)
        .await?
        .info()
        .await?
        .state
        .messages)
}

/// A stream's state and each of its consumers' positions, for a failure message.
pub async fn describe_stream(js: &async_nats::jetstream::Context, name: &str) -> String {
    let described = async {
        let mut stream = js.get_stream(name).await?;
        let state = stream.info().await?.state.clone();
        let mut out = format!(
            "{name}: {} messages, sequences {}..={}",
            state.messages, state.first_sequence, state.last_sequence
        );
        use futures::StreamExt as _;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info?;
            out.push_str(&format!(
                "\n  {}: pending {}, unacked {}, delivered up to {}, acked up to {}",
                info.name,
                info.num_pending,
                info.num_ack_pending,
                info.delivered.stream_sequence,
                info.ack_floor.stream_sequence
            ));
        }
        anyhow::Ok(out)
    };
    described
        .await
        .unwrap_or_else(|e| format!("{name}: cannot describe: {e}"))
}

/// Whether every consumer of `stream` (per-process ones included) has received and acked
/// every message.
pub async fn all_consumers_caught_up(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> anyhow::Result<bool> {
    use futures::StreamExt as _;
    let stream = js.get_stream(stream).await?;
    let mut consumers = stream.consumers();
    while let Some(info) = consumers.next().await {
        let info = info?;
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

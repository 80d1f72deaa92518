//! The processes of a fault run: the service binaries, a private PostgreSQL, each one
//! killed, stopped and started again with the same arguments.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

pub(super) use crate::ports::reserve as free_port;

/// A binary next to the running executable (the target directory).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("no parent")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} is not built: `cargo build --bins` first",
        bin.display()
    );
    Ok(bin)
}

/// Waits until `child` listens on `port`; an error naming how it exited, with the end of
/// its log, when it stops first or does not listen within `timeout`.
async fn wait_listening(
    child: &mut Child,
    port: u16,
    log: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Some(status) = child.try_wait()? {
            bail!(
                "exited ({status}) before listening on port {port}:\n{}",
                log_tail(log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "nothing listens on port {port} after {timeout:?}:\n{}",
                log_tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The last lines of a process's log, for an error that says why it did not start.
fn log_tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A private PostgreSQL cluster in a temporary directory, restartable.
pub(super) struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
    as_root: bool,
}

impl Postgres {
    fn pg_bin() -> anyhow::Result<PathBuf> {
        for dir in std::fs::read_dir("/usr/lib/postgresql")? {
            let bin = dir?.path().join("bin");
            if bin.join("initdb").exists() {
                return Ok(bin);
            }
        }
        bail!("no PostgreSQL server binaries under /usr/lib/postgresql (install `postgresql`)")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    pub(super) async fn start_new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let as_root = nix_is_root();
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        if as_root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .await?;
            anyhow::ensure!(status.success(), "chown for postgres failed");
        }
        let pg = Self {
            bin: Self::pg_bin()?,
            data,
            port: free_port()?,
            _dir: dir,
            as_root,
        };
        let status = pg
            .command("initdb")
            .args(["-U", "postgres", "-A", "trust", "-D"])
            .arg(&pg.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "initdb failed");
        pg.start().await?;
        Ok(pg)
    }

    async fn start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port
        );
        let status = self
            .command("pg_ctl")
            .args(["-w", "-D"])
            .arg(&self.data)
            .args(["-o", &options, "-l"])
            .arg(self.data.join("log"))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "pg_ctl start failed");
        Ok(())
    }

    /// Stops without a checkpoint, as a crash would, and starts again.
    pub(super) async fn restart(&self) -> anyhow::Result<()> {
        self.command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .stdout(Stdio::null())
            .status()
            .await?;
        self.start().await
    }

    pub(super) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut command = std::process::Command::new(if self.as_root { "runuser" } else { "true" });
        if self.as_root {
            command
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
        } else {
            command = std::process::Command::new(self.bin.join("pg_ctl"));
        }
        let _ = command
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .stdout(Stdio::null())
            .status();
    }
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// One process we can kill and start again with the same arguments.
pub struct Proc {
    pub name: String,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub(crate) port: u16,
    pub(crate) child: Option<Child>,
    pub(crate) log: PathBuf,
}

impl Proc {
    pub async fn start(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let child = self.child.insert(
            command
                .spawn()
                .with_context(|| format!("start {}", self.name))?,
        );
        wait_listening(child, self.port, &self.log, Duration::from_secs(30))
            .await
            .with_context(|| format!("start {}", self.name))?;
        Ok(started.elapsed())
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    pub(crate) fn peak_rss(&self) -> Option<u64> {
        self.memory("VmHWM:")
    }

    /// Resident memory now (VmRSS), in bytes.
    pub(crate) fn rss(&self) -> Option<u64> {
        self.memory("VmRSS:")
    }

    fn memory(&self, field: &str) -> Option<u64> {
        let pid = self.child.as_ref()?.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Asks the process to stop (SIGTERM) and waits for it; killed after `grace` (an
    /// error). Answers how it exited (`None` when it was not running).
    pub async fn stop(
        &mut self,
        grace: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Some(pid) = child.id() {
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => {
                child.start_kill()?;
                child.wait().await?;
                bail!("{} did not stop within {grace:?} of SIGTERM", self.name);
            }
        }
    }

    /// Sends `signal` ("STOP", "CONT", …) to the running process.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .with_context(|| format!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -{signal} {}", self.name);
        Ok(())
    }

    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }
}

/// Where the four services of [`start_services`] listen.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub intake: u16,
    pub http: u16,
    pub deal: u16,
    pub reporting: u16,
}

/// Starts the four service binaries on free ports against one database and NATS, with no
/// webhook rate limit, plus `extra` variables; returns them started.
pub async fn start_services(
    database_url: &str,
    nats_url: &str,
    logs: &std::path::Path,
    extra: &[(&str, &str)],
) -> anyhow::Result<(Vec<Proc>, Ports)> {
    start_services_with(database_url, nats_url, logs, extra, |_| Vec::new()).await
}

/// [`start_services`], with variables of each service's own from `own` (given the
/// service's name), e.g. its NATS user.
pub async fn start_services_with(
    database_url: &str,
    nats_url: &str,
    logs: &std::path::Path,
    extra: &[(&str, &str)],
    own: impl Fn(&str) -> Vec<(String, String)>,
) -> anyhow::Result<(Vec<Proc>, Ports)> {
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect::<Result<_, _>>()?;
    let (intake, http, distributor, deal, reporting) =
        (ports[0], ports[1], ports[2], ports[3], ports[4]);
    let mut services = Vec::new();
    for (name, port) in [
        ("deal-service", deal),
        ("distributor", distributor),
        ("reporting", reporting),
        ("tunnel-listener", intake),
    ] {
        let mut env = vec![
            // The public development secret verifies tokens where no key is configured.
            ("SALESPLAN_ENV".to_owned(), "development".to_owned()),
            ("NATS_URL".to_owned(), nats_url.to_owned()),
            (
                "SALESPLAN_GRPC_ADDR".to_owned(),
                format!("127.0.0.1:{port}"),
            ),
            (
                "SALESPLAN_DEAL_SERVICE_URL".to_owned(),
                format!("http://127.0.0.1:{deal}"),
            ),
            (
                "SALESPLAN_DISTRIBUTOR_URL".to_owned(),
                format!("http://127.0.0.1:{distributor}"),
            ),
            ("SALESPLAN_WEBHOOK_RATE".to_owned(), "1000000".to_owned()),
            ("SALESPLAN_WEBHOOK_BURST".to_owned(), "1000000".to_owned()),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
        ];
        // The listener keeps no state: it gets no database.
        if name != "tunnel-listener" {
            env.push(("DATABASE_URL".to_owned(), database_url.to_owned()));
        }
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env.extend(own(name));
        let listens_on = if name == "tunnel-listener" {
            env.push(("SALESPLAN_HTTP_ADDR".into(), format!("127.0.0.1:{http}")));
            http
        } else {
            port
        };
        let mut service = Proc {
            name: name.into(),
            program: sibling_binary(name)?,
            args: vec!["serve".into()],
            env,
            port: listens_on,
            child: None,
            log: logs.join(format!("{name}.log")),
        };
        service.start().await?;
        services.push(service);
    }
    Ok((
        services,
        Ports {
            intake,
            http,
            deal,
            reporting,
        },
    ))
}

//! Fault runs with the real binaries, a private nats-server and a private PostgreSQL:
//! leads stream in through the webhook and the bulk add while every service is SIGKILLed
//! and restarted in turn, and nats-server and PostgreSQL are restarted; then every promise
//! is checked. `just chaos` runs it with a count; `just test` runs a small one.

use std::{
    collections::{BTreeMap, HashSet},
    net::TcpListener,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::StreamExt;
use salesplan_platform::{
    Actor, Permission, auth::TokenIssuer, config::AuthConfig, grpc::outgoing,
};
use salesplan_proto::v1::intake_service_client::IntakeServiceClient;
use tokio::process::{Child, Command};

use crate::{
    api::{Mode, Strategy, audience_chunks, create_plan, plan_request},
    nats::{bulk_backlog, consumer_backlog, describe_stream},
};

#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Leads through the webhook (a third of them delivered twice).
    pub leads: usize,
    /// Contacts of one bulk add.
    pub bulk: usize,
    /// Rounds of killing every service once.
    pub rounds: usize,
    /// Restart nats-server too (`just chaos`). Off in `just test`: nats-server 2.9.10 with
    /// one node was seen to lose acknowledged writes across a restart (docs/reliability.md).
    pub restart_broker: bool,
}

#[derive(Debug, Default)]
pub struct Figures {
    pub leads_sent: usize,
    pub accepted: usize,
    pub webhook_retries: usize,
    pub deals: usize,
    pub duplicates: usize,
    pub lost: usize,
    pub kills: usize,
    pub restarts: Vec<(String, Duration)>,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "leads sent      {}", self.leads_sent)?;
        writeln!(f, "accepted        {}", self.accepted)?;
        writeln!(f, "retried posts   {}", self.webhook_retries)?;
        writeln!(f, "deals           {}", self.deals)?;
        writeln!(f, "duplicates      {}", self.duplicates)?;
        writeln!(f, "lost            {}", self.lost)?;
        writeln!(f, "kills survived  {}", self.kills)?;
        for (what, took) in &self.restarts {
            writeln!(f, "restart {what:<16} {:>6} ms", took.as_millis())?;
        }
        Ok(())
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

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

async fn wait_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A private PostgreSQL cluster in a temporary directory, restartable.
struct Postgres {
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

    async fn start_new() -> anyhow::Result<Self> {
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
    async fn restart(&self) -> anyhow::Result<()> {
        self.command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .stdout(Stdio::null())
            .status()
            .await?;
        self.start().await
    }

    fn url(&self) -> String {
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
    pub(crate) name: String,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
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
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("start {}", self.name))?,
        );
        wait_port(self.port, Duration::from_secs(30)).await?;
        Ok(started.elapsed())
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    pub(crate) fn peak_rss(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
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

/// Runs the whole fault scenario and checks every promise; the figures on success. On
/// failure the error carries the end of every process's log, since the logs go with the run.
pub async fn run(config: ChaosConfig) -> anyhow::Result<Figures> {
    let logs = tempfile::tempdir()?;
    match run_in(config, &logs).await {
        Ok(figures) => Ok(figures),
        Err(err) => Err(err.context(log_tails(logs.path(), 40))),
    }
}

/// The last `lines` lines of every `*.log` in `dir`, each under its file name.
fn log_tails(dir: &std::path::Path, lines: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("the scenario failed; the end of each log:\n");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let all: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("sqlx::postgres::notice"))
            .collect();
        let _ = writeln!(out, "--- {}", path.display());
        for line in &all[all.len().saturating_sub(lines)..] {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

async fn run_in(config: ChaosConfig, logs: &tempfile::TempDir) -> anyhow::Result<Figures> {
    let pg = Postgres::start_new().await?;
    let (mut nats, nats_port) = nats_proc(logs)?;
    nats.start().await?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");

    let (mut services, ports) = start_services(
        &pg.url(),
        &nats_url,
        logs.path(),
        &[("SALESPLAN_SHUTDOWN_GRACE_MS", "5000")],
    )
    .await?;
    let Ports {
        intake: listener_grpc,
        http,
        deal: deal_port,
        ..
    } = ports;

    let funnel = token(&[Permission::IntakeWrite])?;
    let (turns, fewest) = create_plans(deal_port).await?;

    let figures = Arc::new(Mutex::new(Figures::default()));
    let accepted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let webhook = format!("http://127.0.0.1:{http}/v1/tunnel-actions/add-to-sales-plan");

    // Leads: eight senders, each retrying its lead until it is accepted.
    let senders = spawn_senders(
        config.leads,
        webhook.clone(),
        funnel.clone(),
        turns.id.clone(),
        (figures.clone(), accepted.clone()),
    );
    // A bulk add, retried whole until every chunk is answered (its job id makes that safe).
    let bulk = spawn_bulk(
        listener_grpc,
        funnel.clone(),
        fewest.id.clone(),
        config.bulk,
        accepted.clone(),
    );

    inject_faults(&config, &mut services, &mut nats, &pg, &figures).await?;

    senders.await??;
    bulk.await??;

    // Everything accepted becomes exactly one deal.
    let accepted: HashSet<String> = accepted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let pool = sqlx::PgPool::connect(&pg.url()).await?;
    let figures = Arc::try_unwrap(figures)
        .map_err(|_| anyhow::anyhow!("figures still shared"))?
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let figures = check_exactly_once(&pool, &accepted, figures, config.leads + config.bulk).await?;
    check_assignments(&pool, &turns.id, &MEMBERS).await?;
    check_read_models(&pool, &pg.url(), &nats_url, figures.deals).await?;
    check_nothing_stuck(&nats_url).await?;

    for service in &mut services {
        service.kill().await?;
    }
    nats.kill().await?;
    Ok(figures)
}

/// The members of both plans of the run.
const MEMBERS: [&str; 3] = ["m1", "m2", "m3"];

/// A token of the run's account.
fn token(perms: &[Permission]) -> anyhow::Result<String> {
    Ok(TokenIssuer::hs256(AuthConfig::DEV_SECRET.as_bytes()).issue(
        &Actor::new("chaos", "chaos", perms.iter().copied()),
        Duration::from_secs(3600),
    )?)
}

/// The run's two plans: round robin ("Turns", the webhook leads) and fewest open deals
/// with related contacts first ("Fewest", the bulk add).
async fn create_plans(
    deal_port: u16,
) -> anyhow::Result<(salesplan_proto::v1::Plan, salesplan_proto::v1::Plan)> {
    let admin = token(&[Permission::PlansAdmin])?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{deal_port}"))?
        .connect()
        .await?;
    let turns = create_plan(
        channel.clone(),
        &admin,
        plan_request("Turns", Mode::Auto, Strategy::RoundRobin, false, &MEMBERS),
    )
    .await?;
    let fewest = create_plan(
        channel,
        &admin,
        plan_request(
            "Fewest",
            Mode::Auto,
            Strategy::LeastOpenDeals,
            true,
            &MEMBERS,
        ),
    )
    .await?;
    Ok((turns, fewest))
}

/// Assigned by the rules: round robin exactly even in the `turns_plan`, every deal of a
/// member, none left unassigned; kept counts and references consistent.
async fn check_assignments(
    pool: &sqlx::PgPool,
    turns_plan: &str,
    members: &[&str],
) -> anyhow::Result<()> {
    let per_manager: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT manager_id, count(*) FROM deal_service.deals WHERE plan_id = $1 GROUP BY 1",
    )
    .bind(uuid::Uuid::parse_str(turns_plan)?)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let (min, max) = (
        per_manager.values().min().copied().unwrap_or(0),
        per_manager.values().max().copied().unwrap_or(0),
    );
    anyhow::ensure!(
        per_manager.keys().all(|m| members.contains(&m.as_str())),
        "deals of non-members: {per_manager:?}"
    );
    anyhow::ensure!(
        max - min <= 1,
        "round robin uneven after faults: {per_manager:?}"
    );
    let unassigned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deal_service.deals WHERE manager_id IS NULL")
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(unassigned == 0, "{unassigned} AUTO deals without a manager");

    let drift = crate::postgres::kept_counts_drift(pool).await?;
    anyhow::ensure!(
        drift.is_empty(),
        "the board's kept counts disagree with the deals: {drift:?}"
    );
    let dangling = crate::postgres::dangling_references(pool).await?;
    anyhow::ensure!(
        dangling == (0, 0),
        "deals outside their plan's stages, history of no deal: {dangling:?}"
    );
    Ok(())
}

/// The distributor's counts and reporting's read model agree with the `deals` made, and
/// `reporting verify` finds no difference.
async fn check_read_models(
    pool: &sqlx::PgPool,
    database_url: &str,
    nats_url: &str,
    deals: usize,
) -> anyhow::Result<()> {
    let settled = Instant::now() + Duration::from_secs(60);
    loop {
        let kept: Vec<(uuid::Uuid, String, i64)> = sqlx::query_as("SELECT plan_id, manager_id, open FROM distributor.open_deals WHERE open <> 0 ORDER BY 1, 2")
            .fetch_all(pool)
            .await?;
        let recount: Vec<(uuid::Uuid, String, i64)> = sqlx::query_as(
            "SELECT plan_id, manager_id, count(*) FROM deal_service.deals WHERE status = 'open' AND manager_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(pool)
        .await?;
        let reported: i64 =
            sqlx::query_scalar("SELECT count(*) FROM reporting.deals WHERE version > 0")
                .fetch_one(pool)
                .await?;
        if kept == recount && reported as usize == deals {
            break;
        }
        if Instant::now() >= settled {
            let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
            let outbox: (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM deal_service.outbox),
                        (SELECT count(*) FROM deal_service.outbox_parked)",
            )
            .fetch_one(pool)
            .await?;
            bail!(
                "distributor counts {kept:?} or reporting's {reported} deals never matched {recount:?}\n\
                 outbox: {} waiting, {} parked\n{}",
                outbox.0,
                outbox.1,
                describe_stream(&js, "SALESPLAN_DEALS").await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let verify = Command::new(sibling_binary("reporting")?)
        .arg("verify")
        .env("SALESPLAN_ENV", "development")
        .env("DATABASE_URL", database_url)
        .env("NATS_URL", nats_url)
        .output()
        .await?;
    anyhow::ensure!(
        verify.status.success(),
        "reporting verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    Ok(())
}

/// No message stuck unacked, nothing left in the bulk lane, no dead letter.
async fn check_nothing_stuck(nats_url: &str) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    for (stream, consumer) in [
        ("SALESPLAN_INTAKE", "distributor-intake"),
        ("SALESPLAN_DEALS", "distributor-deals"),
        ("SALESPLAN_DEALS", "reporting-deals"),
        ("SALESPLAN_PLANS", "distributor-plans"),
        ("SALESPLAN_PLANS", "reporting-plans"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let backlog = consumer_backlog(&js, stream, consumer).await?;
            if backlog.is_empty() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{consumer}: {} pending, {} unacked",
                backlog.pending,
                backlog.unacked
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bulk = bulk_backlog(&js).await?;
        if bulk == 0 {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "{bulk} contacts left in the bulk lane\n{}",
                describe_stream(&js, "SALESPLAN_BULK").await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let dead: u64 = js
        .get_stream("SALESPLAN_DEAD_LETTERS")
        .await?
        .info()
        .await?
        .state
        .messages;
    anyhow::ensure!(dead == 0, "{dead} dead letters");
    Ok(())
}

/// The test's nats-server (JetStream in `logs`), not started yet, and its port.
fn nats_proc(logs: &tempfile::TempDir) -> anyhow::Result<(Proc, u16)> {
    let nats_port = free_port()?;
    let nats_store = logs.path().join("jetstream");
    let nats = Proc {
        name: "nats-server".into(),
        program: crate::nats::TestNats::binary().into(),
        args: vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            nats_port.to_string(),
            "-js".into(),
            "-sd".into(),
            nats_store.display().to_string(),
        ],
        env: vec![],
        port: nats_port,
        child: None,
        log: logs.path().join("nats.log"),
    };
    Ok((nats, nats_port))
}

/// Figures and the intake ids accepted so far, shared with the tasks sending leads.
type Shared = (Arc<Mutex<Figures>>, Arc<Mutex<HashSet<String>>>);

/// How long a lead (or the bulk add) is retried through the faults before the run fails
/// with the last answer: far longer than any fault of the run keeps a service away.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// Sends `leads` webhook leads to `turns_id`, eight at a time, each retried until it is
/// accepted (every third one sent twice, as a funnel retries), at most [`RETRY_FOR`].
fn spawn_senders(
    leads: usize,
    webhook: String,
    funnel: String,
    turns_id: String,
    (figures, accepted): Shared,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        futures::stream::iter(0..leads)
            .map(|i| {
                let (http, figures, accepted, webhook, funnel, plan) = (http.clone(), figures.clone(), accepted.clone(), webhook.clone(), funnel.clone(), turns_id.clone());
                async move {
                    let body = serde_json::json!({"plan_id": plan, "block_id": "b", "run_id": format!("run-{i}"), "contact": {"external_id": format!("c-{i}")}});
                    let deliveries = if i % 3 == 0 { 2 } else { 1 };
                    for _ in 0..deliveries {
                        let deadline = Instant::now() + RETRY_FOR;
                        loop {
                            let sent = http.post(&webhook).bearer_auth(&funnel).json(&body).send().await;
                            match sent {
                                Ok(r) if r.status() == 202 => {
                                    let reply: serde_json::Value = r.json().await?;
                                    let id = reply["intake_id"].as_str().unwrap_or_default().to_owned();
                                    accepted.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
                                    break;
                                }
                                Ok(r) if r.status().is_client_error() && r.status() != 429 => {
                                    bail!("lead {i} refused: {} {}", r.status(), r.text().await.unwrap_or_default())
                                }
                                other => {
                                    if Instant::now() >= deadline {
                                        bail!("lead {i} not accepted within {RETRY_FOR:?}; last answer: {other:?}")
                                    }
                                    figures.lock().unwrap_or_else(|e| e.into_inner()).webhook_retries += 1;
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            }
                        }
                    }
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<()>>>()?;
        anyhow::Ok(())
    })
}

/// Adds `n` contacts to `plan` in one bulk add, retried whole until every chunk is
/// answered, at most [`RETRY_FOR`] (then the run fails with the last error).
fn spawn_bulk(
    listener_grpc: u16,
    funnel: String,
    plan: String,
    n: usize,
    accepted: Arc<Mutex<HashSet<String>>>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let attempt = async {
                let channel = tonic::transport::Endpoint::from_shared(format!(
                    "http://127.0.0.1:{listener_grpc}"
                ))?
                .connect()
                .await?;
                let chunks = audience_chunks(&plan, "chaos-bulk", n, 500, |i| format!("b-{i}"));
                let mut stream = IntakeServiceClient::new(channel)
                    .add_audience(outgoing(futures::stream::iter(chunks), &funnel))
                    .await?
                    .into_inner();
                let mut ids = Vec::new();
                while let Some(reply) = stream.next().await {
                    ids.extend(reply?.results.into_iter().map(|r| r.intake_id));
                }
                anyhow::ensure!(ids.len() == n, "bulk answered {} of {n}", ids.len());
                anyhow::Ok(ids)
            };
            match attempt.await {
                Ok(ids) => {
                    accepted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(ids);
                    return anyhow::Ok(());
                }
                Err(err) if Instant::now() >= deadline => {
                    bail!("the bulk add was not answered within {RETRY_FOR:?}: {err:#}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
}

/// Kills and restarts every service, `config.rounds` times, then the broker (if asked)
/// and PostgreSQL, while the leads stream in.
async fn inject_faults(
    config: &ChaosConfig,
    services: &mut [Proc],
    nats: &mut Proc,
    pg: &Postgres,
    figures: &Arc<Mutex<Figures>>,
) -> anyhow::Result<()> {
    // Faults, while the leads stream in.
    for _ in 0..config.rounds {
        for service in services.iter_mut() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            service.kill().await?;
            let took = service.start().await?;
            let mut f = figures.lock().unwrap_or_else(|e| e.into_inner());
            f.kills += 1;
            f.restarts.push((service.name.clone(), took));
        }
    }
    // A broker restart, as in a rolling upgrade: SIGKILL of a single nats-server 2.9 can
    // lose its last acknowledged writes (docs/reliability.md, known limits).
    if config.restart_broker {
        nats.stop(Duration::from_secs(30)).await?;
        let took = nats.start().await?;
        figures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restarts
            .push(("nats-server".into(), took));
    }
    let started = Instant::now();
    pg.restart().await?;
    figures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .restarts
        .push(("postgresql".into(), started.elapsed()));
    Ok(())
}

/// Every accepted lead is exactly one deal (waiting up to 3 minutes for the last ones):
/// the figures of what was sent, accepted, made, doubled and lost.
async fn check_exactly_once(
    pool: &sqlx::PgPool,
    accepted: &HashSet<String>,
    mut figures: Figures,
    sent: usize,
) -> anyhow::Result<Figures> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let keys: Vec<String> = loop {
        // PostgreSQL was restarted a moment ago: a failed read is retried until the
        // deadline, then it fails the run.
        let read = sqlx::query_scalar(
            "SELECT idempotency_key FROM deal_service.deals WHERE account_id = 'chaos'",
        )
        .fetch_all(pool)
        .await;
        match read {
            Ok(keys) if keys.len() >= accepted.len() || Instant::now() > deadline => break keys,
            Err(err) if Instant::now() > deadline => bail!("cannot read the deals: {err}"),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let distinct: HashSet<String> = keys.iter().cloned().collect();
    figures.leads_sent = sent;
    figures.accepted = accepted.len();
    figures.deals = keys.len();
    figures.duplicates = keys.len() - distinct.len();
    figures.lost = accepted.difference(&distinct).count();
    anyhow::ensure!(
        figures.lost == 0 && figures.duplicates == 0 && distinct == *accepted,
        "leads lost or doubled:\n{figures}"
    );
    Ok(figures)
}

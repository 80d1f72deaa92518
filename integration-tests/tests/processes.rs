//! The service binaries as an operator runs them: configuration errors, SIGTERM drains.
//! `just test` builds the binaries first (`cargo build --bins`).

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{TestDatabase, TestNats};
use salesplan_platform::service::Service;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A service binary next to this test's target directory.
fn service_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow::anyhow!("no target directory above {}", exe.display()))?;
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} is not built: run `cargo build --bins` first (`just test` does)",
        bin.display()
    );
    Ok(bin)
}

#[test]
fn invalid_configuration_exits_64_naming_the_variable() -> anyhow::Result<()> {
    let cases = [
        (
            "distributor",
            "SALESPLAN_DEAL_SERVICE_URL",
            "ftp://elsewhere",
        ),
        ("deal-service", "SALESPLAN_DB_MAX_CONNECTIONS", "lots"),
        ("tunnel-listener", "SALESPLAN_HTTP_ADDR", "not-an-address"),
        ("reporting", "SALESPLAN_JWT_HS256_SECRET", "short"),
    ];
    for (service, variable, value) in cases {
        let output = Command::new(service_bin(service)?)
            .arg("serve")
            .env(variable, value)
            .output()?;
        assert_eq!(output.status.code(), Some(64), "{service}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{service}: {stderr}");
    }
    let output = Command::new(service_bin("reporting")?)
        .arg("frobnicate")
        .output()?;
    assert_eq!(output.status.code(), Some(64));
    // Every binary says what it takes.
    for (service, commands) in [
        ("distributor", &["serve", "migrate"][..]),
        ("reporting", &["serve", "migrate", "rebuild", "verify"][..]),
    ] {
        let output = Command::new(service_bin(service)?).arg("--help").output()?;
        assert_eq!(output.status.code(), Some(0), "{service}");
        let usage = String::from_utf8_lossy(&output.stdout);
        for command in commands {
            assert!(usage.contains(command), "{service}: {usage}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() -> anyhow::Result<()> {
    let nats = TestNats::start().await?;
    let db = TestDatabase::create().await?;
    let mut child = Command::new(service_bin("deal-service")?)
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", &nats.url)
        .env("SALESPLAN_GRPC_ADDR", "127.0.0.1:0")
        .env("SALESPLAN_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    // The "serving" log line tells the bound address.
    let addr = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.ok()?;
            let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if log["fields"]["message"] == "serving" {
                return log["fields"]["grpc"].as_str().map(str::to_owned);
            }
        }
        None
    });
    let addr = tokio::time::timeout(Duration::from_secs(30), addr)
        .await??
        .ok_or_else(|| anyhow::anyhow!("deal-service never logged that it is serving"))?;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    assert_eq!(status.code(), Some(0), "a drained service exits 0");
    Ok(())
}

#[tokio::test]
async fn health_turns_not_serving_while_draining() -> anyhow::Result<()> {
    let nats = TestNats::start().await?;
    let db = TestDatabase::create().await?;
    let mut config = reporting::Config::local(&db.url, &nats.url);
    config.common.drain_delay = Duration::from_secs(3);
    let shutdown = CancellationToken::new();
    let running = config.start(shutdown.clone()).await?;
    let channel = tonic::transport::Endpoint::from_shared(running.grpc_url())?
        .connect()
        .await?;
    let mut health = HealthClient::new(channel);
    let check = HealthCheckRequest {
        service: "salesplan.v1.ReportService".into(),
    };
    let serving = health.check(check.clone()).await?.into_inner().status;
    assert_eq!(serving, ServingStatus::Serving as i32);

    shutdown.cancel();
    let draining = integration_tests::stack::eventually(Duration::from_secs(2), || {
        let mut health = health.clone();
        let check = check.clone();
        async move {
            let status = health.check(check).await?.into_inner().status;
            Ok((status == ServingStatus::NotServing as i32).then_some(()))
        }
    })
    .await;
    assert!(draining.is_ok(), "NOT_SERVING during the drain delay");
    running.wait().await
}

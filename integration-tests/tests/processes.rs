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
use salesplan_proto::v1::plan_service_client::PlanServiceClient;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// What a run of the service binaries needs alive until its end: its database (`url` for
/// checks), its broker and its logs.
struct Deps {
    database: TestDatabase,
    nats: TestNats,
    _logs: tempfile::TempDir,
}

/// The four service binaries on a private database and broker, with `extra` variables
/// (`deps` first, so that it outlives the services in a test's scope).
async fn start_binaries(
    extra: &[(&str, &str)],
) -> anyhow::Result<(
    Deps,
    Vec<integration_tests::chaos::Proc>,
    integration_tests::chaos::Ports,
)> {
    let database = TestDatabase::create().await?;
    let nats = TestNats::start().await?;
    let logs = tempfile::tempdir()?;
    let (services, ports) =
        integration_tests::chaos::start_services(&database.url, &nats.url, logs.path(), extra)
            .await?;
    let deps = Deps {
        database,
        nats,
        _logs: logs,
    };
    Ok((deps, services, ports))
}

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
        // The OpenTelemetry variables too, instead of the SDK's silent fallback.
        ("deal-service", "OTEL_TRACES_SAMPLER", "sometimes"),
        ("distributor", "OTEL_EXPORTER_OTLP_ENDPOINT", "not-a-url"),
        ("reporting", "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        (
            "tunnel-listener",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://collector:4317",
        ),
        ("deal-service", "OTEL_METRIC_EXPORT_INTERVAL", "0"),
    ];
    for (service, variable, value) in cases {
        let output = Command::new(service_bin(service)?)
            .arg("serve")
            .env("SALESPLAN_ENV", "development")
            .env(variable, value)
            .output()?;
        assert_eq!(output.status.code(), Some(64), "{service}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{service}: {stderr}");
    }
    // Outside development, no key means no start: a token anyone can sign would open
    // every account.
    for service in [
        "deal-service",
        "tunnel-listener",
        "distributor",
        "reporting",
    ] {
        let output = Command::new(service_bin(service)?)
            .arg("serve")
            .env_remove("SALESPLAN_ENV")
            .env_remove("SALESPLAN_JWT_HS256_SECRET")
            .env_remove("SALESPLAN_JWT_RS256_PUBLIC_KEY_FILES")
            .output()?;
        assert_eq!(output.status.code(), Some(64), "{service}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("SALESPLAN_JWT_HS256_SECRET"),
            "{service}: {stderr}"
        );
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
        .env("SALESPLAN_ENV", "development")
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
    let exited = tokio::task::spawn_blocking(move || child.wait());
    let status = tokio::time::timeout(Duration::from_secs(60), exited)
        .await
        .map_err(|_| anyhow::anyhow!("the service did not exit within 60 s of SIGTERM"))???;
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

/// The four binaries configured as in production: RS256 keys read from files, no HS256
/// secret. A lead signed with the private key becomes an assigned deal (the listener's
/// plan look-ups and the distributor's calls are signed with the same key); a token
/// signed with the development secret is refused everywhere.
#[tokio::test]
async fn rs256_keys_from_files_carry_a_lead_to_its_deal() -> anyhow::Result<()> {
    use integration_tests::api::{Mode, Strategy, create_plan, lead_json, plan_request};
    use salesplan_platform::{
        Actor, Permission, auth::TokenIssuer, config::AuthConfig, grpc::outgoing,
    };
    use salesplan_proto::v1::{self as pb, deal_service_client::DealServiceClient};
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../services/platform/tests/fixtures");
    let (private, public) = (
        fixtures.join("rs256-test-private.pem"),
        fixtures.join("rs256-test-public.pem"),
    );
    // As the manifests have it: the listener signs its look-ups with a key of its own,
    // which deal-service accepts for `platform:lookup` only.
    let (listener_private, listener_public) = (
        fixtures.join("rs256-listener-test-private.pem"),
        fixtures.join("rs256-listener-test-public.pem"),
    );
    let database = TestDatabase::create().await?;
    let nats = TestNats::start().await?;
    let logs = tempfile::tempdir()?;
    let (mut services, ports) = integration_tests::chaos::start_services_with(
        &database.url,
        &nats.url,
        logs.path(),
        &[(
            "SALESPLAN_JWT_RS256_PUBLIC_KEY_FILES",
            &public.display().to_string(),
        )],
        |service| {
            let key = |k: &str, v: &std::path::Path| (k.to_owned(), v.display().to_string());
            match service {
                "tunnel-listener" => vec![key(
                    "SALESPLAN_JWT_RS256_PRIVATE_KEY_FILE",
                    &listener_private,
                )],
                "deal-service" => vec![
                    key("SALESPLAN_JWT_RS256_PRIVATE_KEY_FILE", &private),
                    (
                        "SALESPLAN_JWT_RS256_LIMITED_KEY_FILES".to_owned(),
                        format!("{}=platform:lookup", listener_public.display()),
                    ),
                ],
                _ => vec![key("SALESPLAN_JWT_RS256_PRIVATE_KEY_FILE", &private)],
            }
        },
    )
    .await?;
    let issuer = TokenIssuer::rs256_pem(&std::fs::read(&private)?)?;
    let token = |user: &str, perms: &[Permission]| {
        issuer.issue(
            &Actor::new("acme", user, perms.iter().copied()),
            Duration::from_secs(600),
        )
    };
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", ports.deal))?
            .connect()
            .await?;
    let plan = create_plan(
        channel.clone(),
        &token("admin", &[Permission::PlansAdmin])?,
        plan_request("Keys", Mode::Auto, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let webhook = format!(
        "http://127.0.0.1:{}/v1/tunnel-actions/add-to-sales-plan",
        ports.http
    );
    let http = reqwest::Client::new();
    let sent = http
        .post(&webhook)
        .bearer_auth(token("funnel", &[Permission::IntakeWrite])?)
        .json(&lead_json(&plan.id, "run-1", "c-1"))
        .send()
        .await?;
    assert_eq!(sent.status(), 202);
    let viewer = token(
        "viewer",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    )?;
    let deals = integration_tests::stack::eventually(Duration::from_secs(20), || async {
        let deals = integration_tests::api::all_deals(
            channel.clone(),
            &viewer,
            pb::DealFilter {
                plan_id: plan.id.clone(),
                ..Default::default()
            },
        )
        .await?;
        Ok((!deals.is_empty()).then_some(deals))
    })
    .await?;
    assert_eq!(deals.len(), 1);
    assert_eq!(deals[0].manager_id.as_deref(), Some("m1"));

    // The development secret opens nothing here.
    let dev = TokenIssuer::hs256(AuthConfig::DEV_SECRET.as_bytes()).issue(
        &Actor::new("acme", "x", Permission::ALL),
        Duration::from_secs(600),
    )?;
    let refused = http
        .post(&webhook)
        .bearer_auth(&dev)
        .json(&lead_json(&plan.id, "run-2", "c-2"))
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    let err = DealServiceClient::new(channel.clone())
        .get_deal(outgoing(
            pb::GetDealRequest {
                deal_id: deals[0].id.clone(),
                ..Default::default()
            },
            &dev,
        ))
        .await
        .expect_err("a development token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // The listener's key opens the look-ups and nothing else, whoever its token names.
    let listener = TokenIssuer::rs256_pem(&std::fs::read(&listener_private)?)?;
    for perms in [&[Permission::PlatformLookup][..], &[]] {
        let limited = listener.issue(
            &Actor::new("acme", "m1", perms.iter().copied()),
            Duration::from_secs(600),
        )?;
        let refused = limited_calls(&channel, &limited, &plan, &deals[0]).await;
        assert_eq!(
            refused
                .iter()
                .filter(|(_, code)| *code != tonic::Code::PermissionDenied)
                .count(),
            0,
            "{perms:?}: {refused:?}"
        );
    }
    let lookup = listener.issue(
        &Actor::new("acme", "tunnel-listener", [Permission::PlatformLookup]),
        Duration::from_secs(600),
    )?;
    let mut plans = PlanServiceClient::new(channel.clone());
    let found = plans
        .get_plan(outgoing(
            pb::GetPlanRequest {
                plan_id: plan.id.clone(),
                with_availability: false,
            },
            &lookup,
        ))
        .await?
        .into_inner()
        .plan;
    assert_eq!(found.map(|p| p.id), Some(plan.id.clone()));
    for service in &mut services {
        service.kill().await?;
    }
    Ok(())
}

/// Every deal-service call but the look-ups, made with `token`: each one's code.
async fn limited_calls(
    channel: &tonic::transport::Channel,
    token: &str,
    plan: &salesplan_proto::v1::Plan,
    deal: &salesplan_proto::v1::Deal,
) -> Vec<(&'static str, tonic::Code)> {
    use salesplan_platform::grpc::outgoing;
    use salesplan_proto::v1::{self as pb, deal_service_client::DealServiceClient};
    let mut deals = DealServiceClient::new(channel.clone());
    let mut plans = PlanServiceClient::new(channel.clone());
    let code = |r: Result<_, tonic::Status>| r.err().map_or(tonic::Code::Ok, |s| s.code());
    vec![
        (
            "CreateDeal (new)",
            code(
                deals
                    .create_deal(outgoing(
                        pb::CreateDealRequest {
                            plan_id: plan.id.clone(),
                            title: "injected".into(),
                            manager_id: Some("m1".into()),
                            contact: Some(pb::Contact {
                                external_id: "c-1".into(),
                                ..Default::default()
                            }),
                            idempotency_key: "injected".into(),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .map(drop),
            ),
        ),
        (
            "CreateDeal (replay)",
            code(
                deals
                    .create_deal(outgoing(
                        pb::CreateDealRequest {
                            plan_id: plan.id.clone(),
                            contact: Some(pb::Contact {
                                external_id: "c-1".into(),
                                ..Default::default()
                            }),
                            idempotency_key: deal.idempotency_key.clone(),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .map(drop),
            ),
        ),
        (
            "UpdateDeal",
            code(
                deals
                    .update_deal(outgoing(
                        pb::UpdateDealRequest {
                            deal_id: deal.id.clone(),
                            expected_version: deal.version,
                            title: Some("defaced".into()),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .map(drop),
            ),
        ),
        (
            "MoveDeal",
            code(
                deals
                    .move_deal(outgoing(
                        pb::MoveDealRequest {
                            deal_id: deal.id.clone(),
                            expected_version: deal.version,
                            stage_id: deal.stage_id.clone(),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .map(drop),
            ),
        ),
        (
            "ListDeals",
            code(
                deals
                    .list_deals(outgoing(pb::ListDealsRequest::default(), token))
                    .await
                    .map(drop),
            ),
        ),
        (
            "GetDeal by id",
            code(
                deals
                    .get_deal(outgoing(
                        pb::GetDealRequest {
                            deal_id: deal.id.clone(),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .map(drop),
            ),
        ),
        (
            "ArchivePlan",
            code(
                plans
                    .archive_plan(outgoing(
                        pb::ArchivePlanRequest {
                            plan_id: plan.id.clone(),
                        },
                        token,
                    ))
                    .await
                    .map(drop),
            ),
        ),
    ]
}

/// A plan of "acme" (AUTO round robin over `members`) and a bulk add of `contacts` to it
/// through the listener's AddAudience, in chunks of `chunk`, every chunk answered.
async fn bulk_add(
    ports: &integration_tests::chaos::Ports,
    name: &str,
    members: &[&str],
    contacts: usize,
    chunk: usize,
) -> anyhow::Result<salesplan_proto::v1::Plan> {
    use integration_tests::api::{Mode, Strategy, plan_request};
    let request = plan_request(name, Mode::Auto, Strategy::RoundRobin, false, members);
    bulk_add_to(ports, request, contacts, chunk).await
}

/// [`bulk_add`] to a plan made by `request`.
async fn bulk_add_to(
    ports: &integration_tests::chaos::Ports,
    request: salesplan_proto::v1::CreatePlanRequest,
    contacts: usize,
    chunk: usize,
) -> anyhow::Result<salesplan_proto::v1::Plan> {
    use futures::StreamExt as _;
    use integration_tests::api::{audience_chunks, create_plan};
    use salesplan_platform::{Actor, Permission, auth::TokenIssuer, config::AuthConfig};
    use salesplan_proto::v1::intake_service_client::IntakeServiceClient;
    let issuer = TokenIssuer::hs256(AuthConfig::DEV_SECRET.as_bytes());
    let token = |perms: &[Permission]| {
        issuer.issue(
            &Actor::new("acme", "ops", perms.iter().copied()),
            Duration::from_secs(600),
        )
    };
    let channel = |port: u16| async move {
        anyhow::Ok(
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
                .connect()
                .await?,
        )
    };
    let plan = create_plan(
        channel(ports.deal).await?,
        &token(&[Permission::PlansAdmin])?,
        request,
    )
    .await?;
    let run = plan.name.to_ascii_lowercase();
    let chunks = audience_chunks(&plan.id, &run, contacts, chunk, |i| format!("c-{i}"));
    let mut answers = IntakeServiceClient::new(channel(ports.intake).await?)
        .add_audience(salesplan_platform::grpc::outgoing(
            futures::stream::iter(chunks),
            &token(&[Permission::IntakeWrite])?,
        ))
        .await?
        .into_inner();
    while let Some(answer) = answers.next().await {
        answer?;
    }
    Ok(plan)
}

/// Bulk leads delivered to the distributor and not acknowledged yet (over every consumer
/// of the bulk lane).
async fn in_hand(js: &async_nats::jetstream::Context) -> anyhow::Result<usize> {
    use futures::StreamExt as _;
    let stream = js
        .get_stream(salesplan_platform::bus::streams::BULK.name)
        .await?;
    let mut consumers = stream.consumers();
    let mut held = 0;
    while let Some(info) = consumers.next().await {
        held += info?.num_ack_pending;
    }
    Ok(held)
}

/// Deals of the account "acme": how many, and how many distinct idempotency keys.
async fn made(pool: &sqlx::PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*), count(DISTINCT idempotency_key) FROM deal_service.deals
         WHERE account_id = 'acme'",
    )
    .fetch_one(pool)
    .await?)
}

/// SIGTERM while a bulk add is being turned into deals: the distributor, then deal-service
/// (under the distributor's CreateDeals calls), each drains and exits 0, and once they are
/// back every contact is exactly one deal, round robin exact: the batches in hand were
/// finished or handed back, never applied twice.
#[tokio::test]
async fn sigterm_with_work_in_flight_loses_and_doubles_nothing() -> anyhow::Result<()> {
    const CONTACTS: usize = 6_000;
    let (deps, mut services, ports) = start_binaries(
        // Small batches: many in flight while the stops come.
        &[("SALESPLAN_CONSUMER_BATCH", "50")],
    )
    .await?;
    let members = ["m1", "m2", "m3"];
    bulk_add(&ports, "Drain", &members, CONTACTS, 1_000).await?;

    let pool = sqlx::PgPool::connect(&deps.database.url).await?;
    let js = async_nats::jetstream::new(async_nats::connect(&deps.nats.url).await?);
    // services: deal-service, distributor, reporting, tunnel-listener.
    let mut last = 0;
    for (index, name) in [(1, "distributor"), (0, "deal-service")] {
        // Stopped while deals are being made (more than at the last stop) and while the
        // distributor holds bulk leads it has not acknowledged yet (seen just before the
        // signal: with batches of 50 out of 6,000, it still holds some when it lands).
        let before = integration_tests::stack::eventually(Duration::from_secs(30), || async {
            let (count, _) = made(&pool).await?;
            let held = in_hand(&js).await?;
            Ok((count > last && held > 0).then_some((count, held)))
        })
        .await?;
        let status = services[index].stop(Duration::from_secs(20)).await?;
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{name} drained");
        let (at_stop, _) = made(&pool).await?;
        assert!(
            at_stop < CONTACTS as i64,
            "{name} was stopped with work in flight ({before:?} deals and leads in hand \
             before, {at_stop} deals after)"
        );
        last = at_stop;
        services[index].start().await?;
    }

    integration_tests::stack::eventually(Duration::from_secs(60), || async {
        let (count, _) = made(&pool).await?;
        Ok((count >= CONTACTS as i64).then_some(()))
    })
    .await?;
    let (count, distinct) = made(&pool).await?;
    assert_eq!((count, distinct), (CONTACTS as i64, CONTACTS as i64));
    let per_manager: Vec<(String, i64)> = sqlx::query_as(
        "SELECT manager_id, count(*) FROM deal_service.deals WHERE account_id = 'acme'
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?;
    let even = (CONTACTS / members.len()) as i64;
    assert_eq!(
        per_manager,
        members.map(|m| (m.to_owned(), even)).to_vec(),
        "round robin stays exact"
    );
    for service in &mut services {
        service.kill().await?;
    }
    Ok(())
}

/// The servers as the prod overlay runs them: reflection off, a bounded number of calls
/// per connection, and a scanner's paths counted as one `method` value.
#[tokio::test]
async fn servers_hide_reflection_bound_streams_and_method_labels() -> anyhow::Result<()> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let metrics_port = integration_tests::ports::reserve()?;
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let (_deps, mut services, ports) = start_binaries(&[
        ("SALESPLAN_GRPC_REFLECTION", "false"),
        ("SALESPLAN_GRPC_MAX_STREAMS", "7"),
    ])
    .await?;
    // Only deal-service gets the metrics address (one port, one process).
    let deal = &mut services[0];
    deal.stop(Duration::from_secs(10)).await?;
    deal.env
        .push(("SALESPLAN_METRICS_ADDR".into(), metrics_addr.clone()));
    deal.start().await?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", ports.deal))?
            .connect()
            .await?;

    let reflection = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await;
    let code = match reflection {
        Err(status) => status.code(),
        Ok(mut stream) => match futures::StreamExt::next(stream.get_mut()).await {
            Some(Err(status)) => status.code(),
            other => anyhow::bail!("reflection answered while switched off: {other:?}"),
        },
    };
    assert_eq!(code, tonic::Code::Unimplemented);

    // The server's HTTP/2 settings allow 7 calls at once on a connection.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports.deal)).await?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(connection);
    let mut client = client.ready().await?;

    // Made-up paths, as a scanner sends them: refused, counted as one
    // `method` value.
    for path in ["/scan.Me/A", "/scan.Me/B", "/salesplan.v1.DealService/Nope"] {
        let request = tonic::codegen::http::Request::post(format!("http://127.0.0.1{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let (response, _) = client.send_request(request, true)?;
        let response = response.await?;
        let status = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        // UNIMPLEMENTED, or UNAUTHENTICATED where a known service checks the token first.
        assert!(
            matches!(status.as_deref(), Some("12" | "16")),
            "{path}: {status:?}"
        );
        client = client.ready().await?;
    }
    // By now the server's SETTINGS frame has been applied.
    assert_eq!(client.current_max_send_streams(), 7);
    let metrics = integration_tests::stack::eventually(Duration::from_secs(10), || async {
        let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await?
            .text()
            .await?;
        Ok(text.contains("method=\"unknown\"").then_some(text))
    })
    .await?;
    assert!(
        !metrics.contains("scan.Me"),
        "a scanner's path became a label"
    );
    assert!(
        !metrics.contains("/Nope"),
        "an unknown method became a label"
    );
    for service in &mut services {
        service.stop(Duration::from_secs(10)).await?;
    }
    Ok(())
}

/// A client that sends a request's headers or body too slowly is cut off: the connection
/// closed after the header deadline, 408 after the body deadline.
#[tokio::test]
async fn the_webhook_cuts_off_slow_clients() -> anyhow::Result<()> {
    use salesplan_platform::{Actor, Permission, auth::TokenIssuer, config::AuthConfig};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (_deps, mut services, ports) = start_binaries(&[
        ("SALESPLAN_WEBHOOK_HEADER_TIMEOUT_MS", "500"),
        ("SALESPLAN_WEBHOOK_BODY_TIMEOUT_MS", "500"),
    ])
    .await?;
    // What the server sends back on a connection before closing it, and how long it took.
    async fn answer(mut tcp: tokio::net::TcpStream) -> anyhow::Result<(String, Duration)> {
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got)).await??;
        Ok((
            String::from_utf8_lossy(&got).into_owned(),
            started.elapsed(),
        ))
    }

    let mut slow_headers = tokio::net::TcpStream::connect(("127.0.0.1", ports.http)).await?;
    slow_headers
        .write_all(b"POST /v1/tunnel-actions/add-to-sales-plan HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let (text, took) = answer(slow_headers).await?;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert!(took < Duration::from_secs(5), "closed after {took:?}");

    let token = TokenIssuer::hs256(AuthConfig::DEV_SECRET.as_bytes()).issue(
        &Actor::new("acme", "funnel", [Permission::IntakeWrite]),
        Duration::from_secs(60),
    )?;
    let mut slow_body = tokio::net::TcpStream::connect(("127.0.0.1", ports.http)).await?;
    slow_body
        .write_all(
            format!(
                "POST /v1/tunnel-actions/add-to-sales-plan HTTP/1.1\r\nHost: x\r\n\
                 Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\n\r\n{{\"plan_id\":"
            )
            .as_bytes(),
        )
        .await?;
    let (text, took) = answer(slow_body).await?;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    for service in &mut services {
        service.stop(Duration::from_secs(10)).await?;
    }
    Ok(())
}

/// The roles of deploy/k8s/postgres/roles.sql (renamed for this test: roles are the
/// server's, not the database's), their passwords set; the URL of each on `database`.
struct Roles {
    prefix: String,
    admin_url: String,
}

impl Roles {
    const PASSWORD: &str = "role-test";

    async fn create(database: &TestDatabase) -> anyhow::Result<Self> {
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let script = include_str!("../../deploy/k8s/postgres/roles.sql")
            .replace("salesplan_", &format!("{prefix}_"));
        let admin = sqlx::PgPool::connect(&database.url).await?;
        // As PostgreSQL before 15 had it: everyone may create in `public` (the script
        // takes that away).
        sqlx::raw_sql("GRANT CREATE ON SCHEMA public TO PUBLIC")
            .execute(&admin)
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(script.clone()))
            .execute(&admin)
            .await?;
        // Run again: the script is safe to repeat.
        sqlx::raw_sql(sqlx::AssertSqlSafe(script))
            .execute(&admin)
            .await?;
        for role in [
            "deal_service",
            "distributor",
            "reporting",
            "reporting_verify",
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER ROLE {prefix}_{role} PASSWORD '{}'",
                Self::PASSWORD
            )))
            .execute(&admin)
            .await?;
        }
        // A role of the server that is none of these.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {prefix}_stranger LOGIN PASSWORD '{}'",
            Self::PASSWORD
        )))
        .execute(&admin)
        .await?;
        admin.close().await;
        Ok(Self {
            prefix,
            admin_url: integration_tests::postgres::admin_url(),
        })
    }

    /// `url` (the test database) as the role `role` (e.g. `deal_service`).
    fn url(&self, url: &str, role: &str) -> String {
        integration_tests::postgres::with_user(
            url,
            &format!("{}_{role}", self.prefix),
            Self::PASSWORD,
        )
    }

    /// Drops the roles (after their database: nothing of theirs is left then).
    async fn drop(self) -> anyhow::Result<()> {
        let admin = sqlx::PgPool::connect(&self.admin_url).await?;
        for role in [
            "deal_service",
            "distributor",
            "reporting",
            "reporting_verify",
            "stranger",
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP ROLE IF EXISTS {}_{role}",
                self.prefix
            )))
            .execute(&admin)
            .await?;
        }
        Ok(())
    }
}

/// The SQLSTATE of the first statement of `statements` (`;`-separated, each its own
/// transaction) that fails when run as `url`: `None` when all succeed.
async fn sqlstate_as(url: &str, statements: &str) -> anyhow::Result<Option<String>> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    for statement in statements.split("; ") {
        let result = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&mut conn)
            .await;
        match result {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) => return Ok(e.code().map(|c| c.into_owned())),
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(None)
}

/// Each service migrates and runs as a role of its own (deploy/k8s/postgres/roles.sql, run
/// over a schema made before the roles, and run twice): a lead becomes a deal through all
/// of them, `reporting verify` reads deal-service's deals
/// through the read-only role, and no role reaches a schema that is not its own.
#[tokio::test]
async fn each_service_runs_as_its_own_role_and_reaches_no_other_schema() -> anyhow::Result<()> {
    const DENIED: &str = "42501";
    let database = TestDatabase::create().await?;
    // deal-service's schema as a deployment from before the roles has it: created by the
    // database's owner. roles.sql hands it over with everything in it.
    let status = Command::new(service_bin("deal-service")?)
        .arg("migrate")
        .env("SALESPLAN_ENV", "development")
        .env("DATABASE_URL", &database.url)
        .status()?;
    assert!(
        status.success(),
        "deal-service migrate as the owner: {status}"
    );
    let roles = Roles::create(&database).await?;
    let role_of = |service: &str| match service {
        "deal-service" => Some("deal_service"),
        "distributor" => Some("distributor"),
        "reporting" => Some("reporting"),
        _ => None,
    };
    // Each migrates as its role (the manifests' `migrate` Job), then serves as it.
    for service in ["deal-service", "distributor", "reporting"] {
        let status = Command::new(service_bin(service)?)
            .arg("migrate")
            .env("SALESPLAN_ENV", "development")
            .env(
                "DATABASE_URL",
                roles.url(&database.url, role_of(service).unwrap_or("")),
            )
            .status()?;
        assert!(status.success(), "{service} migrate as its role: {status}");
    }
    let nats = TestNats::start().await?;
    let logs = tempfile::tempdir()?;
    let (mut services, ports) = integration_tests::chaos::start_services_with(
        &database.url,
        &nats.url,
        logs.path(),
        &[("SALESPLAN_MIGRATE_ON_START", "false")],
        |service| {
            role_of(service)
                .map(|role| vec![("DATABASE_URL".to_owned(), roles.url(&database.url, role))])
                .unwrap_or_default()
        },
    )
    .await?;

    bulk_add(&ports, "Roles", &["m1", "m2"], 10, 10).await?;
    // Read as the verify role: it sees deal-service's deals.
    let verify_url = roles.url(&database.url, "reporting_verify");
    let reader = sqlx::PgPool::connect(&verify_url).await?;
    integration_tests::stack::eventually(Duration::from_secs(30), || async {
        let (count, _) = made(&reader).await?;
        Ok((count == 10).then_some(()))
    })
    .await?;
    reader.close().await;
    let verify = Command::new(service_bin("reporting")?)
        .arg("verify")
        .env("SALESPLAN_ENV", "development")
        .env("DATABASE_URL", roles.url(&database.url, "reporting"))
        .env("SALESPLAN_DEAL_DATABASE_URL", &verify_url)
        .output()?;
    assert!(
        verify.status.success(),
        "reporting verify as its roles: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // Nothing beyond its own schema.
    let tries = [
        (
            "deal_service",
            "SELECT 1 FROM distributor.assignments LIMIT 1",
        ),
        ("deal_service", "SELECT 1 FROM reporting.deals LIMIT 1"),
        ("deal_service", "CREATE SCHEMA intruder"),
        ("deal_service", "CREATE TABLE public.intruder (x int)"),
        ("distributor", "SELECT 1 FROM deal_service.deals LIMIT 1"),
        ("distributor", "DELETE FROM reporting.deals"),
        ("reporting", "SELECT 1 FROM deal_service.deals LIMIT 1"),
        ("reporting", "UPDATE distributor.plans SET archived = true"),
        (
            "reporting_verify",
            "SELECT 1 FROM distributor.assignments LIMIT 1",
        ),
        ("reporting_verify", "SELECT 1 FROM reporting.deals LIMIT 1"),
        // Read-only twice over: no right to write, even with read-only switched off.
        (
            "reporting_verify",
            "SET default_transaction_read_only = off; UPDATE deal_service.deals SET title = 'x'",
        ),
    ];
    for (role, statement) in tries {
        let code = sqlstate_as(&roles.url(&database.url, role), statement).await?;
        assert_eq!(code.as_deref(), Some(DENIED), "{role}: {statement}");
    }
    let code = sqlstate_as(&verify_url, "UPDATE deal_service.deals SET title = 'x'").await?;
    assert_eq!(
        code.as_deref(),
        Some("25006"),
        "verify's transactions are read-only"
    );
    // A table deal-service's migrations add later: verify reads it too.
    let added = sqlstate_as(
        &roles.url(&database.url, "deal_service"),
        "CREATE TABLE deal_service.added_later (x int)",
    )
    .await?;
    assert_eq!(added, None);
    let read = sqlstate_as(&verify_url, "SELECT count(*) FROM deal_service.added_later").await?;
    assert_eq!(read, None, "verify reads what deal-service adds");
    // Only these roles connect to the database.
    let stranger = sqlstate_as(&roles.url(&database.url, "stranger"), "SELECT 1").await;
    assert!(
        stranger
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("permission denied for database")),
        "{stranger:?}"
    );
    // Its own schema it owns: the control that the refusals above are about rights.
    let own = sqlstate_as(
        &roles.url(&database.url, "distributor"),
        "SELECT count(*) FROM distributor.assignments",
    )
    .await?;
    assert_eq!(own, None);

    for service in &mut services {
        service.stop(Duration::from_secs(10)).await?;
    }
    drop(database);
    roles.drop().await
}

/// Response deadlines are durable (issue 20): the distributor is killed (SIGKILL) while it
/// holds deadlines that ran out, in the middle of reassigning them (deal-service frozen
/// under its calls). Started again, it takes them over once their lease runs out: every
/// deal is reassigned once per missed deadline (two deadlines, one reassignment, then a
/// person), none twice, none forgotten, and no timer is left.
#[tokio::test]
async fn a_killed_distributor_loses_and_doubles_no_response_deadline() -> anyhow::Result<()> {
    use integration_tests::api::{Mode, Strategy, plan_request};
    const DEALS: usize = 6;
    let (deps, mut services, ports) =
        start_binaries(&[("SALESPLAN_DEADLINE_LEASE_SECONDS", "3")]).await?;
    let pool = sqlx::PgPool::connect(&deps.database.url).await?;
    let mut request = plan_request(
        "Deadlines",
        Mode::Auto,
        Strategy::RoundRobin,
        false,
        &["m1", "m2", "m3"],
    );
    if let Some(d) = request.distribution.as_mut() {
        d.response_deadline_seconds = 2;
        d.max_reassignments = 1;
    }
    bulk_add_to(&ports, request, DEALS, DEALS).await?;
    let running = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM distributor.response_timers")
            .fetch_one(&pool)
            .await?;
        anyhow::Ok(n)
    };
    integration_tests::stack::eventually(Duration::from_secs(30), || async {
        Ok((running().await? == DEALS as i64).then_some(()))
    })
    .await?;
    // services: deal-service, distributor, reporting, tunnel-listener.
    services[0].signal("STOP").await?;
    let frozen = async {
        // Leased (in hand, its calls hanging) by the distributor about to be killed.
        integration_tests::stack::eventually(Duration::from_secs(30), || async {
            let leased: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM distributor.response_timers
                 WHERE attempts > 0 AND next_attempt > now()",
            )
            .fetch_one(&pool)
            .await?;
            Ok((leased > 0).then_some(leased))
        })
        .await
    }
    .await;
    services[1].kill().await?;
    services[0].signal("CONT").await?;
    let leased = frozen?;
    services[1].start().await?;

    let escalated = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deal_service.deals WHERE escalated_at IS NOT NULL",
        )
        .fetch_one(&pool)
        .await?;
        anyhow::Ok(n)
    };
    integration_tests::stack::eventually(Duration::from_secs(60), || async {
        Ok((escalated().await? == DEALS as i64 && running().await? == 0).then_some(()))
    })
    .await?;
    // Per deal: the distributor's reassignments, each with its note.
    let steps: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT d.idempotency_key,
            count(*) FILTER (WHERE h.to_value IS NOT NULL),
            count(*) FILTER (WHERE h.to_value IS NULL)
         FROM deal_service.deals d JOIN deal_service.deal_history h ON h.deal_id = d.id
         WHERE h.detail ? 'note' AND h.actor_id = 'system:distributor'
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(steps.len(), DEALS, "{steps:?}");
    for (deal, reassigned, escalations) in &steps {
        assert_eq!(
            (*reassigned, *escalations),
            (1, 1),
            "deal {deal} ({leased} leased at the kill)"
        );
    }
    let chains: Vec<i64> =
        sqlx::query_scalar("SELECT count(*) FROM distributor.response_misses GROUP BY deal_id")
            .fetch_all(&pool)
            .await?;
    assert_eq!(chains, vec![2; DEALS]);
    // And each deal's explanation is its escalation, naming both missed deadlines.
    let explanations: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT explanation FROM distributor.assignments WHERE account_id = 'acme'",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(explanations.len(), DEALS);
    for bytes in explanations {
        use prost::Message as _;
        let explained = salesplan_proto::v1::Assignment::decode(bytes.as_slice())?;
        assert_eq!(
            (explained.missed_deadlines.len(), explained.manager_id),
            (2, None),
            "{}",
            explained.reason
        );
    }
    for service in &mut services {
        service.kill().await?;
    }
    Ok(())
}

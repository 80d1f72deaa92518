//! The bus locked down: a nats-server with the users and permissions of the Helm values
//! (`deploy/k8s/nats/values.yaml`, read from that file), every service as its own user.
//! The whole pipeline works under those permissions; no service can publish where it has
//! no business, touch another's consumers, or read what is delivered to another; a service without or with wrong credentials stops at start with exit 69
//! naming the setting, and no password ever reaches its output.

use std::{path::PathBuf, process::Command, time::Duration};

use integration_tests::{
    TestDatabase, TestNats,
    api::{Mode, Strategy, create_plan, lead_json, plan_request},
    chaos::{sibling_binary, start_services_with},
};
use salesplan_platform::{Actor, Permission, auth::TokenIssuer, config::AuthConfig};

const SERVICES: [&str; 4] = [
    "tunnel-listener",
    "distributor",
    "deal-service",
    "reporting",
];

/// The broker's users: the services, and the operator's one for `scrub-events`.
const USERS: [&str; 5] = [
    "tunnel-listener",
    "distributor",
    "deal-service",
    "reporting",
    "maintenance",
];

fn password(service: &str) -> String {
    format!("pw-{service}-7f3a")
}

/// The `authorization` block of the Helm values (JSON between the markers), with each
/// service's test password in place of the chart's variable.
fn authorization() -> anyhow::Result<String> {
    let values = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/nats/values.yaml"),
    )?;
    let (_, rest) = values
        .split_once("# permissions: begin")
        .ok_or_else(|| anyhow::anyhow!("no `# permissions: begin` in the values"))?;
    let (block, _) = rest
        .split_once("# permissions: end")
        .ok_or_else(|| anyhow::anyhow!("no `# permissions: end` in the values"))?;
    let json = block
        .trim()
        .strip_prefix("authorization:")
        .ok_or_else(|| anyhow::anyhow!("the block is not `authorization: {{…}}`"))?;
    let mut json = json.to_owned();
    for service in USERS {
        let variable = format!(
            "<< $NATS_PASSWORD_{} >>",
            service.to_ascii_uppercase().replace('-', "_")
        );
        anyhow::ensure!(json.contains(&variable), "no {variable} in the values");
        json = json.replace(&variable, &password(service));
    }
    // Checked as JSON, so the file cannot drift into something only this test accepts.
    let parsed: serde_json::Value = serde_json::from_str(&json)?;
    anyhow::ensure!(parsed["users"].as_array().map(Vec::len) == Some(USERS.len()));
    Ok(format!("authorization: {json}\n"))
}

fn own_user(service: &str) -> Vec<(String, String)> {
    vec![
        ("SALESPLAN_NATS_USER".into(), service.into()),
        ("SALESPLAN_NATS_PASSWORD".into(), password(service)),
    ]
}

/// A client of `user` as the services connect (its own inbox prefix), and the errors the
/// server reports to it.
async fn connect_as(
    url: &str,
    user: &str,
) -> anyhow::Result<(
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
)> {
    let (sender, errors) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
        .custom_inbox_prefix(salesplan_platform::bus::inbox_prefix(user))
        .event_callback(move |event| {
            let sender = sender.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    let _ = sender.send(err.to_string());
                }
            }
        })
        .connect(url)
        .await?;
    Ok((client, errors))
}

/// Waits (at most 5 s) for the server's report that it refused `what` ("publish",
/// "subscription") on `subject`.
async fn refused(
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    what: &str,
    subject: &str,
) -> anyhow::Result<()> {
    let wanted = format!("permissions violation for {what} to \"{subject}\"").to_lowercase();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(error) = errors.recv().await {
            if error.to_lowercase().contains(&wanted) {
                return true;
            }
        }
        false
    })
    .await;
    anyhow::ensure!(seen == Ok(true), "no refusal reported");
    Ok(())
}

fn token(perms: &[Permission]) -> anyhow::Result<String> {
    Ok(TokenIssuer::hs256(AuthConfig::DEV_SECRET.as_bytes()).issue(
        &Actor::new("acme", "u", perms.iter().copied()),
        Duration::from_secs(600),
    )?)
}

/// Every service as its own user: a lead becomes a deal, assigned and reported.
#[tokio::test]
async fn every_service_works_as_its_own_user() -> anyhow::Result<()> {
    let nats = TestNats::start_with_config(&authorization()?).await?;
    let database = TestDatabase::create().await?;
    let logs = tempfile::tempdir()?;
    // The distributor, alone, is told to keep undecided leads two days: it changes the lanes
    // deal-service created (a week) under its own user.
    let (mut services, ports) =
        start_services_with(&database.url, &nats.url, logs.path(), &[], |service| {
            let mut env = own_user(service);
            if service == "distributor" {
                env.push(("SALESPLAN_INTAKE_RETENTION_HOURS".into(), "48".into()));
            }
            env
        })
        .await?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", ports.deal))?
            .connect()
            .await?;
    let plan = create_plan(
        channel,
        &token(&[Permission::PlansAdmin])?,
        plan_request("Bus", Mode::Auto, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let sent = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/v1/tunnel-actions/add-to-sales-plan",
            ports.http
        ))
        .bearer_auth(token(&[Permission::IntakeWrite])?)
        .json(&lead_json(&plan.id, "run-1", "c-1"))
        .send()
        .await?;
    assert_eq!(sent.status(), 202);
    // Assigned by the distributor, created by deal-service, applied by reporting.
    let pool = sqlx::PgPool::connect(&database.url).await?;
    let reported = integration_tests::stack::eventually(Duration::from_secs(30), || async {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT r.manager_id FROM reporting.deals r JOIN deal_service.deals d ON d.id = r.deal_id
             WHERE d.plan_id = $1",
        )
        .bind(uuid::Uuid::parse_str(&plan.id)?)
        .fetch_optional(&pool)
        .await?;
        Ok(row)
    })
    .await?;
    assert_eq!(reported.0, "m1");
    // The distributor set the age limit of the streams that hold leads (docs/privacy.md).
    let admin = async_nats::ConnectOptions::with_user_and_password(
        "maintenance".into(),
        password("maintenance"),
    )
    .custom_inbox_prefix(salesplan_platform::bus::inbox_prefix("maintenance"))
    .connect(&nats.url)
    .await?;
    let js = async_nats::jetstream::new(admin);
    for lane in [
        salesplan_platform::bus::streams::INTAKE,
        salesplan_platform::bus::streams::BULK,
        salesplan_platform::bus::streams::DEAD_LETTERS,
    ] {
        let config = js.get_stream(lane.name).await?.info().await?.config.clone();
        assert_eq!(
            config.max_age,
            Duration::from_secs(48 * 3600),
            "{}",
            lane.name
        );
    }
    for service in &mut services {
        let status = service.stop(Duration::from_secs(30)).await?;
        assert!(status.is_some_and(|s| s.success()), "{}", service.name);
    }
    // No password in any log.
    for entry in std::fs::read_dir(logs.path())? {
        let text = std::fs::read_to_string(entry?.path())?;
        for service in SERVICES {
            assert!(!text.contains(&password(service)), "a password in a log");
        }
    }
    Ok(())
}

/// What each user may not do: publish another service's events, or touch a stream.
#[tokio::test]
async fn no_service_can_publish_where_it_has_no_business() -> anyhow::Result<()> {
    let nats = TestNats::start_with_config(&authorization()?).await?;
    // The streams exist (deal-service's user may create them).
    let owner = salesplan_platform::bus::Bus::connect(
        &salesplan_platform::config::NatsConfig {
            security: salesplan_platform::config::NatsSecurity {
                user: Some((
                    "deal-service".into(),
                    salesplan_platform::config::Secret::new(password("deal-service")),
                )),
                ..Default::default()
            },
            ..salesplan_platform::config::NatsConfig::local(&nats.url)
        },
        "deal-service",
    )
    .await?;
    owner
        .ensure_streams(&salesplan_platform::bus::streams::ALL)
        .await?;
    // Publishing another service's events, or touching a stream or another service's
    // consumers (deleting, reading, or making one of its own on a stream not its job).
    let forbidden_publish = [
        ("tunnel-listener", "salesplan.deals.v1.acme.created"),
        ("tunnel-listener", "salesplan.plans.v1.acme.updated"),
        ("tunnel-listener", "$JS.API.STREAM.DELETE.SALESPLAN_DEALS"),
        ("tunnel-listener", "$JS.API.STREAM.PURGE.SALESPLAN_INTAKE"),
        (
            "tunnel-listener",
            "$JS.API.CONSUMER.CREATE.SALESPLAN_INTAKE.thief",
        ),
        ("distributor", "salesplan.deals.v1.acme.created"),
        ("distributor", "salesplan.intake.v1.acme.p"),
        (
            "distributor",
            "$JS.API.CONSUMER.DELETE.SALESPLAN_DEALS.reporting-deals",
        ),
        (
            "distributor",
            "$JS.API.CONSUMER.CREATE.SALESPLAN_DEALS.thief",
        ),
        ("distributor", "$JS.API.STREAM.DELETE.SALESPLAN_DEALS"),
        // It sets the age limit of the streams that hold leads, and no other's.
        ("distributor", "$JS.API.STREAM.UPDATE.SALESPLAN_DEALS"),
        ("distributor", "$JS.API.STREAM.UPDATE.SALESPLAN_PLANS"),
        ("deal-service", "$JS.API.STREAM.UPDATE.SALESPLAN_INTAKE"),
        ("tunnel-listener", "$JS.API.STREAM.UPDATE.SALESPLAN_INTAKE"),
        ("deal-service", "salesplan.intake.v1.acme.p"),
        ("deal-service", "salesplan.assignments.v1.acme.decided"),
        ("deal-service", "$JS.API.STREAM.PURGE.SALESPLAN_DEALS"),
        // Only the maintenance user deletes deal events; the distributor deletes nothing
        // (decided leads stay until the lane's age limit) and no one purges.
        ("deal-service", "$JS.API.STREAM.MSG.DELETE.SALESPLAN_DEALS"),
        ("distributor", "$JS.API.STREAM.MSG.DELETE.SALESPLAN_DEALS"),
        ("distributor", "$JS.API.STREAM.MSG.DELETE.SALESPLAN_INTAKE"),
        ("distributor", "$JS.API.STREAM.PURGE.SALESPLAN_INTAKE"),
        ("maintenance", "$JS.API.STREAM.PURGE.SALESPLAN_DEALS"),
        (
            "distributor",
            "$JS.API.STREAM.MSG.DELETE.SALESPLAN_DEAD_LETTERS",
        ),
        (
            "tunnel-listener",
            "$JS.API.STREAM.MSG.DELETE.SALESPLAN_INTAKE",
        ),
        ("maintenance", "$JS.API.STREAM.MSG.DELETE.SALESPLAN_INTAKE"),
        ("maintenance", "salesplan.intake.v1.acme.p"),
        (
            "deal-service",
            "$JS.API.CONSUMER.CREATE.SALESPLAN_DEALS.thief",
        ),
        ("reporting", "salesplan.deals.v1.acme.created"),
        ("reporting", "$JS.API.STREAM.DELETE.SALESPLAN_DEALS"),
        (
            "reporting",
            "$JS.API.CONSUMER.DELETE.SALESPLAN_INTAKE.distributor-intake",
        ),
        ("reporting", "$JS.API.CONSUMER.CREATE.SALESPLAN_BULK.thief"),
        (
            "reporting",
            "$JS.API.CONSUMER.DELETE.SALESPLAN_DEALS.distributor-deals",
        ),
        (
            "reporting",
            "$JS.API.CONSUMER.MSG.NEXT.SALESPLAN_DEALS.distributor-deals",
        ),
    ];
    for (user, subject) in forbidden_publish {
        let (client, mut errors) = connect_as(&nats.url, user).await?;
        client.publish(subject.to_owned(), "{}".into()).await?;
        client.flush().await?;
        refused(&mut errors, "publish", subject)
            .await
            .map_err(|e| e.context(format!("{user} published to {subject}")))?;
    }
    // Reading what the broker delivers to another service: every inbox but its own, or a
    // stream's subjects directly.
    let forbidden_subscribe = [
        ("tunnel-listener", "_INBOX.>"),
        ("tunnel-listener", "_INBOX_reporting.>"),
        ("reporting", "_INBOX_distributor.>"),
        ("distributor", "_INBOX_reporting.>"),
        ("deal-service", "_INBOX_distributor.>"),
        ("distributor", "salesplan.deals.v1.>"),
    ];
    for (user, subject) in forbidden_subscribe {
        let (client, mut errors) = connect_as(&nats.url, user).await?;
        let _subscription = client.subscribe(subject.to_owned()).await?;
        client.flush().await?;
        refused(&mut errors, "subscription", subject)
            .await
            .map_err(|e| e.context(format!("{user} subscribed to {subject}")))?;
    }
    // And what each may do, answered (so the refusals above are the permissions, not a
    // broken connection), through its own inbox.
    for (user, subject) in [
        ("tunnel-listener", "salesplan.intake.v1.acme.p"),
        ("distributor", "salesplan.assignments.v1.acme.decided"),
        ("deal-service", "salesplan.deals.v1.acme.created"),
    ] {
        let (client, _) = connect_as(&nats.url, user).await?;
        let js = async_nats::jetstream::new(client);
        js.publish(subject.to_owned(), "x".into()).await?.await?;
    }
    let stream_count = owner
        .last_sequence(&salesplan_platform::bus::streams::DEALS)
        .await?;
    assert_eq!(
        stream_count, 1,
        "only deal-service's event is in the deals stream"
    );
    Ok(())
}

/// No credentials, a wrong password, a wrong password in the URL: exit 69 naming the
/// setting, and the password nowhere in the output.
#[tokio::test]
async fn a_service_refused_by_nats_exits_69_naming_the_setting() -> anyhow::Result<()> {
    let nats = TestNats::start_with_config(&authorization()?).await?;
    let database = TestDatabase::create().await?;
    let port = nats.url.rsplit(':').next().unwrap_or_default().to_owned();
    let wrong = "not-the-password-91c2";
    let cases: [(Vec<(&str, String)>, &str); 3] = [
        (vec![], "SALESPLAN_NATS_USER"),
        (
            vec![
                ("SALESPLAN_NATS_USER", "deal-service".into()),
                ("SALESPLAN_NATS_PASSWORD", wrong.into()),
            ],
            "SALESPLAN_NATS_PASSWORD",
        ),
        (
            vec![(
                "NATS_URL",
                format!("nats://deal-service:{wrong}@127.0.0.1:{port}"),
            )],
            "NATS_URL",
        ),
    ];
    for (env, named) in cases {
        let mut command = Command::new(sibling_binary("deal-service")?);
        command
            .arg("serve")
            .env("SALESPLAN_ENV", "development")
            .env("DATABASE_URL", &database.url)
            .env("NATS_URL", &nats.url)
            .env("SALESPLAN_GRPC_ADDR", "127.0.0.1:0");
        for (key, value) in &env {
            command.env(key, value);
        }
        let output = command.output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.status.code(), Some(69), "{env:?}: {text}");
        assert!(text.contains(named), "{env:?} should name {named}: {text}");
        assert!(!text.contains(wrong), "the password in the output: {text}");
    }
    Ok(())
}

/// `deal-service scrub-events` (issue 19) deletes deal events: the `maintenance` user may,
/// deal-service's own user may not (it publishes them; a stolen password must not erase
/// what reporting rebuilds from).
#[tokio::test]
async fn only_the_maintenance_user_may_erase_deal_events() -> anyhow::Result<()> {
    use prost::Message as _;
    use salesplan_platform::{
        bus::{Bus, Outgoing, streams},
        config::{NatsConfig, NatsSecurity, Secret},
        privacy::ContactKeys,
    };
    use salesplan_proto::v1 as pb;
    let nats = TestNats::start_with_config(&authorization()?).await?;
    let as_user = |user: &str| NatsConfig {
        security: NatsSecurity {
            user: Some((user.into(), Secret::new(password(user)))),
            ..Default::default()
        },
        ..NatsConfig::local(&nats.url)
    };
    let owner = Bus::connect(&as_user("deal-service"), "deal-service").await?;
    owner.ensure_streams(&streams::ALL).await?;
    // An event as deal-service published them before: with the contact.
    let event = pb::DealEvent {
        event_id: "e1".into(),
        account_id: "acme".into(),
        deal: Some(pb::Deal {
            id: uuid::Uuid::new_v4().to_string(),
            contact: Some(pb::Contact {
                email: "anna@example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    owner
        .publish(Outgoing::new(
            streams::deal_subject("acme", "created"),
            "e1",
            event.encode_to_vec(),
        ))
        .await?;
    let keys = ContactKeys::dev();
    let refused = deal_service::events::scrub::scrub_deal_events(&owner, &keys).await;
    assert!(
        refused.is_err(),
        "deal-service's own user erased a deal event"
    );
    let maintenance = Bus::connect(&as_user("maintenance"), "maintenance").await?;
    let done = deal_service::events::scrub::scrub_deal_events(&maintenance, &keys).await?;
    assert_eq!(done.rewritten, 1);
    let stream = maintenance
        .jetstream()
        .get_stream(streams::DEALS.name)
        .await?;
    assert!(
        stream.get_raw_message(1).await.is_err(),
        "the original is gone"
    );
    // EraseContact, as deal-service's own user, reads and deletes a person's messages in
    // the intake lanes and the dead letters (and publishes no leads itself).
    let lead = pb::IntakeEvent {
        intake_id: "lead-1".into(),
        account_id: "acme".into(),
        lead: Some(pb::Lead {
            contact: Some(pb::Contact {
                email: "anna@example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let tunnel = Bus::connect(&as_user("tunnel-listener"), "tunnel-listener").await?;
    tunnel
        .publish(Outgoing::new(
            streams::intake_subject("acme", "p"),
            "lead-1",
            lead.encode_to_vec(),
        ))
        .await?;
    tunnel
        .publish(Outgoing::new(
            streams::bulk_subject("acme", "p"),
            "lead-2",
            pb::IntakeEvent {
                intake_id: "lead-2".into(),
                ..lead.clone()
            }
            .encode_to_vec(),
        ))
        .await?;
    // The same lead, dead-lettered by the distributor.
    let distributor = Bus::connect(&as_user("distributor"), "distributor").await?;
    let mut letter = Outgoing::new(
        streams::dead_letter_subject("distributor-intake", &streams::intake_subject("acme", "p")),
        "dead-1",
        lead.encode_to_vec(),
    );
    letter.headers.insert(
        salesplan_platform::bus::HEADER_ORIGINAL_SUBJECT,
        streams::intake_subject("acme", "p").as_str(),
    );
    distributor.publish(letter).await?;
    let known = keys.every_of("acme", "", "anna@example.com", "");
    let deleted = deal_service::events::lanes::delete_person(&owner, &keys, "acme", &known).await?;
    assert_eq!(
        (deleted.intake, deleted.bulk, deleted.dead_letters),
        (1, 1, 1)
    );
    Ok(())
}

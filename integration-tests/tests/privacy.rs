//! Personal data stays in deal-service (issue 19): deal events, the other streams and the
//! other services' tables hold no contact name, e-mail, phone or platform id; what the
//! related-manager rule needs is a keyed hash.

use std::time::Duration;

use integration_tests::{
    Stack, TestDatabase,
    api::{Mode, Strategy, create_plan, plan_request},
    stack::{eventually, outbox_drained},
};
use salesplan_platform::{Permission, grpc::outgoing, privacy::ContactKeys, service::Service};
use salesplan_proto::v1::{self as pb, deal_service_client::DealServiceClient};

const ACCOUNT: &str = "acme";
const EXTERNAL_ID: &str = "tg-privacy-zq7781";
const NAME: &str = "Zyxwa Qorvenko";
const EMAIL: &str = "Zyxwa.Qorvenko@Example.org";
const PHONE: &str = "+44 7700 900123";

/// Every form of the person's data a careless copy could hold.
fn needles() -> Vec<String> {
    let digits: String = PHONE.chars().filter(char::is_ascii_digit).collect();
    let mut all = vec![EXTERNAL_ID, NAME, EMAIL, PHONE, "Zyxwa", "Qorvenko"]
        .into_iter()
        .map(str::to_lowercase)
        .collect::<Vec<_>>();
    all.push(digits);
    all
}

/// The needles found in `haystack` (compared lower-cased).
fn found_in(haystack: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(haystack).to_lowercase();
    needles()
        .into_iter()
        .filter(|n| text.contains(n.as_str()))
        .collect()
}

async fn post_lead(stack: &Stack, token: &str, plan_id: &str, run: &str) -> anyhow::Result<()> {
    let status = reqwest::Client::new()
        .post(stack.webhook_url())
        .bearer_auth(token)
        .json(&serde_json::json!({
            "plan_id": plan_id,
            "tunnel_id": "funnel-1",
            "block_id": "add-to-plan",
            "run_id": run,
            "contact": { "external_id": EXTERNAL_ID, "name": NAME, "email": EMAIL, "phone": PHONE },
        }))
        .send()
        .await?
        .status();
    anyhow::ensure!(status == 202, "the webhook answered {status}");
    Ok(())
}

/// Every message of every stream, with where it is: (stream and sequence, raw payload and
/// headers).
async fn every_message(stack: &Stack) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let mut messages = Vec::new();
    for spec in salesplan_platform::bus::streams::ALL {
        let mut stream = js.get_stream(spec.name).await?;
        let state = stream.info().await?.state.clone();
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue; // removed (the horizons keep their newest only)
            };
            let mut raw = message.payload.to_vec();
            raw.extend_from_slice(format!("{:?}", message.headers).as_bytes());
            messages.push((format!("{} #{seq}", spec.name), raw));
        }
    }
    Ok(messages)
}

/// Every row of every table of the distributor's and reporting's schemas, and of
/// deal-service's except `deals` (the system of record), as text.
async fn every_row(pool: &sqlx::PgPool) -> anyhow::Result<Vec<(String, String)>> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
         WHERE table_schema IN ('distributor', 'reporting', 'deal_service')
           AND table_type = 'BASE TABLE' AND table_name <> 'deals'",
    )
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(tables.len() >= 15, "only {} tables found", tables.len());
    let mut rows = Vec::new();
    for (schema, table) in tables {
        let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM {schema}.{table} t"
        )))
        .fetch_all(pool)
        .await?;
        rows.extend(texts.into_iter().map(|t| (format!("{schema}.{table}"), t)));
    }
    Ok(rows)
}

#[tokio::test]
async fn events_and_other_services_hold_no_personal_data_and_the_related_rule_still_works()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = stack.token(
        ACCOUNT,
        "admin",
        &[
            Permission::PlansAdmin,
            Permission::DealsEditAll,
            Permission::IntakeWrite,
        ],
    );
    let plan = create_plan(
        stack.channel(&stack.deal_service).await?,
        &admin,
        plan_request(
            "Privacy",
            Mode::Auto,
            Strategy::RoundRobin,
            true,
            &["m1", "m2"],
        ),
    )
    .await?;
    // Two leads of the same person: round robin alone would give them to two managers.
    post_lead(&stack, &admin, &plan.id, "run-1").await?;
    stack.intake_settled().await?;
    post_lead(&stack, &admin, &plan.id, "run-2").await?;
    stack.intake_settled().await?;
    let mut deals = DealServiceClient::new(stack.channel(&stack.deal_service).await?);
    let listed = deals
        .list_deals(outgoing(
            pb::ListDealsRequest {
                filter: Some(pb::DealFilter {
                    plan_id: plan.id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner()
        .deals;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed[0].manager_id, listed[1].manager_id,
        "the same person's second deal goes to the manager of the first"
    );
    // deal-service keeps the person: it is the system of record.
    let contact = listed[0].contact.clone().expect("contact");
    assert_eq!(
        (contact.name.as_str(), contact.email.as_str()),
        (NAME, &*EMAIL.to_lowercase())
    );

    // Events for every kind of change: moved, then closed.
    let deal = &listed[0];
    let moved = deals
        .move_deal(outgoing(
            pb::MoveDealRequest {
                deal_id: deal.id.clone(),
                stage_id: plan.stages[1].id.clone(),
                expected_version: deal.version,
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner();
    let pool = stack.pool().await?;
    outbox_drained(&pool).await?;
    // Reporting and the distributor have applied every deal event (three).
    eventually(Duration::from_secs(20), || async {
        let (reported, viewed): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT coalesce(sum(version), 0) FROM reporting.deals)::bigint,
                    (SELECT coalesce(sum(version), 0) FROM distributor.deal_view)::bigint",
        )
        .fetch_one(&pool)
        .await?;
        let expected = moved.deal.as_ref().map_or(0, |d| d.version) + listed[1].version;
        Ok((reported == expected && viewed == expected).then_some(()))
    })
    .await?;

    // The leads were in the intake lane until decided, and are erased from it since.
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let intake = js.get_stream("SALESPLAN_INTAKE").await?;
    eventually(Duration::from_secs(20), || async {
        let state = intake.clone().info().await?.state.clone();
        anyhow::ensure!(
            state.last_sequence == 2,
            "{} leads published",
            state.last_sequence
        );
        Ok((state.messages == 0).then_some(()))
    })
    .await?;
    let messages = every_message(&stack).await?;
    assert!(
        messages
            .iter()
            .any(|(at, _)| at.starts_with("SALESPLAN_DEALS")),
        "the scan reads the deal events"
    );
    for (at, raw) in &messages {
        assert_eq!(found_in(raw), Vec::<String>::new(), "{at}");
    }
    for (at, row) in every_row(&pool).await? {
        assert_eq!(
            found_in(row.as_bytes()),
            Vec::<String>::new(),
            "{at}: {row}"
        );
    }
    // What the rule needs is the keyed key, in the events and the distributor's relations.
    let key = ContactKeys::dev()
        .of(ACCOUNT, EXTERNAL_ID, EMAIL, PHONE)
        .expect("a key");
    let related: Vec<String> =
        sqlx::query_scalar("SELECT contact_key FROM distributor.contact_managers")
            .fetch_all(&pool)
            .await?;
    assert_eq!(related, std::slice::from_ref(&key));
    let event = js
        .get_stream("SALESPLAN_DEALS")
        .await?
        .get_raw_message(1)
        .await?;
    let event = <pb::DealEvent as prost::Message>::decode(event.payload)?;
    assert_eq!(event.contact_key, key);
    let carried = event.deal.expect("deal");
    assert!(carried.contact.is_none() && carried.title.is_empty());
    stack.stop().await
}

/// Relations kept before keys were keyed (plain `ext:`/`email:`/`phone:` keys) are keyed
/// when the distributor starts, the newer deal's manager winning where both forms exist.
#[tokio::test]
async fn contact_keys_kept_plain_are_keyed_when_the_distributor_starts() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let config = distributor::Config::local(&db.url, "nats://127.0.0.1:1", "http://127.0.0.1:1");
    config.migrate().await?;
    let pool = sqlx::PgPool::connect(&db.url).await?;
    let keys = ContactKeys::dev();
    let already = keys.of_plain(ACCOUNT, "email:anna@example.com");
    sqlx::query(
        "INSERT INTO distributor.contact_managers (account_id, contact_key, manager_id, deal_created) VALUES
           ('acme', 'ext:tg-1', 'm1', '2026-01-01'),
           ('globex', 'ext:tg-1', 'm9', '2026-01-01'),
           ('acme', 'email:anna@example.com', 'm2', '2026-03-01'),
           ('acme', $1, 'm3', '2026-02-01'),
           ('acme', 'phone:447700900123', 'm4', '2026-01-01')",
    )
    .bind(&already)
    .execute(&pool)
    .await?;
    let store = distributor::store::Store::new(
        salesplan_platform::db::connect(&config.database, distributor::SCHEMA).await?,
        keys.clone(),
    );
    assert_eq!(store.key_plain_contact_keys().await?, 4);
    assert_eq!(store.key_plain_contact_keys().await?, 0, "once");
    let mut rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT account_id, contact_key, manager_id FROM distributor.contact_managers",
    )
    .fetch_all(&pool)
    .await?;
    rows.sort();
    let mut expected = vec![
        (
            "acme".to_owned(),
            keys.of_plain("acme", "ext:tg-1"),
            "m1".to_owned(),
        ),
        (
            "globex".to_owned(),
            keys.of_plain("globex", "ext:tg-1"),
            "m9".to_owned(),
        ),
        ("acme".to_owned(), already, "m2".to_owned()),
        (
            "acme".to_owned(),
            keys.of_plain("acme", "phone:447700900123"),
            "m4".to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(rows, expected);
    Ok(())
}

/// Deal events published before events stopped carrying personal data (simulated: copies
/// of each event with its contact and title, as deal-service used to publish them) are
/// rewritten by `deal-service scrub-events`: published again without, the originals
/// erased; consumers are unchanged and reporting's rebuild gives the same read model.
#[tokio::test]
async fn scrub_events_rewrites_earlier_deal_events_without_personal_data() -> anyhow::Result<()> {
    use deal_service::events::scrub::scrub_deal_events;
    use prost::Message as _;
    let stack = Stack::start().await?;
    let admin = stack.token(
        ACCOUNT,
        "admin",
        &[
            Permission::PlansAdmin,
            Permission::DealsEditAll,
            Permission::IntakeWrite,
        ],
    );
    let plan = create_plan(
        stack.channel(&stack.deal_service).await?,
        &admin,
        plan_request(
            "Scrub",
            Mode::Auto,
            Strategy::RoundRobin,
            true,
            &["m1", "m2"],
        ),
    )
    .await?;
    post_lead(&stack, &admin, &plan.id, "run-1").await?;
    post_lead(&stack, &admin, &plan.id, "run-2").await?;
    stack.intake_settled().await?;
    let pool = stack.pool().await?;
    outbox_drained(&pool).await?;
    let read_model = || async {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT d::text FROM reporting.deals d ORDER BY deal_id")
                .fetch_all(&pool)
                .await?;
        anyhow::Ok(rows)
    };
    let before = eventually(Duration::from_secs(20), || async {
        let rows = read_model().await?;
        Ok((rows.len() == 2).then_some(rows))
    })
    .await?;
    let relations = || async {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT c::text FROM distributor.contact_managers c")
                .fetch_all(&pool)
                .await?;
        anyhow::Ok(rows)
    };
    let relations_before = relations().await?;

    // The same events as deal-service published them before: with the contact and title.
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let mut stream = js.get_stream("SALESPLAN_DEALS").await?;
    let published = stream.info().await?.state.last_sequence;
    let mut deals = DealServiceClient::new(stack.channel(&stack.deal_service).await?);
    for seq in 1..=published {
        let message = stream.get_raw_message(seq).await?;
        let mut event = pb::DealEvent::decode(message.payload)?;
        let mut deal = event.deal.take().expect("deal");
        let full = deals
            .get_deal(outgoing(
                pb::GetDealRequest {
                    deal_id: deal.id.clone(),
                    ..Default::default()
                },
                &admin,
            ))
            .await?
            .into_inner()
            .deal
            .expect("deal");
        deal.contact = full.contact;
        deal.title = full.title;
        event.deal = Some(deal);
        event.contact_key.clear();
        js.publish_with_headers(
            message.subject.to_string(),
            async_nats::HeaderMap::from_iter([(
                async_nats::header::NATS_MESSAGE_ID,
                async_nats::HeaderValue::from(format!("{}.old", event.event_id).as_str()),
            )]),
            event.encode_to_vec().into(),
        )
        .await?
        .await?;
    }
    let with_old = every_message(&stack).await?;
    assert!(
        with_old.iter().any(|(_, raw)| !found_in(raw).is_empty()),
        "the simulated earlier events carry the person"
    );

    let bus = salesplan_platform::bus::Bus::connect(
        &deal_service::Config::local(&stack.db.url, &stack.nats.url)
            .common
            .nats,
        "scrub-test",
    )
    .await?;
    let keys = ContactKeys::dev();
    let done = scrub_deal_events(&bus, &keys).await?;
    assert_eq!((done.read, done.rewritten), (2 * published, published));
    for (at, raw) in every_message(&stack).await? {
        assert_eq!(found_in(&raw), Vec::<String>::new(), "{at}");
    }
    let again = scrub_deal_events(&bus, &keys).await?;
    assert_eq!((again.read, again.rewritten), (2 * published, 0), "once");
    // The copies carry the keyed key, as events published now do.
    let last = stream.info().await?.state.last_sequence;
    let copy = pb::DealEvent::decode(stream.get_raw_message(last).await?.payload)?;
    assert_eq!(
        Some(copy.contact_key),
        keys.of(ACCOUNT, EXTERNAL_ID, EMAIL, PHONE)
    );

    // Consumers took the copies and applied nothing new; a rebuild from the rewritten
    // stream gives the same.
    for consumer in ["distributor-deals", "reporting-deals"] {
        eventually(Duration::from_secs(20), || async {
            let backlog =
                integration_tests::nats::consumer_backlog(&js, "SALESPLAN_DEALS", consumer).await?;
            Ok(backlog.is_empty().then_some(()))
        })
        .await?;
    }
    assert_eq!(read_model().await?, before);
    assert_eq!(relations().await?, relations_before);
    let reporting_config = reporting::Config::local(&stack.db.url, &stack.nats.url);
    reporting::maintenance::rebuild(&reporting_config).await?;
    assert_eq!(read_model().await?, before);
    bus.close().await;
    stack.stop().await
}

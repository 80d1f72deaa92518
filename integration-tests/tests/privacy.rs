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

/// A token of the account's admin (plans, every deal, intake, bulk adds) and an AUTO
/// round-robin plan over two managers that prefers a contact's related manager.
async fn admin_and_plan(stack: &Stack, name: &str) -> anyhow::Result<(String, pb::Plan)> {
    let admin = stack.token(
        ACCOUNT,
        "admin",
        &[
            Permission::PlansAdmin,
            Permission::DealsEditAll,
            Permission::IntakeWrite,
            Permission::DealsBulkEdit,
        ],
    );
    let plan = create_plan(
        stack.channel(&stack.deal_service).await?,
        &admin,
        plan_request(name, Mode::Auto, Strategy::RoundRobin, true, &["m1", "m2"]),
    )
    .await?;
    Ok((admin, plan))
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
async fn every_message(stack: &Stack, lanes: Lanes) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let mut messages = Vec::new();
    for spec in salesplan_platform::bus::streams::ALL {
        let dead_letters = spec.name == salesplan_platform::bus::streams::DEAD_LETTERS.name;
        if spec.holds_leads && !dead_letters && lanes == Lanes::Skip {
            continue;
        }
        let mut stream = js.get_stream(spec.name).await?;
        let state = stream.info().await?.state.clone();
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue; // removed (the horizons keep their newest only)
            };
            // A dead letter is of the subject it was first sent to.
            let subject = if dead_letters {
                message
                    .headers
                    .get(salesplan_platform::bus::HEADER_ORIGINAL_SUBJECT)
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            } else {
                message.subject.to_string()
            };
            let lead = !dead_letters
                || subject.starts_with("salesplan.intake.")
                || subject.starts_with("salesplan.bulk.");
            let account = salesplan_platform::bus::streams::account_of(&subject);
            let skipped = match lanes {
                Lanes::Skip => lead,
                Lanes::Of(of) => account.is_some_and(|a| a != of),
            };
            if spec.holds_leads && skipped {
                continue;
            }
            let mut raw = message.payload.to_vec();
            raw.extend_from_slice(format!("{:?}", message.headers).as_bytes());
            messages.push((format!("{} #{seq}", spec.name), raw));
        }
    }
    Ok(messages)
}

/// Which messages of the streams that hold leads [`every_message`] reads: the leads are the
/// input and carry the person until the lanes' age limit (docs/privacy.md), or until an
/// erasure of the person deletes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lanes {
    Skip,
    /// Those of one account (another account's lead of someone with the same e-mail is
    /// theirs to keep).
    Of(&'static str),
}

/// Every row of every table of the distributor's and reporting's schemas, and of
/// deal-service's except `deal_service.deals` (the system of record), as text; binary
/// columns (encoded events, explanations) also with their bytes as they are, so text
/// inside them is seen.
async fn every_row(pool: &sqlx::PgPool) -> anyhow::Result<Vec<(String, String)>> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
         WHERE table_schema IN ('distributor', 'reporting', 'deal_service')
           AND table_type = 'BASE TABLE'
           AND NOT (table_schema = 'deal_service' AND table_name = 'deals')",
    )
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(
        tables.iter().any(|(s, t)| s == "reporting" && t == "deals") && tables.len() >= 15,
        "only {} tables found",
        tables.len()
    );
    let mut rows = Vec::new();
    for (schema, table) in tables {
        let binary: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = $2 AND data_type = 'bytea'",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_all(pool)
        .await?;
        let raw: String = binary
            .iter()
            .map(|c| format!(" || ' ' || coalesce(encode(t.{c}, 'escape'), '')"))
            .collect();
        let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text{raw} FROM {schema}.{table} t"
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
    let (admin, plan) = admin_and_plan(&stack, "Privacy").await?;
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

    // The leads wait in the intake lane, as they came, until its age limit.
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let intake = js.get_stream("SALESPLAN_INTAKE").await?;
    let state = intake.clone().info().await?.state.clone();
    assert_eq!((state.last_sequence, state.messages), (2, 2));
    let messages = every_message(&stack, Lanes::Skip).await?;
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
    let (admin, plan) = admin_and_plan(&stack, "Scrub").await?;
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
    // Once the distributor has applied both deal events (they date the relations).
    eventually(Duration::from_secs(20), || async {
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM distributor.deal_view")
            .fetch_one(&pool)
            .await?;
        Ok((seen == 2).then_some(()))
    })
    .await?;
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
    let with_old = every_message(&stack, Lanes::Skip).await?;
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
    // Not while a consumer has yet to take the events (reporting's progress needs every
    // sequence it has not passed): refused, nothing done; once they all have, it runs.
    let scrub = || {
        eventually(Duration::from_secs(20), || async {
            match scrub_deal_events(&bus, &keys).await {
                Ok(done) => Ok(Some(done)),
                Err(err) if err.to_string().contains("have not caught up") => Ok(None),
                Err(err) => Err(err),
            }
        })
    };
    let done = scrub().await?;
    assert_eq!((done.read, done.rewritten), (2 * published, published));
    for (at, raw) in every_message(&stack, Lanes::Skip).await? {
        assert_eq!(found_in(&raw), Vec::<String>::new(), "{at}");
    }
    // No gap: the events before the last original (the first, clean ones) moved too.
    assert_eq!(done.moved, published);
    let kept = stream.info().await?.state.clone();
    assert_eq!(kept.messages, kept.last_sequence - kept.first_sequence + 1);
    let again = scrub().await?;
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
    consumers_caught_up(&stack).await?;
    assert_eq!(read_model().await?, before);
    assert_eq!(relations().await?, relations_before);
    let reporting_config = reporting::Config::local(&stack.db.url, &stack.nats.url);
    reporting::maintenance::rebuild(&reporting_config).await?;
    assert_eq!(read_model().await?, before);
    bus.close().await;
    stack.stop().await
}

/// Reads a deal by id as `token`.
async fn deal(
    deals: &mut DealServiceClient<tonic::transport::Channel>,
    token: &str,
    id: &str,
) -> anyhow::Result<pb::Deal> {
    deals
        .get_deal(outgoing(
            pb::GetDealRequest {
                deal_id: id.to_owned(),
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner()
        .deal
        .ok_or_else(|| anyhow::anyhow!("no deal"))
}

/// Waits until the distributor and reporting applied every deal event published.
async fn consumers_caught_up(stack: &Stack) -> anyhow::Result<()> {
    outbox_drained(&stack.pool().await?).await?;
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    for consumer in ["distributor-deals", "reporting-deals"] {
        eventually(Duration::from_secs(20), || async {
            let backlog =
                integration_tests::nats::consumer_backlog(&js, "SALESPLAN_DEALS", consumer).await?;
            Ok(backlog.is_empty().then_some(()))
        })
        .await?;
    }
    Ok(())
}

/// EraseContact (issue 19): a person who went through every path (a webhook lead and its
/// retry, a second lead, a bulk add, a reassignment, a close and a reopen, a rebuild of
/// reporting) is erased by e-mail; then no table of any schema and no message of any
/// stream holds any of their data, while their deals keep stage, manager, amount and
/// history; another account's contact with the same e-mail is untouched; a repeat answers
/// with the same receipt; the next lead of the same identity is a new contact.
#[tokio::test]
async fn erase_contact_leaves_nothing_of_the_person_anywhere() -> anyhow::Result<()> {
    use salesplan_proto::v1::{
        contact_service_client::ContactServiceClient, intake_service_client::IntakeServiceClient,
    };
    let stack = Stack::start().await?;
    let (admin, plan) = admin_and_plan(&stack, "Erase").await?;
    let eraser = stack.token(ACCOUNT, "dpo", &[Permission::ContactsErase]);
    // Another account knows someone with the same e-mail.
    let other = stack.token(
        "globex",
        "admin",
        &[Permission::PlansAdmin, Permission::IntakeWrite],
    );
    let other_plan = create_plan(
        stack.channel(&stack.deal_service).await?,
        &other,
        plan_request("Other", Mode::Auto, Strategy::RoundRobin, false, &["g1"]),
    )
    .await?;
    post_lead(&stack, &other, &other_plan.id, "run-g").await?;

    post_lead(&stack, &admin, &plan.id, "run-1").await?;
    post_lead(&stack, &admin, &plan.id, "run-1").await?; // the funnel's retry
    stack.intake_settled().await?;
    post_lead(&stack, &admin, &plan.id, "run-2").await?;
    let mut replies = IntakeServiceClient::new(stack.channel(&stack.tunnel_listener).await?)
        .add_audience(outgoing(
            futures::stream::iter([pb::AddAudienceRequest {
                plan_id: plan.id.clone(),
                job_id: "job-1".into(),
                assign_to_manager_id: None,
                contacts: vec![pb::AudienceContact {
                    contact: Some(pb::Contact {
                        external_id: EXTERNAL_ID.into(),
                        name: NAME.into(),
                        email: EMAIL.into(),
                        phone: PHONE.into(),
                    }),
                    title: format!("{NAME} (bulk)"),
                    amount: None,
                }],
            }]),
            &admin,
        ))
        .await?
        .into_inner();
    while let Some(reply) = futures::StreamExt::next(&mut replies).await {
        reply?;
    }
    stack.intake_settled().await?;
    let mut deals = DealServiceClient::new(stack.channel(&stack.deal_service).await?);
    let listed = integration_tests::api::all_deals(
        stack.channel(&stack.deal_service).await?,
        &admin,
        pb::DealFilter {
            plan_id: plan.id.clone(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(
        listed.len(),
        3,
        "two funnel leads (one retried) and a bulk add"
    );
    // Reassigned, closed and reopened.
    let first = &listed[0];
    let other_manager = if first.manager_id.as_deref() == Some("m1") {
        "m2"
    } else {
        "m1"
    };
    let assigned = deals
        .assign_deal(outgoing(
            pb::AssignDealRequest {
                deal_id: first.id.clone(),
                expected_version: first.version,
                manager_id: Some(other_manager.into()),
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let won = plan
        .stages
        .iter()
        .find(|s| s.kind == pb::StageKind::Won as i32)
        .expect("a won stage");
    let closed = deals
        .move_deal(outgoing(
            pb::MoveDealRequest {
                deal_id: first.id.clone(),
                expected_version: assigned.version,
                stage_id: won.id.clone(),
                loss_reason_id: None,
            },
            &admin,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let reopened = deals
        .reopen_deal(outgoing(
            pb::ReopenDealRequest {
                deal_id: first.id.clone(),
                expected_version: closed.version,
            },
            &admin,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    consumers_caught_up(&stack).await?;
    reporting::maintenance::rebuild(&reporting::Config::local(&stack.db.url, &stack.nats.url))
        .await?;

    // Everything held about the person, as one document: their three deals, each with its
    // contact and whole history.
    let mut contacts = ContactServiceClient::new(stack.channel(&stack.deal_service).await?);
    let export = pb::ExportContactRequest {
        phone: PHONE.replace(' ', "-"),
        ..Default::default()
    };
    let exported = contacts
        .export_contact(outgoing(export.clone(), &admin))
        .await?
        .into_inner();
    assert_eq!(exported.deals.len(), 3);
    for item in &exported.deals {
        let deal = item.deal.as_ref().expect("deal");
        assert_eq!(deal.contact.as_ref().map(|c| c.name.as_str()), Some(NAME));
        assert_eq!(
            item.history.first().map(|e| e.action),
            Some(pb::HistoryAction::Created as i32)
        );
        // With the distributor's decision that made it (each came from a lead).
        let decision = item
            .assignment
            .as_ref()
            .expect("the decision of a lead's deal");
        assert_eq!((&decision.deal_id, &decision.plan_id), (&deal.id, &plan.id));
    }
    let first_exported = exported
        .deals
        .iter()
        .find(|d| d.deal.as_ref().is_some_and(|d| d.id == first.id))
        .expect("the reassigned deal");
    assert_eq!(
        first_exported.history.len(),
        4,
        "created, assigned, closed, reopened"
    );
    assert_eq!(
        first_exported
            .assignment
            .as_ref()
            .and_then(|a| a.manager_id.as_deref()),
        first.manager_id.as_deref(),
        "the decision names the manager it chose, before the reassignment"
    );

    // Erased by e-mail, written as the person wrote it to the DPO.
    let refused = contacts
        .erase_contact(outgoing(
            pb::EraseContactRequest {
                email: EMAIL.to_uppercase(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect_err("needs contacts:erase");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let request = pb::EraseContactRequest {
        email: EMAIL.to_uppercase(),
        ..Default::default()
    };
    // A relation no deal tells the distributor of: a lead of the person's phone decided,
    // whose deal was never made (its creation failed, and the lead left the lane since).
    let orphan = ContactKeys::dev()
        .every_of(ACCOUNT, "", "", &PHONE.replace([' ', '+'], ""))
        .pop()
        .expect("a key of the phone");
    let relations = stack.pool().await?;
    sqlx::query(
        "INSERT INTO distributor.contact_managers (account_id, contact_key, manager_id, deal_created)
         VALUES ($1, $2, 'm2', now())",
    )
    .bind(ACCOUNT)
    .bind(&orphan)
    .execute(&relations)
    .await?;
    let receipt = contacts
        .erase_contact(outgoing(request.clone(), &eraser))
        .await?
        .into_inner();
    assert_eq!(receipt.deals_erased_in_total, 3);
    assert_eq!(receipt.erased[0].count, 3);
    // Forgotten before the answer, and counted.
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM distributor.contact_managers WHERE account_id = $1 AND contact_key = $2",
    )
    .bind(ACCOUNT)
    .bind(&orphan)
    .fetch_one(&relations)
    .await?;
    assert_eq!(left, 0);
    let count_at = |place: &str| {
        receipt
            .erased
            .iter()
            .find(|p| p.place == place)
            .map(|p| p.count)
    };
    assert!(
        count_at("distributor.contact_managers") >= Some(1),
        "{:?}",
        receipt.erased
    );
    // The person's funnel leads, decided long ago, were still in the lane until now.
    assert!(
        count_at("SALESPLAN_INTAKE") >= Some(1),
        "{:?}",
        receipt.erased
    );
    consumers_caught_up(&stack).await?;
    reporting::maintenance::rebuild(&reporting::Config::local(&stack.db.url, &stack.nats.url))
        .await?;

    // Nothing left to export; the deals keep everything but the person.
    let after_export = contacts
        .export_contact(outgoing(export, &admin))
        .await?
        .into_inner();
    assert_eq!(after_export.deals.len(), 0);
    let after = deal(&mut deals, &admin, &first.id).await?;
    assert_eq!(
        after.contact.clone().unwrap_or_default(),
        pb::Contact::default()
    );
    assert!(after.title.is_empty());
    assert_eq!(
        (
            after.stage_id.as_str(),
            after.manager_id.as_deref(),
            after.amount.clone()
        ),
        (
            reopened.stage_id.as_str(),
            reopened.manager_id.as_deref(),
            reopened.amount.clone()
        )
    );
    let history = deals
        .get_deal_history(outgoing(
            pb::GetDealHistoryRequest {
                deal_id: first.id.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner()
        .entries;
    let actions: Vec<i32> = history.iter().map(|e| e.action).collect();
    for kept in [
        pb::HistoryAction::Created,
        pb::HistoryAction::Assigned,
        pb::HistoryAction::Closed,
        pb::HistoryAction::Reopened,
        pb::HistoryAction::Erased,
    ] {
        assert!(actions.contains(&(kept as i32)), "{kept:?} in {actions:?}");
    }

    // Nowhere: every stream, every table (the account's deals included).
    for (at, raw) in every_message(&stack, Lanes::Of(ACCOUNT)).await? {
        // Another account's deal events carry no personal data either.
        assert_eq!(found_in(&raw), Vec::<String>::new(), "{at}");
    }
    let pool = stack.pool().await?;
    for (at, row) in every_row(&pool).await? {
        assert_eq!(
            found_in(row.as_bytes()),
            Vec::<String>::new(),
            "{at}: {row}"
        );
    }
    let own: Vec<String> =
        sqlx::query_scalar("SELECT d::text FROM deal_service.deals d WHERE account_id = $1")
            .bind(ACCOUNT)
            .fetch_all(&pool)
            .await?;
    assert_eq!(own.len(), 3);
    for row in own {
        assert_eq!(found_in(row.as_bytes()), Vec::<String>::new(), "{row}");
    }
    // The other account's person is untouched.
    let theirs: Vec<String> = sqlx::query_scalar(
        "SELECT contact_email FROM deal_service.deals WHERE account_id = 'globex'",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(theirs, [EMAIL.to_lowercase()]);

    // A repeat: the same receipt, nothing more to erase.
    let again = contacts
        .erase_contact(outgoing(request, &eraser))
        .await?
        .into_inner();
    assert_eq!(
        (
            again.receipt_id.as_str(),
            again.first_erased_at,
            again.erased[0].count,
            again.deals_erased_in_total
        ),
        (receipt.receipt_id.as_str(), receipt.first_erased_at, 0, 3)
    );
    // A lead of the person received before the erasure and decided only after it (it was
    // on its way: in the lane, or in the distributor's hands) becomes a deal without them.
    let late = uuid::Uuid::new_v4().to_string();
    let received = receipt.first_erased_at.expect("erased at");
    let event = pb::IntakeEvent {
        intake_id: late.clone(),
        account_id: ACCOUNT.into(),
        received_at: Some(prost_types::Timestamp {
            seconds: received.seconds - 60,
            nanos: 0,
        }),
        source: pb::IntakeSource::Webhook as i32,
        lead: Some(pb::Lead {
            plan_id: plan.id.clone(),
            run_id: "run-late".into(),
            contact: Some(pb::Contact {
                external_id: EXTERNAL_ID.into(),
                name: NAME.into(),
                email: EMAIL.into(),
                phone: PHONE.into(),
            }),
            title: NAME.into(),
            ..Default::default()
        }),
        assign_to_manager_id: None,
        plan_version: plan.version,
        availability_version: 0,
        availability_sequence: 0,
    };
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    js.publish_with_headers(
        salesplan_platform::bus::streams::intake_subject(ACCOUNT, &plan.id),
        async_nats::HeaderMap::from_iter([(
            async_nats::header::NATS_MESSAGE_ID,
            async_nats::HeaderValue::from(late.as_str()),
        )]),
        prost::Message::encode_to_vec(&event).into(),
    )
    .await?
    .await?;
    stack.intake_settled().await?;
    let late_deal = deals
        .get_deal(outgoing(
            pb::GetDealRequest {
                idempotency_key: late,
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner()
        .deal
        .expect("the late lead's deal");
    assert_eq!(
        (
            late_deal.contact.unwrap_or_default(),
            late_deal.title.as_str()
        ),
        (pb::Contact::default(), "")
    );

    // Nothing names a manager for the person any more (once the distributor took the late
    // deal's erasure); their next lead is a new contact.
    consumers_caught_up(&stack).await?;
    let related: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM distributor.contact_managers WHERE account_id = $1",
    )
    .bind(ACCOUNT)
    .fetch_one(&pool)
    .await?;
    assert_eq!(related, 0);
    post_lead(&stack, &admin, &plan.id, "run-3").await?;
    stack.intake_settled().await?;
    let newest = integration_tests::api::all_deals(
        stack.channel(&stack.deal_service).await?,
        &admin,
        pb::DealFilter {
            plan_id: plan.id.clone(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(newest.len(), 5);
    assert!(
        newest
            .iter()
            .any(|d| d.contact.as_ref().is_some_and(|c| c.name == NAME)),
        "the new lead keeps its contact"
    );
    stack.stop().await
}

/// EraseContact reaches the broker: the person's leads still waiting in the intake lanes
/// (no distributor is running) and a dead letter of theirs are deleted; another person's
/// waiting lead stays and becomes a deal once a distributor runs.
#[tokio::test]
async fn erase_contact_deletes_the_persons_waiting_leads_and_dead_letters() -> anyhow::Result<()> {
    use salesplan_platform::service::Service as _;
    use salesplan_proto::v1::{
        contact_service_client::ContactServiceClient, intake_service_client::IntakeServiceClient,
    };
    let nats = integration_tests::TestNats::start().await?;
    let db = TestDatabase::create().await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    // The distributor starts later, on this port.
    let distributor_addr =
        std::net::SocketAddr::from(([127, 0, 0, 1], integration_tests::ports::reserve()?));
    let mut config = deal_service::Config::local(&db.url, &nats.url);
    config.distributor_url = format!("http://{distributor_addr}");
    let deal_service = config.start(shutdown.clone()).await?;
    let listener = tunnel_listener::Config::local(&nats.url, &deal_service.grpc_url())
        .start(shutdown.clone())
        .await?;
    let issuer = salesplan_platform::auth::TokenIssuer::hs256(
        salesplan_platform::config::AuthConfig::DEV_SECRET.as_bytes(),
    );
    let token = |perms: &[Permission]| {
        issuer.issue(
            &salesplan_platform::Actor::new(ACCOUNT, "u", perms.iter().copied()),
            Duration::from_secs(600),
        )
    };
    let admin = token(&[
        Permission::PlansAdmin,
        Permission::IntakeWrite,
        Permission::DealsBulkEdit,
    ])?;
    let channel = |url: String| async move {
        anyhow::Ok(
            tonic::transport::Endpoint::from_shared(url)?
                .connect()
                .await?,
        )
    };
    let plan = create_plan(
        channel(deal_service.grpc_url()).await?,
        &admin,
        plan_request("Waiting", Mode::Auto, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let webhook = format!(
        "http://{}{}",
        listener.http_addr.expect("http"),
        tunnel_listener::http::webhook::PATH
    );
    let lead = |run: &str, external_id: &str, name: &str| {
        serde_json::json!({
            "plan_id": plan.id, "tunnel_id": "t", "block_id": "b", "run_id": run,
            "contact": { "external_id": external_id, "name": name, "email": EMAIL, "phone": PHONE },
        })
    };
    for body in [
        lead("run-1", EXTERNAL_ID, NAME),
        lead("run-2", "someone-else", "Other Person"),
    ] {
        let status = reqwest::Client::new()
            .post(&webhook)
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await?
            .status();
        anyhow::ensure!(status == 202, "{status}");
    }
    // Another account's person with the same e-mail, waiting too: not theirs to erase.
    let globex = issuer.issue(
        &salesplan_platform::Actor::new(
            "globex",
            "u",
            [Permission::PlansAdmin, Permission::IntakeWrite],
        ),
        Duration::from_secs(600),
    )?;
    let globex_plan = create_plan(
        channel(deal_service.grpc_url()).await?,
        &globex,
        plan_request("Theirs", Mode::Auto, Strategy::RoundRobin, false, &["g1"]),
    )
    .await?;
    let status = reqwest::Client::new()
        .post(&webhook)
        .bearer_auth(&globex)
        .json(&serde_json::json!({
            "plan_id": globex_plan.id, "tunnel_id": "t", "block_id": "b", "run_id": "run-g",
            "contact": { "external_id": EXTERNAL_ID, "name": NAME, "email": EMAIL },
        }))
        .send()
        .await?
        .status();
    anyhow::ensure!(status == 202, "{status}");
    // A third person shares no identifier with the erased one.
    let other = serde_json::json!({
        "plan_id": plan.id, "tunnel_id": "t", "block_id": "b", "run_id": "run-3",
        "contact": { "external_id": "third", "name": "Third Person", "email": "third@example.org" },
    });
    let status = reqwest::Client::new()
        .post(&webhook)
        .bearer_auth(&admin)
        .json(&other)
        .send()
        .await?
        .status();
    anyhow::ensure!(status == 202, "{status}");
    let mut replies = IntakeServiceClient::new(channel(listener.grpc_url()).await?)
        .add_audience(outgoing(
            futures::stream::iter([pb::AddAudienceRequest {
                plan_id: plan.id.clone(),
                job_id: "job-1".into(),
                assign_to_manager_id: None,
                contacts: vec![pb::AudienceContact {
                    contact: Some(pb::Contact {
                        email: EMAIL.to_uppercase(),
                        ..Default::default()
                    }),
                    title: NAME.into(),
                    amount: None,
                }],
            }]),
            &admin,
        ))
        .await?
        .into_inner();
    while let Some(reply) = futures::StreamExt::next(&mut replies).await {
        reply?;
    }
    // A dead letter of theirs: a deal event as published before events lost the contact.
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await?);
    let old_event = pb::DealEvent {
        event_id: "old".into(),
        account_id: ACCOUNT.into(),
        deal: Some(pb::Deal {
            contact: Some(pb::Contact {
                name: NAME.into(),
                email: EMAIL.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        salesplan_platform::bus::HEADER_ORIGINAL_SUBJECT,
        salesplan_platform::bus::streams::deal_subject(ACCOUNT, "created").as_str(),
    );
    js.publish_with_headers(
        "salesplan.dlq.v1.reporting-deals".to_owned(),
        headers.clone(),
        prost::Message::encode_to_vec(&old_event).into(),
    )
    .await?
    .await?;
    // The same as a dead letter is named now (with its account), and another account's.
    let deal_subject = salesplan_platform::bus::streams::deal_subject;
    for account in [ACCOUNT, "globex"] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            salesplan_platform::bus::HEADER_ORIGINAL_SUBJECT,
            deal_subject(account, "created").as_str(),
        );
        let event = pb::DealEvent {
            account_id: account.into(),
            ..old_event.clone()
        };
        js.publish_with_headers(
            salesplan_platform::bus::streams::dead_letter_subject(
                "reporting-deals",
                &deal_subject(account, "created"),
            ),
            headers,
            prost::Message::encode_to_vec(&event).into(),
        )
        .await?
        .await?;
    }

    // Erased by e-mail (the person has no deal yet): every message with that e-mail goes.
    // The distributor, down, cannot forget the person's relations: UNAVAILABLE, and the
    // repeat finishes (below).
    let mut contacts = ContactServiceClient::new(channel(deal_service.grpc_url()).await?);
    let erase = || {
        outgoing(
            pb::EraseContactRequest {
                email: EMAIL.into(),
                ..Default::default()
            },
            &token(&[Permission::ContactsErase]).expect("a token"),
        )
    };
    let err = contacts
        .erase_contact(erase())
        .await
        .expect_err("no distributor to forget the person");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("distributor"), "{}", err.message());
    let mut left = Vec::new();
    for stream in [
        "SALESPLAN_INTAKE",
        "SALESPLAN_BULK",
        "SALESPLAN_DEAD_LETTERS",
    ] {
        let mut handle = js.get_stream(stream).await?;
        let state = handle.info().await?.state.clone();
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(message) = handle.get_raw_message(seq).await {
                let theirs =
                    message.subject.ends_with(".globex") || message.subject.contains(".globex.");
                if !theirs {
                    assert_eq!(
                        found_in(&message.payload),
                        Vec::<String>::new(),
                        "{stream} #{seq}"
                    );
                }
                left.push((stream, theirs));
            }
        }
    }
    assert_eq!(
        left,
        [
            ("SALESPLAN_INTAKE", true),
            ("SALESPLAN_INTAKE", false),
            ("SALESPLAN_DEAD_LETTERS", true)
        ],
        "the other account's lead and dead letter, and the third person's lead, stay"
    );

    // The third person's lead still becomes a deal.
    let mut config = distributor::Config::local(&db.url, &nats.url, &deal_service.grpc_url());
    config.common.grpc_addr = distributor_addr;
    let distributor = config.start(shutdown.clone()).await?;
    // The repeat finishes: nothing left in the lanes, the distributor told.
    let receipt = contacts.erase_contact(erase()).await?.into_inner();
    let counts: Vec<(String, i64)> = receipt
        .erased
        .iter()
        .map(|p| (p.place.clone(), p.count))
        .collect();
    assert_eq!(
        counts,
        [
            ("deal_service.deals".to_owned(), 0),
            ("SALESPLAN_INTAKE".to_owned(), 0),
            ("SALESPLAN_BULK".to_owned(), 0),
            ("SALESPLAN_DEAD_LETTERS".to_owned(), 0),
            ("distributor.contact_managers".to_owned(), 0),
        ]
    );
    let pool = sqlx::PgPool::connect(&db.url).await?;
    let names = eventually(Duration::from_secs(20), || async {
        let names: Vec<String> = sqlx::query_scalar("SELECT contact_name FROM deal_service.deals")
            .fetch_all(&pool)
            .await?;
        Ok((!names.is_empty()).then_some(names))
    })
    .await?;
    let names = eventually(Duration::from_secs(20), || async {
        let mut names: Vec<String> =
            sqlx::query_scalar("SELECT contact_name FROM deal_service.deals ORDER BY 1")
                .fetch_all(&pool)
                .await?;
        names.sort();
        Ok((names.len() == 2).then_some(names))
    })
    .await
    .map_err(|e| e.context(format!("deals so far: {names:?}")))?;
    assert_eq!(
        names,
        ["Third Person", NAME],
        "the other account's lead too"
    );
    shutdown.cancel();
    for running in [distributor, listener, deal_service] {
        running.wait().await?;
    }
    Ok(())
}

/// An export is everything held or nothing: without the distributor's decisions it answers
/// UNAVAILABLE rather than a document that leaves them out; a person with no deal needs
/// none.
#[tokio::test]
async fn export_without_the_distributor_is_unavailable_not_incomplete() -> anyhow::Result<()> {
    use salesplan_proto::v1::contact_service_client::ContactServiceClient;
    let stack = integration_tests::stack::DealStack::start().await?;
    let admin = stack.token(
        ACCOUNT,
        "admin",
        &[Permission::PlansAdmin, Permission::DealsEditAll],
    );
    let plan = create_plan(
        stack.channel().await?,
        &admin,
        plan_request("Export", Mode::Manual, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let mut contacts = ContactServiceClient::new(stack.channel().await?);
    let export = || {
        outgoing(
            pb::ExportContactRequest {
                email: EMAIL.into(),
                ..Default::default()
            },
            &admin,
        )
    };
    assert!(
        contacts
            .export_contact(export())
            .await?
            .into_inner()
            .deals
            .is_empty()
    );
    DealServiceClient::new(stack.channel().await?)
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: plan.id.clone(),
                contact: Some(pb::Contact {
                    email: EMAIL.into(),
                    ..Default::default()
                }),
                idempotency_key: "by-hand".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await?;
    let err = contacts
        .export_contact(export())
        .await
        .expect_err("no distributor to ask");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    stack.stop().await
}

/// A lead nobody decided leaves the intake lanes after the deployment's retention window
/// (`SALESPLAN_INTAKE_RETENTION_HOURS`), also in lanes created earlier with another one:
/// the distributor sets the window at its start (`Bus::keep_intake_retention`; under its
/// own broker user in `bus_security.rs`).
#[tokio::test]
async fn an_undecided_lead_leaves_the_intake_lanes_after_the_retention_window() -> anyhow::Result<()>
{
    use salesplan_platform::{
        bus::{Bus, streams},
        config::NatsConfig,
    };
    let nats = integration_tests::TestNats::start().await?;
    let week = Bus::connect(&NatsConfig::local(&nats.url), "test").await?;
    week.ensure_streams(&streams::ALL).await?;
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await?);
    js.publish(
        streams::intake_subject(ACCOUNT, &uuid::Uuid::new_v4().to_string()),
        "a lead".into(),
    )
    .await?
    .await?;
    let held = |name: &'static str| {
        let js = js.clone();
        async move { anyhow::Ok(js.get_stream(name).await?.info().await?.clone()) }
    };
    let intake = held(streams::INTAKE.name).await?;
    assert_eq!(intake.config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(intake.state.messages, 1);

    let mut config = NatsConfig::local(&nats.url);
    config.intake_retention = Duration::from_secs(2);
    Bus::connect(&config, "test")
        .await?
        .keep_intake_retention()
        .await?;
    for lane in [streams::INTAKE, streams::BULK, streams::DEAD_LETTERS] {
        assert_eq!(
            held(lane.name).await?.config.max_age,
            Duration::from_secs(2)
        );
    }
    // The other streams keep theirs (deal events: forever).
    assert_eq!(
        held(streams::DEALS.name).await?.config.max_age,
        Duration::ZERO
    );
    eventually(Duration::from_secs(15), || async {
        Ok((held(streams::INTAKE.name).await?.state.messages == 0).then_some(()))
    })
    .await?;
    Ok(())
}

/// A single delete that comes second (two erasures of one person at once, a message aged
/// out meanwhile) is no failure, in the middle of a stream or below its first message.
#[tokio::test]
async fn a_delete_that_comes_second_is_no_failure() -> anyhow::Result<()> {
    use salesplan_platform::{
        bus::{Bus, streams},
        config::NatsConfig,
    };
    let nats = integration_tests::TestNats::start().await?;
    let bus = Bus::connect(&NatsConfig::local(&nats.url), "test").await?;
    bus.ensure_streams(&streams::ALL).await?;
    let js = bus.jetstream().clone();
    for lead in ["1", "2", "3"] {
        js.publish(streams::intake_subject(ACCOUNT, "p"), lead.into())
            .await?
            .await?;
    }
    let lane = streams::INTAKE.name;
    assert!(bus.delete_message(lane, 1).await?);
    assert!(bus.delete_message(lane, 3).await?);
    // #3 after the first message (#2), #1 before it, #9 past the last.
    for seq in [3, 1, 9] {
        assert!(!bus.delete_message(lane, seq).await?, "#{seq} is not there");
    }
    assert!(bus.delete_message(lane, 2).await?);
    assert_eq!(js.get_stream(lane).await?.info().await?.state.messages, 0);
    Ok(())
}

/// A parked deal event written before events lost personal data (it holds the contact) is
/// published without it when replayed: a replay never brings a person back into the deal
/// stream, which is kept forever.
#[tokio::test]
async fn a_replayed_parked_deal_event_is_published_without_the_person() -> anyhow::Result<()> {
    use prost::Message as _;
    use salesplan_proto::v1::outbox_service_client::OutboxServiceClient;
    let stack = integration_tests::stack::DealStack::start().await?;
    let admin = stack.token(ACCOUNT, "admin", &[Permission::PlansAdmin]);
    let event = pb::DealEvent {
        account_id: ACCOUNT.into(),
        kind: pb::deal_event::Kind::Updated as i32,
        deal: Some(pb::Deal {
            id: uuid::Uuid::new_v4().to_string(),
            plan_id: uuid::Uuid::new_v4().to_string(),
            title: NAME.into(),
            contact: Some(pb::Contact {
                external_id: EXTERNAL_ID.into(),
                name: NAME.into(),
                email: EMAIL.into(),
                phone: PHONE.into(),
            }),
            version: 2,
            ..Default::default()
        }),
        ..Default::default()
    };
    let pool = stack.pool().await?;
    sqlx::query(
        "INSERT INTO deal_service.outbox_parked
            (id, account_id, subject, message_id, payload, headers, created_at, reason)
         VALUES (1, $1, $2, 'old-event-1', $3, '{}', now(), 'test')",
    )
    .bind(ACCOUNT)
    .bind(salesplan_platform::bus::streams::deal_subject(
        ACCOUNT, "updated",
    ))
    .bind(event.encode_to_vec())
    .execute(&pool)
    .await?;
    let replayed = OutboxServiceClient::new(stack.channel().await?)
        .replay_parked_events(outgoing(
            pb::ReplayParkedEventsRequest { ids: vec![1] },
            &admin,
        ))
        .await?
        .into_inner();
    assert_eq!(replayed.replayed, 1);
    outbox_drained(&pool).await?;
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let stream = js.get_stream("SALESPLAN_DEALS").await?;
    let message = stream
        .get_last_raw_message_by_subject(&salesplan_platform::bus::streams::deal_subject(
            ACCOUNT, "updated",
        ))
        .await?;
    assert_eq!(found_in(&message.payload), Vec::<String>::new());
    let published = pb::DealEvent::decode(message.payload)?;
    assert_eq!(
        published.contact_key,
        ContactKeys::dev().of_deal_event(&event).unwrap_or_default()
    );
    assert!(published.contact_key.starts_with("k1:"));
    stack.stop().await
}

/// An erasure whose broker part failed is finished by its repeat: the receipt remembers
/// every identifier the person's deals were known by, although those deals no longer hold
/// them, so the repeat still finds a waiting lead that carries only the phone.
#[tokio::test]
async fn a_repeat_knows_what_the_first_erasure_found() -> anyhow::Result<()> {
    use deal_service::store::{Identity, Store};
    let stack = integration_tests::stack::DealStack::start().await?;
    let admin = stack.token(
        ACCOUNT,
        "admin",
        &[Permission::PlansAdmin, Permission::DealsEditAll],
    );
    let plan = create_plan(
        stack.channel().await?,
        &admin,
        plan_request("Repeat", Mode::Manual, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let mut deals = DealServiceClient::new(stack.channel().await?);
    let created = deals
        .create_deal(outgoing(
            pb::CreateDealRequest {
                plan_id: plan.id.clone(),
                contact: Some(pb::Contact {
                    email: EMAIL.into(),
                    phone: PHONE.into(),
                    ..Default::default()
                }),
                idempotency_key: "by-hand".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner()
        .deal
        .expect("deal");
    let options: sqlx::postgres::PgConnectOptions = stack.db.url.parse()?;
    let pool =
        sqlx::PgPool::connect_with(options.options([("search_path", "deal_service")])).await?;
    let keys = ContactKeys::dev();
    let store = Store::new(pool.clone(), pool, keys.clone());
    let by_email = Identity {
        external_id: String::new(),
        email: EMAIL.to_lowercase(),
        phone_digits: String::new(),
    };
    let phone_key = keys
        .every_of(ACCOUNT, "", "", &PHONE.replace([' ', '+'], ""))
        .pop()
        .expect("a key of the phone");
    // The first call erases the deal (its broker part, say, failed afterwards).
    let first = store.erase_contact(ACCOUNT, "dpo", &by_email).await?;
    assert_eq!((first.deals_now, first.deals_in_total), (1, 1));
    assert!(first.known.contains(&phone_key));
    // The erased deal is given to someone else meanwhile.
    let erased = deal(&mut deals, &admin, &created.id).await?;
    let other = pb::Contact {
        email: "someone.else@example.org".into(),
        ..Default::default()
    };
    deals
        .update_deal(outgoing(
            pb::UpdateDealRequest {
                deal_id: created.id.clone(),
                expected_version: erased.version,
                contact: Some(other.clone()),
                ..Default::default()
            },
            &admin,
        ))
        .await?;
    // The repeat: the deal no longer holds the phone, the receipt does; and the receipt's
    // deal, someone else's by now, is left alone.
    let again = store.erase_contact(ACCOUNT, "dpo", &by_email).await?;
    assert_eq!(
        (again.receipt_id, again.deals_now, again.deals_in_total),
        (first.receipt_id, 0, 1)
    );
    assert!(again.known.contains(&phone_key), "{:?}", again.known);
    let kept = deal(&mut deals, &admin, &created.id).await?;
    assert_eq!(kept.contact.map(|c| c.email), Some(other.email));
    stack.stop().await
}

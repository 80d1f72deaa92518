//! EraseContact's broker part: how long its scan of an account's intake lane takes, now
//! that decided funnel leads stay there for the retention window (docs/privacy.md).
//! Measured from the call of `lanes::delete_person` to its return, on a broker of its own
//! (nothing else running), with the account's leads already in the lane.

use std::time::Instant;

use prost::Message as _;
use salesplan_platform::{
    bus::{Bus, Outgoing, streams},
    config::NatsConfig,
    privacy::ContactKeys,
};
use salesplan_proto::v1 as pb;

use super::{BenchConfig, Line};
use crate::TestNats;

const ACCOUNT: &str = "bench-erasure";

/// `config.leads` funnel leads of one account in the lane, one of them the person's (the
/// last), then the erasure's scan of the lanes and dead letters.
pub async fn run(config: &BenchConfig) -> anyhow::Result<Vec<Line>> {
    let nats = TestNats::start().await?;
    let bus = Bus::connect(&NatsConfig::local(&nats.url), "bench-erasure").await?;
    bus.ensure_streams(&streams::ALL).await?;
    let keys = ContactKeys::dev();
    let leads = config.leads.max(1);
    for chunk in (0..leads).collect::<Vec<_>>().chunks(1_000) {
        let batch = chunk
            .iter()
            .map(|n| {
                let email = if *n + 1 == leads {
                    "erase.me@example.com".to_owned()
                } else {
                    format!("lead{n}@example.com")
                };
                lead(*n, &email)
            })
            .collect();
        bus.publish_all(batch).await?;
    }
    let known = keys.every_of(ACCOUNT, "", "erase.me@example.com", "");
    let started = Instant::now();
    let deleted = deal_service::events::lanes::delete_person(&bus, &keys, ACCOUNT, &known).await?;
    let took = started.elapsed();
    anyhow::ensure!(
        deleted.intake == 1,
        "the person's lead was not deleted: {deleted:?}"
    );
    bus.close().await;
    drop(nats);
    Ok(vec![Line::rate(
        "privacy",
        format!(
            "EraseContact's broker part: scan of {leads} of the account's funnel leads in the lane (one the person's)"
        ),
        leads,
        took,
        "within the call's 30 s for an account's week of funnel leads",
    )])
}

fn lead(n: usize, email: &str) -> Outgoing {
    let intake_id = uuid::Uuid::new_v4().to_string();
    let event = pb::IntakeEvent {
        intake_id: intake_id.clone(),
        account_id: ACCOUNT.into(),
        lead: Some(pb::Lead {
            contact: Some(pb::Contact {
                name: format!("Lead {n}"),
                email: email.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Outgoing::new(
        streams::intake_subject(ACCOUNT, "plan"),
        intake_id,
        event.encode_to_vec(),
    )
}

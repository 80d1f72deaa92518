//! Accepting a lead: validate it, turn it into an intake event, and answer only once
//! JetStream has stored the event. Shared by the webhook and the gRPC IntakeService.

use prost::Message as _;
use salesplan_platform::{
    Actor, ApiError,
    bus::{Bus, Outgoing, streams},
    ids::{derived_id, parse_id},
    validate::{self, ContactInput},
};
use salesplan_proto::v1 as pb;
use time::OffsetDateTime;
use uuid::Uuid;

/// What became of an accepted lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub intake_id: Uuid,
    /// False when the same lead was accepted before (a retried webhook).
    pub accepted_now: bool,
}

/// Checks every field of a lead and normalises it (trimmed text, lower-case e-mail).
pub fn validated_lead(lead: pb::Lead) -> Result<pb::Lead, ApiError> {
    parse_id("plan_id", &lead.plan_id)?;
    let contact = lead.contact.unwrap_or_default();
    let contact = ContactInput {
        external_id: contact.external_id,
        name: contact.name,
        email: contact.email,
        phone: contact.phone,
    }
    .validated()
    .map_err(|e| e.within("contact"))?;
    if let Some(amount) = &lead.amount {
        validate::money("amount", amount.amount_minor, &amount.currency)?;
    }
    Ok(pb::Lead {
        plan_id: lead.plan_id,
        tunnel_id: validate::text("tunnel_id", &lead.tunnel_id, 128)?,
        block_id: validate::text("block_id", &lead.block_id, 128)?,
        run_id: validate::required_text("run_id", &lead.run_id, 200)?,
        contact: Some(pb::Contact {
            external_id: contact.external_id,
            name: contact.name,
            email: contact.email,
            phone: contact.phone,
        }),
        title: validate::text("title", &lead.title, 300)?,
        amount: lead.amount,
        related_manager_id: lead
            .related_manager_id
            .map(|m| validate::text("related_manager_id", &m, 128))
            .transpose()?
            .filter(|m| !m.is_empty()),
    })
}

/// The intake id of a lead: the same for every retry of the same tunnel run through the
/// same action block into the same plan of the same account.
pub fn intake_id(account_id: &str, lead: &pb::Lead) -> Uuid {
    derived_id(&[account_id, &lead.plan_id, &lead.block_id, &lead.run_id])
}

/// Validates `lead` and publishes its intake event.
pub async fn accept(
    bus: &Bus,
    actor: &Actor,
    lead: pb::Lead,
    source: pb::IntakeSource,
) -> Result<Accepted, ApiError> {
    let lead = validated_lead(lead)?;
    let intake_id = intake_id(&actor.account_id, &lead);
    let event = pb::IntakeEvent {
        intake_id: intake_id.to_string(),
        account_id: actor.account_id.clone(),
        received_at: Some(now()),
        source: source as i32,
        assign_to_manager_id: None,
        lead: Some(lead),
    };
    let plan_id = event
        .lead
        .as_ref()
        .map(|l| l.plan_id.as_str())
        .unwrap_or("");
    let subject = streams::intake_subject(&actor.account_id, plan_id);
    let stored = bus
        .publish(Outgoing::new(
            subject,
            intake_id.to_string(),
            event.encode_to_vec(),
        ))
        .await?;
    Ok(Accepted {
        intake_id,
        accepted_now: !stored.duplicate,
    })
}

fn now() -> prost_types::Timestamp {
    let now = OffsetDateTime::now_utc();
    prost_types::Timestamp {
        seconds: now.unix_timestamp(),
        nanos: now.nanosecond() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead() -> pb::Lead {
        pb::Lead {
            plan_id: Uuid::new_v4().to_string(),
            tunnel_id: "t1".into(),
            block_id: "b1".into(),
            run_id: "run-1".into(),
            contact: Some(pb::Contact {
                name: " Ann ".into(),
                email: "Ann@Example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn leads_are_normalised() {
        let lead = validated_lead(lead()).unwrap();
        let contact = lead.contact.unwrap();
        assert_eq!(contact.name, "Ann");
        assert_eq!(contact.email, "ann@example.com");
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = fn(&mut pb::Lead);
        let cases: Vec<(Mutation, &str)> = vec![
            (|l| l.plan_id = "x".into(), "plan_id"),
            (|l| l.run_id = " ".into(), "run_id"),
            (|l| l.contact = None, "contact.external_id"),
            (
                |l| l.contact.as_mut().unwrap().phone = "phone me".into(),
                "contact.phone",
            ),
            (
                |l| {
                    l.amount = Some(pb::Money {
                        amount_minor: -1,
                        currency: "USD".into(),
                    })
                },
                "amount.amount_minor",
            ),
        ];
        for (mutate, field) in cases {
            let mut l = lead();
            mutate(&mut l);
            assert_eq!(validated_lead(l).unwrap_err().field(), Some(field));
        }
    }

    #[test]
    fn a_retried_run_has_the_same_intake_id_and_another_run_another() {
        let l = lead();
        assert_eq!(intake_id("acme", &l), intake_id("acme", &l));
        let mut other = l.clone();
        other.run_id = "run-2".into();
        assert_ne!(intake_id("acme", &l), intake_id("acme", &other));
        assert_ne!(intake_id("acme", &l), intake_id("globex", &l));
    }
}

//! A lead as the listener takes it: every field checked and normalised, its intake id
//! (the same for every retry), and the token of an answer. Pure.

use salesplan_platform::privacy::ContactKeys;
use salesplan_platform::{
    AllChecks, ApiError, Checks,
    consistency::LeadsToken,
    ids::{derived_id, parse_id},
    validate::{self, ContactInput},
};
use salesplan_proto::v1 as pb;
use uuid::Uuid;

/// Contacts per AddAudience chunk at most.
pub const MAX_CHUNK: usize = 1_000;

/// What became of an accepted lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub intake_id: Uuid,
    /// False when the same lead was accepted before (a retried webhook).
    pub accepted_now: bool,
}

impl Accepted {
    /// What a read waits for to include this lead's deal.
    pub fn consistency_token(&self) -> String {
        LeadsToken::new(vec![self.intake_id]).to_string()
    }
}

/// What a read waits for to include the deals of a chunk's accepted and duplicate
/// contacts (a duplicate was accepted before: its deal comes, or is there).
pub fn chunk_token(results: &[pb::ContactResult]) -> String {
    let taken = [
        pb::ContactOutcome::Accepted as i32,
        pb::ContactOutcome::Duplicate as i32,
    ];
    LeadsToken::new(
        results
            .iter()
            .filter(|r| taken.contains(&r.outcome))
            .filter_map(|r| Uuid::parse_str(&r.intake_id).ok())
            .collect(),
    )
    .to_string()
}

pub fn contact_from(contact: Option<pb::Contact>) -> Result<pb::Contact, ApiError> {
    let contact = ContactInput::from(contact.unwrap_or_default())
        .validated()
        .map_err(|e| e.within("contact"))?;
    Ok(contact.into())
}

pub fn amount_from(amount: &Option<pb::Money>) -> Result<(), ApiError> {
    if let Some(amount) = amount {
        validate::money("amount", amount.amount_minor, &amount.currency)?;
    }
    Ok(())
}

/// Checks every field of a lead and normalises it (trimmed text, lower-case e-mail); a
/// bad lead is refused once, with every violation.
pub fn validated_lead(lead: pb::Lead) -> Result<pb::Lead, ApiError> {
    let mut checks = Checks::new();
    // One plan, one spelling: the intake id and the subject are made of the canonical one.
    let plan_id = checks
        .check(parse_id("plan_id", &lead.plan_id))
        .map_or(lead.plan_id, |id| id.to_string());
    checks.check(amount_from(&lead.amount));
    let lead = pb::Lead {
        contact: checks.check(contact_from(lead.contact)),
        tunnel_id: checks.take(validate::text("tunnel_id", &lead.tunnel_id, 128)),
        block_id: checks.take(validate::text("block_id", &lead.block_id, 128)),
        run_id: checks.take(validate::required_text("run_id", &lead.run_id, 200)),
        title: checks.take(validate::text("title", &lead.title, 300)),
        related_manager_id: checks
            .take(
                lead.related_manager_id
                    .map(|m| validate::text("related_manager_id", &m, 128))
                    .transpose(),
            )
            .filter(|m| !m.is_empty()),
        plan_id,
        amount: lead.amount,
    };
    checks.finish()?;
    Ok(lead)
}

/// The intake id of a lead: the same for every retry of the same tunnel run through the
/// same action block into the same plan of the same account.
pub fn intake_id(account_id: &str, lead: &pb::Lead) -> Uuid {
    derived_id(&[account_id, &lead.plan_id, &lead.block_id, &lead.run_id])
}

/// The intake id of a contact of a bulk job: the same for every retry of the job.
/// `contact_key` is the contact's keyed key: the id, which becomes the deal's idempotency
/// key, cannot be recomputed from a known e-mail without the deployment's secret.
pub fn bulk_intake_id(account_id: &str, plan_id: &str, job_id: &str, contact_key: &str) -> Uuid {
    derived_id(&[account_id, plan_id, "bulk", job_id, contact_key])
}

/// A contact of a bulk job's chunk as a lead of `plan_id` (canonical), with its intake id;
/// every violation of its contact, amount and title at once.
pub fn audience_lead(
    keys: &ContactKeys,
    account_id: &str,
    plan_id: &str,
    job_id: &str,
    item: pb::AudienceContact,
) -> Result<(Uuid, pb::Lead), ApiError> {
    let (contact, (), title) = (
        contact_from(item.contact),
        amount_from(&item.amount),
        validate::text("title", &item.title, 300),
    )
        .all()?;
    let key = keys
        .of(
            account_id,
            &contact.external_id,
            &contact.email,
            &contact.phone,
        )
        .unwrap_or_default();
    let intake_id = bulk_intake_id(account_id, plan_id, job_id, &key);
    let lead = pb::Lead {
        plan_id: plan_id.to_owned(),
        run_id: job_id.to_owned(),
        contact: Some(contact),
        title,
        amount: item.amount,
        ..Default::default()
    };
    Ok((intake_id, lead))
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
        assert_ne!(
            bulk_intake_id("acme", &l.plan_id, "job-1", "ext:1"),
            bulk_intake_id("acme", &l.plan_id, "job-2", "ext:1")
        );
    }
}

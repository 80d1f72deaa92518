//! The streams and subjects of salesplan. Subjects are versioned (`v1`) and carry the
//! account as a token, so work can be partitioned by account.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};

#[derive(Debug, Clone, Copy)]
pub struct StreamSpec {
    pub name: &'static str,
    pub subjects: &'static str,
    /// Zero keeps messages forever (deal events: reporting rebuilds by replaying them).
    pub max_age: Duration,
    pub duplicate_window: Duration,
    /// `Limits` keeps messages for every consumer until they age out; `WorkQueue` removes
    /// a message once acked, so what the stream holds is exactly the work still to do.
    pub retention: RetentionPolicy,
    /// It holds leads (personal data: the intake lanes, the dead letters): kept at most the deployment's `SALESPLAN_INTAKE_RETENTION_HOURS` instead of
    /// `max_age`.
    pub holds_leads: bool,
}

impl StreamSpec {
    /// The stream's settings; `intake_retention` is the age limit of the intake lanes.
    pub fn config(&self, replicas: usize, intake_retention: Duration) -> Config {
        let max_age = if self.holds_leads {
            intake_retention
        } else {
            self.max_age
        };
        Config {
            name: self.name.to_owned(),
            subjects: vec![self.subjects.to_owned()],
            retention: self.retention,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            max_age,
            // The server refuses a duplicate window longer than the age limit.
            duplicate_window: if max_age.is_zero() {
                self.duplicate_window
            } else {
                self.duplicate_window.min(max_age)
            },
            num_replicas: replicas,
            // The horizons' stream keeps the newest message only.
            max_messages_per_subject: if self.name == "SALESPLAN_HORIZONS" {
                1
            } else {
                0
            },
            ..Default::default()
        }
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// "Add to sales plan" events of the interactive lane (webhook, AddToSalesPlan): a funnel's
/// single lead never waits behind a bulk add.
pub const INTAKE: StreamSpec = StreamSpec {
    name: "SALESPLAN_INTAKE",
    subjects: "salesplan.intake.v1.>",
    max_age: Duration::from_secs(7 * DAY.as_secs()),
    duplicate_window: Duration::from_secs(10 * 60),
    retention: RetentionPolicy::Limits,
    holds_leads: true,
};

/// "Add to sales plan" events of bulk adds (AddAudience), one subject per account and
/// plan. A work queue: what it holds of an account is that account's bulk backlog, which
/// the listener caps, and the distributor serves the accounts in turn.
pub const BULK: StreamSpec = StreamSpec {
    name: "SALESPLAN_BULK",
    subjects: "salesplan.bulk.v1.>",
    max_age: Duration::from_secs(7 * DAY.as_secs()),
    duplicate_window: Duration::from_secs(10 * 60),
    retention: RetentionPolicy::WorkQueue,
    holds_leads: true,
};

/// Deal events from deal-service's outbox.
pub const DEALS: StreamSpec = StreamSpec {
    name: "SALESPLAN_DEALS",
    subjects: "salesplan.deals.v1.>",
    max_age: Duration::ZERO,
    duplicate_window: Duration::from_secs(10 * 60),
    retention: RetentionPolicy::Limits,
    holds_leads: false,
};

/// Plan snapshots from deal-service's outbox.
pub const PLANS: StreamSpec = StreamSpec {
    name: "SALESPLAN_PLANS",
    subjects: "salesplan.plans.v1.>",
    max_age: Duration::ZERO,
    duplicate_window: Duration::from_secs(10 * 60),
    retention: RetentionPolicy::Limits,
    holds_leads: false,
};

/// The distributor's assignment decisions, with their explanation.
pub const ASSIGNMENTS: StreamSpec = StreamSpec {
    name: "SALESPLAN_ASSIGNMENTS",
    subjects: "salesplan.assignments.v1.>",
    max_age: Duration::from_secs(30 * DAY.as_secs()),
    duplicate_window: Duration::from_secs(10 * 60),
    retention: RetentionPolicy::Limits,
    holds_leads: false,
};

/// deal-service's outbox horizons (`pb::Horizon`, read your writes): only the newest is
/// kept, so the stream never grows.
pub const HORIZONS: StreamSpec = StreamSpec {
    name: "SALESPLAN_HORIZONS",
    subjects: HORIZON_SUBJECT,
    max_age: Duration::from_secs(DAY.as_secs()),
    duplicate_window: Duration::from_secs(60),
    retention: RetentionPolicy::Limits,
    holds_leads: false,
};

pub const HORIZON_SUBJECT: &str = "salesplan.horizons.v1";

/// Messages a consumer could not process after its retries.
pub const DEAD_LETTERS: StreamSpec = StreamSpec {
    name: "SALESPLAN_DEAD_LETTERS",
    subjects: "salesplan.dlq.v1.>",
    max_age: Duration::from_secs(30 * DAY.as_secs()),
    duplicate_window: Duration::from_secs(60),
    retention: RetentionPolicy::Limits,
    // A dead letter of an intake lane is a whole lead: kept as long as leads are.
    holds_leads: true,
};

pub const ALL: [StreamSpec; 7] = [
    INTAKE,
    BULK,
    DEALS,
    PLANS,
    ASSIGNMENTS,
    HORIZONS,
    DEAD_LETTERS,
];

pub fn intake_subject(account_id: &str, plan_id: &str) -> String {
    format!("salesplan.intake.v1.{account_id}.{plan_id}")
}

pub fn bulk_subject(account_id: &str, plan_id: &str) -> String {
    format!("salesplan.bulk.v1.{account_id}.{plan_id}")
}

/// Every bulk subject of one account.
pub fn bulk_subjects_of(account_id: &str) -> String {
    format!("salesplan.bulk.v1.{account_id}.>")
}

pub fn deal_subject(account_id: &str, kind: &str) -> String {
    format!("salesplan.deals.v1.{account_id}.{kind}")
}

/// The header of a deal or plan event naming the deal-service transaction that wrote it
/// (`pg_current_xact_id()`).
pub const XID_HEADER: &str = "Salesplan-Xid";

/// Every deal subject of one account.
pub fn deal_subjects_of(account_id: &str) -> String {
    format!("salesplan.deals.v1.{account_id}.>")
}

pub fn plan_subject(account_id: &str, kind: &str) -> String {
    format!("salesplan.plans.v1.{account_id}.{kind}")
}

/// A manager's availability changed (on the plans stream: ordered with the plans'
/// changes of the account, and consumed by who keeps plans).
pub fn manager_subject(account_id: &str) -> String {
    format!("salesplan.plans.v1.{account_id}.{MANAGER_TOKEN}")
}

/// The last token of a manager event's subject.
pub const MANAGER_TOKEN: &str = "manager";

/// Whether a subject of the plans stream carries a manager event (not a plan event).
pub fn is_manager_subject(subject: &str) -> bool {
    subject.starts_with("salesplan.plans.v1.") && subject.rsplit('.').next() == Some(MANAGER_TOKEN)
}

pub fn assignment_subject(account_id: &str) -> String {
    format!("salesplan.assignments.v1.{account_id}.decided")
}

/// `salesplan.dlq.v1.<consumer>.<account>`: the account of the message's subject (`_` for
/// one without), so a person's erasure reads only their account's dead letters. Dead
/// letters from before the account token was added have subject `salesplan.dlq.v1.<consumer>`.
pub fn dead_letter_subject(consumer: &str, original_subject: &str) -> String {
    let account = account_of(original_subject).unwrap_or("_");
    format!("salesplan.dlq.v1.{consumer}.{account}")
}

/// Every dead letter of `consumer`, of any account (a subject filter).
pub fn dead_letters_of(consumer: &str) -> String {
    format!("salesplan.dlq.v1.{consumer}.*")
}

/// The account token of an intake, deal, plan or assignment subject
/// (`salesplan.<stream>.v1.<account>.…`).
pub fn account_of(subject: &str) -> Option<&str> {
    let mut tokens = subject.split('.');
    match (tokens.next(), tokens.next(), tokens.next(), tokens.next()) {
        (Some("salesplan"), Some(_), Some("v1"), Some(account)) if !account.is_empty() => {
            Some(account)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_is_the_fourth_token() {
        assert_eq!(account_of(&deal_subject("acme", "created")), Some("acme"));
        assert_eq!(account_of(&plan_subject("a-1_b", "updated")), Some("a-1_b"));
        assert_eq!(account_of(&intake_subject("acme", "p")), Some("acme"));
        assert_eq!(account_of(&bulk_subject("acme", "p")), Some("acme"));
        assert_eq!(account_of("salesplan.dlq.v1"), None);
        assert_eq!(
            dead_letter_subject("reporting-deals", &deal_subject("acme", "created")),
            "salesplan.dlq.v1.reporting-deals.acme"
        );
        assert_eq!(dead_letter_subject("x", "odd"), "salesplan.dlq.v1.x._");
        assert_eq!(account_of("other.deals.v1.acme.x"), None);
    }
}

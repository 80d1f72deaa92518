//! A manager's availability, account-wide (a manager works in several plans): a schedule
//! and a pause switch, versioned like plans and deals. The rules of time are in
//! [`salesplan_platform::schedule`]; here is what a change does.

use salesplan_platform::schedule::{Availability, Schedule};
use time::OffsetDateTime;

/// The most managers of one account with availability set: each is a row every decision
/// of the distributor may read, and a copy it keeps.
pub const MAX_MANAGERS: i64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    pub account_id: String,
    pub manager_id: String,
    pub availability: Availability,
    /// 0: never set (works around the clock).
    pub version: i64,
    /// The account's order of availability changes: this manager's last change's place.
    pub sequence: i64,
    pub updated_at: Option<OffsetDateTime>,
}

/// A change of a manager's availability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Schedule(Box<Schedule>),
    Paused(bool),
}

impl Manager {
    /// A manager whose availability was never set.
    pub fn unset(account_id: &str, manager_id: &str) -> Self {
        Self {
            account_id: account_id.to_owned(),
            manager_id: manager_id.to_owned(),
            availability: Availability::default(),
            version: 0,
            sequence: 0,
            updated_at: None,
        }
    }

    /// Applies `change` at `now`; false (and nothing changed) when it is already in force,
    /// so a repeated call answers the same availability at the same version.
    pub fn apply(&mut self, change: Change, now: OffsetDateTime) -> bool {
        let before = self.availability.clone();
        match change {
            Change::Schedule(schedule) => self.availability.schedule = *schedule,
            Change::Paused(paused) => self.availability.paused = paused,
        }
        if self.availability == before && self.version > 0 {
            return false;
        }
        self.version += 1;
        self.updated_at = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_changes_nothing_and_a_first_setting_always_counts() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut m = Manager::unset("acme", "anna");
        // Setting the default schedule still records the manager (version 1).
        assert!(m.apply(Change::Schedule(Box::default()), now));
        assert_eq!(m.version, 1);
        assert!(!m.apply(Change::Schedule(Box::default()), now));
        assert!(m.apply(Change::Paused(true), now));
        assert!(!m.apply(Change::Paused(true), now));
        assert_eq!((m.version, m.availability.paused), (2, true));
    }
}

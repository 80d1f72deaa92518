//! The distributor's copy of managers' availability, and who of a plan's members is
//! unavailable at a decision.

use std::collections::HashMap;

use salesplan_platform::schedule::{Availability, Schedule};
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::{
    batch::AvailabilityStamp,
    distribution::{Away, away_at},
};

/// A manager's availability from a manager event.
#[derive(Debug, Clone)]
pub struct ManagerCopy {
    pub account_id: String,
    pub manager_id: String,
    pub version: i64,
    /// The account's order of availability changes: this change's place.
    pub sequence: i64,
    pub availability: Availability,
}

impl Store {
    /// Applies a manager's availability unless a newer one was applied already; the
    /// AUTO plans of the account the manager is a member of (their queues may move).
    pub async fn apply_manager(&self, copy: &ManagerCopy) -> Result<Vec<Uuid>, StoreError> {
        let schedule = serde_json::to_value(&copy.availability.schedule)
            .map_err(|_| StoreError::Corrupt("manager_availability.schedule"))?;
        sqlx::query(
            "INSERT INTO manager_availability (account_id, manager_id, schedule, paused, version, seq)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (account_id, manager_id) DO UPDATE SET
                schedule = excluded.schedule, paused = excluded.paused, version = excluded.version,
                seq = excluded.seq
             WHERE manager_availability.version < excluded.version",
        )
        .bind(&copy.account_id)
        .bind(&copy.manager_id)
        .bind(schedule)
        .bind(copy.availability.paused)
        .bind(copy.version)
        .bind(copy.sequence)
        .execute(&self.pool)
        .await?;
        let plans = sqlx::query_scalar(
            "SELECT plan_id FROM plans
             WHERE account_id = $1 AND $2 = ANY(managers) AND mode = 'auto' AND NOT archived",
        )
        .bind(&copy.account_id)
        .bind(&copy.manager_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(plans)
    }
}

/// The members of `managers` unavailable at `at` (now: the decision's time), from the
/// availability kept of them; and the stamp of what is kept (see
/// [`AvailabilityStamp::covers`]).
pub(super) async fn away(
    conn: &mut PgConnection,
    account_id: &str,
    managers: &[String],
    at: OffsetDateTime,
) -> Result<(Away, AvailabilityStamp), StoreError> {
    let (known, stamp) = availability(conn, account_id, managers).await?;
    Ok((away_at(managers, &known, at), stamp))
}

/// The availability kept of those of `managers` that have one (the others work around the
/// clock), and the stamp of what is kept.
pub(super) async fn availability(
    conn: &mut PgConnection,
    account_id: &str,
    managers: &[String],
) -> Result<(HashMap<String, Availability>, AvailabilityStamp), StoreError> {
    if managers.is_empty() {
        return Ok((HashMap::new(), AvailabilityStamp::default()));
    }
    let rows = sqlx::query(
        "SELECT manager_id, schedule, paused, version, seq FROM manager_availability
         WHERE account_id = $1 AND manager_id = ANY($2)",
    )
    .bind(account_id)
    .bind(managers)
    .fetch_all(conn)
    .await?;
    let mut known = HashMap::with_capacity(rows.len());
    let mut stamp = AvailabilityStamp::default();
    for row in rows {
        stamp.versions = stamp.versions.saturating_add(row.try_get("version")?);
        stamp.sequence = stamp.sequence.max(row.try_get("seq")?);
        let schedule: serde_json::Value = row.try_get("schedule")?;
        let schedule: Schedule = serde_json::from_value(schedule)
            .map_err(|_| StoreError::Corrupt("manager_availability.schedule"))?;
        known.insert(
            row.try_get::<String, _>("manager_id")?,
            Availability {
                schedule,
                paused: row.try_get("paused")?,
            },
        );
    }
    Ok((known, stamp))
}

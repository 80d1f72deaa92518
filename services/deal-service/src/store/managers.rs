//! Managers' availability: read one or a page, and change one with its event in the same
//! transaction.

use salesplan_platform::{Reason, db, schedule::Schedule};
use sqlx::{PgConnection, Postgres, Row, Transaction, postgres::PgRow};

use super::{Store, StoreError, events, now, rows::corrupt};
use crate::SCHEMA;
use crate::domain::{
    DomainError,
    manager::{Change, MAX_MANAGERS, Manager},
};

/// `SELECT … FROM manager_availability` and the rest of the statement.
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT account_id, manager_id, schedule, paused, version, seq, updated_at
             FROM manager_availability ",
            $rest
        )
    };
}

/// What a lead is stamped with of its plan's members' availability (GetPlanResponse).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    pub versions: i64,
    pub sequence: i64,
}

impl Store {
    /// The manager's availability; one never set works around the clock (version 0).
    pub async fn manager(&self, account_id: &str, manager_id: &str) -> Result<Manager, StoreError> {
        let row = sqlx::query(select!("WHERE account_id = $1 AND manager_id = $2"))
            .bind(account_id)
            .bind(manager_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => manager_from(&row),
            None => Ok(Manager::unset(account_id, manager_id)),
        }
    }

    /// The stamp of `managers`' availability — the sum of their versions (it grows with
    /// every change of any of them) and the newest of their sequences — and with `rows`
    /// their availability too.
    pub async fn members_availability(
        &self,
        account_id: &str,
        managers: &[String],
        rows: bool,
    ) -> Result<(Stamp, Vec<Manager>), StoreError> {
        if managers.is_empty() {
            return Ok((Stamp::default(), Vec::new()));
        }
        if !rows {
            let row = sqlx::query(
                "SELECT coalesce(sum(version), 0)::bigint AS versions,
                        coalesce(max(seq), 0)::bigint AS sequence
                 FROM manager_availability WHERE account_id = $1 AND manager_id = ANY($2)",
            )
            .bind(account_id)
            .bind(managers)
            .fetch_one(&self.pool)
            .await?;
            let stamp = Stamp {
                versions: row.try_get("versions")?,
                sequence: row.try_get("sequence")?,
            };
            return Ok((stamp, Vec::new()));
        }
        let set = sqlx::query(select!("WHERE account_id = $1 AND manager_id = ANY($2)"))
            .bind(account_id)
            .bind(managers)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(manager_from)
            .collect::<Result<Vec<_>, _>>()?;
        let stamp = Stamp {
            versions: set.iter().map(|m| m.version).sum(),
            sequence: set.iter().map(|m| m.sequence).max().unwrap_or(0),
        };
        Ok((stamp, set))
    }

    /// A page of the account's managers with availability set, by id after `after`; and
    /// whether more follow.
    pub async fn list_managers(
        &self,
        account_id: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<Manager>, bool), StoreError> {
        let rows = sqlx::query(select!(
            "WHERE account_id = $1 AND ($2::text IS NULL OR manager_id > $2)
             ORDER BY manager_id LIMIT $3"
        ))
        .bind(account_id)
        .bind(after)
        .bind(limit as i64 + 1)
        .fetch_all(&self.reads)
        .await?;
        let mut managers = rows
            .iter()
            .map(manager_from)
            .collect::<Result<Vec<_>, _>>()?;
        let more = managers.len() > limit;
        managers.truncate(limit);
        Ok((managers, more))
    }

    /// Applies `change` to the manager's availability; a change already in force answers
    /// the availability as it is, writing nothing.
    pub async fn change_manager(
        &self,
        account_id: &str,
        actor_id: &str,
        manager_id: &str,
        change: Change,
    ) -> Result<Manager, StoreError> {
        db::traced(SCHEMA, "UPDATE manager_availability", async {
            let now = now();
            let mut tx = self.pool.begin().await?;
            let mut manager = match locked(&mut tx, account_id, manager_id).await? {
                Some(manager) => manager,
                None => {
                    within_manager_cap(&mut tx, account_id).await?;
                    // Two first settings at once: the cap's lock let one in first.
                    locked(&mut tx, account_id, manager_id)
                        .await?
                        .unwrap_or_else(|| Manager::unset(account_id, manager_id))
                }
            };
            if !manager.apply(change, now) {
                super::note_seen(&mut tx).await?;
                return Ok(manager);
            }
            manager.sequence = next_sequence(&mut tx, account_id).await?;
            save(&mut tx, &manager).await?;
            events::record_manager(&mut tx, &manager, actor_id, now).await?;
            super::commit(tx).await?;
            Ok(manager)
        })
        .await
    }
}

/// The manager's schedule (around the clock if never set).
pub(super) async fn schedule_of(
    conn: &mut PgConnection,
    account_id: &str,
    manager_id: &str,
) -> Result<salesplan_platform::schedule::Schedule, StoreError> {
    let row = sqlx::query(select!("WHERE account_id = $1 AND manager_id = $2"))
        .bind(account_id)
        .bind(manager_id)
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        Some(row) => manager_from(&row)?.availability.schedule,
        None => Default::default(),
    })
}

async fn locked(
    tx: &mut Transaction<'_, Postgres>,
    account_id: &str,
    manager_id: &str,
) -> Result<Option<Manager>, StoreError> {
    sqlx::query(select!(
        "WHERE account_id = $1 AND manager_id = $2 FOR UPDATE"
    ))
    .bind(account_id)
    .bind(manager_id)
    .fetch_optional(&mut **tx)
    .await?
    .as_ref()
    .map(manager_from)
    .transpose()
}

/// Refuses a new manager when the account has its cap of them; one account's first
/// settings take turns, so two at once cannot pass it together.
async fn within_manager_cap(
    tx: &mut Transaction<'_, Postgres>,
    account_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('managers:' || $1, 0))")
        .bind(account_id)
        .execute(&mut **tx)
        .await?;
    let set: i64 =
        sqlx::query_scalar("SELECT count(*) FROM manager_availability WHERE account_id = $1")
            .bind(account_id)
            .fetch_one(&mut **tx)
            .await?;
    if set >= MAX_MANAGERS {
        return Err(DomainError::Precondition(
            Reason::ManagerCapReached,
            format!("the account has availability set for {set} managers, the most it may"),
        )
        .into());
    }
    Ok(())
}

/// The account's next place in its order of availability changes. The row stays locked
/// until the change commits: one account's changes commit in the order of their numbers.
async fn next_sequence(
    tx: &mut Transaction<'_, Postgres>,
    account_id: &str,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO manager_sequences (account_id, seq) VALUES ($1, 1)
         ON CONFLICT (account_id) DO UPDATE SET seq = manager_sequences.seq + 1
         RETURNING seq",
    )
    .bind(account_id)
    .fetch_one(&mut **tx)
    .await?)
}

async fn save(tx: &mut Transaction<'_, Postgres>, manager: &Manager) -> Result<(), StoreError> {
    let schedule = serde_json::to_value(&manager.availability.schedule)
        .map_err(|err| StoreError::Internal(format!("schedule: {err}")))?;
    sqlx::query(
        "INSERT INTO manager_availability
            (account_id, manager_id, schedule, paused, version, updated_at, seq)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (account_id, manager_id) DO UPDATE SET schedule = $3, paused = $4,
            version = $5, updated_at = $6, seq = $7",
    )
    .bind(&manager.account_id)
    .bind(&manager.manager_id)
    .bind(schedule)
    .bind(manager.availability.paused)
    .bind(manager.version)
    .bind(manager.updated_at)
    .bind(manager.sequence)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn manager_from(row: &PgRow) -> Result<Manager, StoreError> {
    let schedule: serde_json::Value = row.try_get("schedule")?;
    let schedule: Schedule =
        serde_json::from_value(schedule).map_err(|_| corrupt("manager_availability.schedule"))?;
    Ok(Manager {
        account_id: row.try_get("account_id")?,
        manager_id: row.try_get("manager_id")?,
        availability: salesplan_platform::schedule::Availability {
            schedule,
            paused: row.try_get("paused")?,
        },
        version: row.try_get("version")?,
        sequence: row.try_get("seq")?,
        updated_at: row.try_get("updated_at")?,
    })
}

//! A person's data in an account: erasure (ContactService.EraseContact).

use std::collections::HashMap;

use salesplan_platform::validate::ContactInput;
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use sqlx::Row as _;

use super::{
    BulkTarget, HistoryRow, MAX_BULK_DEALS, Store, StoreError,
    queries::{HISTORY_COLUMNS, history_row},
    rows::{DEAL_COLUMNS, deal_from_row},
};
use crate::domain::deal::{Deal, NewDeal};

/// The advisory lock between an account's erasures and its deals from leads.
fn erasure_lock(account_id: &str) -> i64 {
    // A stable 64-bit digest of the account (its own namespace: "erase").
    let id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("erase:{account_id}").as_bytes(),
    );
    i64::from_be_bytes(id.as_bytes()[..8].try_into().unwrap_or_default())
}

/// The person's deals (id and identifiers), at most [`MAX_BULK_DEALS`] + 1: one look-up per
/// identifier given, each by its own index (a partial index is used only when the query
/// repeats its condition).
async fn person_deals(
    conn: &mut sqlx::PgConnection,
    account_id: &str,
    identity: &Identity,
) -> Result<Vec<(Uuid, String, String, String)>, StoreError> {
    let mut found: Vec<(Uuid, String, String, String)> = Vec::new();
    for (column, value) in [
        ("contact_external_id", &identity.external_id),
        ("contact_email", &identity.email),
        ("contact_phone_digits", &identity.phone_digits),
    ] {
        if value.is_empty() {
            continue;
        }
        found.extend(
            sqlx::query_as::<_, (Uuid, String, String, String)>(sqlx::AssertSqlSafe(format!(
                "SELECT id, contact_external_id, contact_email, contact_phone_digits
                 FROM deals WHERE account_id = $1 AND {column} = $2 AND {column} <> ''
                 LIMIT $3"
            )))
            .bind(account_id)
            .bind(value)
            .bind(MAX_BULK_DEALS as i64 + 1)
            .fetch_all(&mut *conn)
            .await?,
        );
    }
    found.sort_by_key(|(id, ..)| *id);
    found.dedup_by_key(|(id, ..)| *id);
    Ok(found)
}

/// The most deals one export answers with.
pub const MAX_EXPORT_DEALS: usize = 1_000;
/// The most history entries of one deal an export includes.
const MAX_EXPORT_HISTORY: usize = 10_000;

/// Who to erase: any of them matches (empty ones match nothing). The e-mail lower-cased,
/// the phone as digits, as deals keep them.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub external_id: String,
    pub email: String,
    pub phone_digits: String,
}

/// What an erasure did, and its receipt.
#[derive(Debug, Clone)]
pub struct Erasure {
    pub receipt_id: Uuid,
    pub first_at: OffsetDateTime,
    /// Deals erased by this call.
    pub deals_now: i64,
    /// Deals erased under this receipt, this call included.
    pub deals_in_total: i64,
    /// The keyed key of every identifier the person is known by (to find their leads).
    pub known: Vec<String>,
}

impl Store {
    /// Every deal of `identity` in the account with its history, oldest deal first.
    pub async fn export_contact(
        &self,
        account_id: &str,
        identity: &Identity,
    ) -> Result<Vec<(Deal, Vec<HistoryRow>)>, StoreError> {
        let mut conn = self.reads.acquire().await?;
        let found = person_deals(&mut conn, account_id, identity).await?;
        drop(conn);
        if found.len() > MAX_EXPORT_DEALS {
            return Err(StoreError::invalid(
                "external_id",
                format!(
                    "the person has more than {MAX_EXPORT_DEALS} deals: export by each identifier in turn"
                ),
            ));
        }
        // Two reads, whatever the number of deals: the deals, then their histories.
        let ids: Vec<Uuid> = found.into_iter().map(|(id, ..)| id).collect();
        let mut deals = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DEAL_COLUMNS} FROM deals WHERE account_id = $1 AND id = ANY($2)"
        )))
        .bind(account_id)
        .bind(&ids)
        .fetch_all(&self.reads)
        .await?
        .iter()
        .map(deal_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        deals.sort_by_key(|d| (d.created_at, d.id));
        let mut histories: HashMap<Uuid, Vec<HistoryRow>> = HashMap::new();
        for row in sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT d.id AS deal_id, h.* FROM UNNEST($2::uuid[]) AS d(id)
             CROSS JOIN LATERAL (SELECT {HISTORY_COLUMNS} FROM deal_history
                 WHERE account_id = $1 AND deal_id = d.id ORDER BY id LIMIT $3) h
             ORDER BY h.id"
        )))
        .bind(account_id)
        .bind(&ids)
        .bind(MAX_EXPORT_HISTORY as i64)
        .fetch_all(&self.reads)
        .await?
        {
            histories
                .entry(row.try_get("deal_id")?)
                .or_default()
                .push(history_row(&row)?);
        }
        Ok(deals
            .into_iter()
            .map(|deal| {
                let history = histories.remove(&deal.id).unwrap_or_default();
                (deal, history)
            })
            .collect())
    }

    /// Takes the contact and title off each lead's deal whose person was erased after the
    /// lead was received (the lead was on its way while the erasure ran); the contacts
    /// taken off, by the deal's idempotency key.
    ///
    /// In the creating transaction, under the account's erasure lock (shared: creates do
    /// not wait for each other): an erasure running takes it exclusively, so a lead's deal
    /// is either committed before the erasure looks for the person's deals, or created
    /// after the erasure's record of the person is visible.
    pub(super) async fn without_erased_contacts(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        account_id: &str,
        inputs: &mut [NewDeal],
    ) -> Result<HashMap<String, ContactInput>, StoreError> {
        let keyed: Vec<(usize, String)> = inputs
            .iter()
            .enumerate()
            .filter(|(_, d)| d.lead_received_at.is_some())
            .flat_map(|(i, d)| {
                self.contact_keys
                    .every_of(
                        account_id,
                        &d.contact.external_id,
                        &d.contact.email,
                        &d.contact.phone,
                    )
                    .into_iter()
                    .map(move |k| (i, k))
            })
            .collect();
        if keyed.is_empty() {
            return Ok(HashMap::new());
        }
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(erasure_lock(account_id))
            .execute(&mut **tx)
            .await?;
        let erased: HashMap<String, OffsetDateTime> = sqlx::query_as(
            "SELECT contact_key, erased_at FROM erased_contacts
             WHERE account_id = $1 AND contact_key = ANY($2)",
        )
        .bind(account_id)
        .bind(keyed.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
        let mut stripped = HashMap::new();
        for (i, key) in keyed {
            let deal = &mut inputs[i];
            if let (Some(at), Some(received)) = (erased.get(&key), deal.lead_received_at)
                && received < *at
                && !stripped.contains_key(&deal.idempotency_key)
            {
                stripped.insert(
                    deal.idempotency_key.clone(),
                    std::mem::take(&mut deal.contact),
                );
                deal.title = String::new();
            }
        }
        Ok(stripped)
    }

    /// Erases the contact and title of every deal of `identity` in the account, one change
    /// per deal (history, event) in chunks like a bulk change, and records the receipt.
    pub async fn erase_contact(
        &self,
        account_id: &str,
        actor_id: &str,
        identity: &Identity,
    ) -> Result<Erasure, StoreError> {
        // Under the account's erasure lock: creates of deals from leads wait (see
        // `without_erased_contacts`), so none slips between this look-up and the record.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(erasure_lock(account_id))
            .execute(&mut *tx)
            .await?;
        let found = person_deals(&mut tx, account_id, identity).await?;
        if found.len() > MAX_BULK_DEALS {
            return Err(StoreError::invalid(
                "external_id",
                format!(
                    "the person has more than {MAX_BULK_DEALS} deals: erase by each identifier in turn"
                ),
            ));
        }
        // Every identifier the person is known by, for leads still on their way.
        let mut known = self.contact_keys.every_of(
            account_id,
            &identity.external_id,
            &identity.email,
            &identity.phone_digits,
        );
        for (_, ext, email, digits) in &found {
            known.extend(self.contact_keys.every_of(account_id, ext, email, digits));
        }
        known.sort();
        known.dedup();
        sqlx::query(
            "INSERT INTO erased_contacts AS e (account_id, contact_key, erased_at)
             SELECT $1, k, now() FROM UNNEST($2::text[]) AS k
             ON CONFLICT (account_id, contact_key) DO UPDATE SET erased_at = excluded.erased_at",
        )
        .bind(account_id)
        .bind(&known)
        .execute(&mut *tx)
        .await?;
        // The receipt first, with what was found: a repeat after a failure below finishes
        // the same deals and messages.
        let asked = format!(
            "erase\0ext:{}\0email:{}\0phone:{}",
            identity.external_id, identity.email, identity.phone_digits
        );
        let found_ids: Vec<Uuid> = found.into_iter().map(|(id, ..)| id).collect();
        let receipt: Receipt = sqlx::query_as(
            "INSERT INTO contact_erasures AS e
                (account_id, identity_key, receipt_id, first_at, deals, known, deal_ids)
             VALUES ($1, $2, $3, now(), cardinality($5::uuid[]), $4, $5)
             ON CONFLICT (account_id, identity_key) DO UPDATE SET
                known = ARRAY(SELECT DISTINCT k FROM unnest(e.known || excluded.known) k ORDER BY k),
                deal_ids = ARRAY(SELECT DISTINCT d FROM unnest(e.deal_ids || excluded.deal_ids) d),
                deals = e.deals + (SELECT count(DISTINCT d) FROM unnest(excluded.deal_ids) d
                                   WHERE d <> ALL(e.deal_ids))
             RETURNING receipt_id, first_at, deals, known, deal_ids",
        )
        .bind(account_id)
        .bind(self.contact_keys.of_plain(account_id, &asked))
        .bind(Uuid::new_v4())
        .bind(&known)
        .bind(&found_ids)
        .fetch_one(&mut *tx)
        .await?;
        if receipt.deal_ids.len() > MAX_BULK_DEALS {
            return Err(StoreError::invalid(
                "external_id",
                format!(
                    "the person has more than {MAX_BULK_DEALS} deals: erase by each identifier in turn"
                ),
            ));
        }
        tx.commit().await?;
        // Deals erased before (by this receipt or otherwise) are left as they are, and so is
        // a remembered deal that holds someone else by now (its contact changed since).
        let known_keys: std::collections::HashSet<&str> =
            receipt.known.iter().map(String::as_str).collect();
        let not_the_persons = |deal: &Deal| {
            Deal::is_erased(deal)
                || self
                    .contact_keys
                    .every_of(
                        account_id,
                        &deal.contact.external_id,
                        &deal.contact.email,
                        &deal.contact.phone,
                    )
                    .iter()
                    .all(|k| !known_keys.contains(k.as_str()))
        };
        let outcome = self
            .bulk_change(
                account_id,
                actor_id,
                BulkTarget::Ids(receipt.deal_ids.clone()),
                None,
                not_the_persons,
                |deal, _, now| Ok(deal.erased(now)),
            )
            .await?;
        let (receipt_id, first_at, deals_in_total, known) = (
            receipt.receipt_id,
            receipt.first_at,
            receipt.deals,
            receipt.known,
        );
        Ok(Erasure {
            receipt_id,
            first_at,
            deals_now: outcome.changed,
            deals_in_total,
            known,
        })
    }
}

/// A receipt as recorded: what every erasure of the same request found.
#[derive(sqlx::FromRow)]
struct Receipt {
    receipt_id: Uuid,
    first_at: OffsetDateTime,
    /// Deals of the receipt (all of them erased once the call answers OK).
    deals: i64,
    /// Keyed keys of every identifier the person was known by.
    known: Vec<String>,
    deal_ids: Vec<Uuid>,
}

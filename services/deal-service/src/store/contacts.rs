//! A person's data in an account: erasure (ContactService.EraseContact).

use time::OffsetDateTime;
use uuid::Uuid;

use super::{BulkTarget, MAX_BULK_DEALS, Store, StoreError};
use crate::domain::deal::Deal;

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
}

impl Store {
    /// Erases the contact and title of every deal of `identity` in the account, one change
    /// per deal (history, event) in chunks like a bulk change, and records the receipt.
    pub async fn erase_contact(
        &self,
        account_id: &str,
        actor_id: &str,
        identity: &Identity,
    ) -> Result<Erasure, StoreError> {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM deals WHERE account_id = $1
               AND (($2 <> '' AND contact_external_id = $2) OR ($3 <> '' AND contact_email = $3)
                    OR ($4 <> '' AND contact_phone_digits = $4))
             LIMIT $5",
        )
        .bind(account_id)
        .bind(&identity.external_id)
        .bind(&identity.email)
        .bind(&identity.phone_digits)
        .bind(MAX_BULK_DEALS as i64 + 1)
        .fetch_all(&self.pool)
        .await?;
        if ids.len() > MAX_BULK_DEALS {
            return Err(StoreError::invalid(
                "external_id",
                format!(
                    "the person has more than {MAX_BULK_DEALS} deals: erase by each identifier in turn"
                ),
            ));
        }
        let outcome = self
            .bulk_change(
                account_id,
                actor_id,
                BulkTarget::Ids(ids),
                None,
                Deal::is_erased,
                |deal, _, now| Ok(deal.erased(now)),
            )
            .await?;
        let asked = format!(
            "erase\0ext:{}\0email:{}\0phone:{}",
            identity.external_id, identity.email, identity.phone_digits
        );
        let (receipt_id, first_at, deals_in_total): (Uuid, OffsetDateTime, i64) = sqlx::query_as(
            "INSERT INTO contact_erasures AS e (account_id, identity_key, receipt_id, first_at, deals)
             VALUES ($1, $2, $3, now(), $4)
             ON CONFLICT (account_id, identity_key) DO UPDATE SET deals = e.deals + excluded.deals
             RETURNING receipt_id, first_at, deals",
        )
        .bind(account_id)
        .bind(self.contact_keys.of_plain(account_id, &asked))
        .bind(Uuid::new_v4())
        .bind(outcome.changed)
        .fetch_one(&self.pool)
        .await?;
        Ok(Erasure {
            receipt_id,
            first_at,
            deals_now: outcome.changed,
            deals_in_total,
        })
    }
}

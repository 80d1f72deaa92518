//! Deal writes: create, change one (with its expected version), change many (in chunks).

use std::collections::HashMap;

use salesplan_platform::{
    db::{self, key_lookups_only},
    ids,
};

use crate::SCHEMA;
use sqlx::{PgConnection, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    BULK_CHUNK, MAX_BULK_DEALS, Store, StoreError, counts, events, now,
    plans::{Lock, find_plan, load_plan, mark_reasons_used},
    queries::push_filter,
    rows::{DEAL_COLUMNS, deal_from_row},
};
use crate::domain::{
    DomainError,
    counts::count_deltas,
    deal::{Change, Deal, NewDeal},
    plan::Plan,
    query::DealQuery,
};

/// Which deals a bulk operation touches.
#[derive(Debug, Clone)]
pub enum BulkTarget {
    Ids(Vec<Uuid>),
    Query(Box<DealQuery>),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BulkOutcome {
    pub changed: i64,
    /// Deals already where the change would put them.
    pub unchanged: i64,
    pub failures: Vec<(Uuid, String)>,
}

/// Why one deal of a CreateDeals call was not created. Clone, unlike `StoreError`: a key
/// repeated in the call gets the same answer as its first occurrence.
#[derive(Debug, Clone)]
enum CreateFailure {
    PlanNotFound(Uuid),
    Refused(DomainError),
    /// Another call inserted the key first, and its deal is gone since.
    Raced,
}

impl From<CreateFailure> for StoreError {
    fn from(failure: CreateFailure) -> Self {
        match failure {
            CreateFailure::PlanNotFound(plan_id) => StoreError::NotFound(format!("plan {plan_id}")),
            CreateFailure::Refused(err) => err.into(),
            CreateFailure::Raced => StoreError::Conflict("concurrent create, retry".into()),
        }
    }
}

/// The deals of one CreateDeals call as they are worked out.
#[derive(Default)]
struct CreateBatch {
    /// Deals that exist with the call's keys, by key.
    known: HashMap<String, Deal>,
    /// Deals to insert.
    fresh: Vec<Deal>,
    /// Per input: its answer, or `None` while it waits for its insert (or is a repeat).
    answers: Vec<Option<Result<(Deal, bool), CreateFailure>>>,
    /// The input that first named each key to insert.
    first_of_key: HashMap<String, usize>,
}

impl CreateBatch {
    /// Whether the next input is answered without its plan: by the deal its key has, or
    /// (a key twice in one call) by its first occurrence's.
    fn answered(&mut self, input: &NewDeal) -> bool {
        if let Some(deal) = self.known.get(&input.idempotency_key) {
            self.answers.push(Some(Ok((deal.clone(), false))));
            return true;
        }
        if self.first_of_key.contains_key(&input.idempotency_key) {
            self.answers.push(None);
            return true;
        }
        false
    }

    /// Input `index`, not [`Self::answered`]: a deal of `plan` to insert, or refused.
    fn prepare(&mut self, index: usize, input: NewDeal, plan: Option<&Plan>, now: OffsetDateTime) {
        let Some(plan) = plan else {
            self.answers
                .push(Some(Err(CreateFailure::PlanNotFound(input.plan_id))));
            return;
        };
        self.first_of_key
            .insert(input.idempotency_key.clone(), index);
        match input.into_deal(plan, ids::new_id(), now) {
            Ok(deal) => {
                self.fresh.push(deal);
                self.answers.push(None);
            }
            Err(err) => self.answers.push(Some(Err(CreateFailure::Refused(err)))),
        }
    }

    /// Every input's answer once the fresh deals were inserted (`inserted`: their keys that
    /// this call inserted; the others were raced and are in `known`).
    fn results(
        mut self,
        keys: &[String],
        inserted: &std::collections::HashSet<String>,
    ) -> Vec<Result<(Deal, bool), StoreError>> {
        for deal in std::mem::take(&mut self.fresh) {
            let index = self.first_of_key[&deal.idempotency_key];
            self.answers[index] = Some(if inserted.contains(&deal.idempotency_key) {
                Ok((deal, true))
            } else {
                self.known
                    .get(&deal.idempotency_key)
                    .cloned()
                    .map(|d| (d, false))
                    .ok_or(CreateFailure::Raced)
            });
        }
        let answer = |index: usize| self.answers[index].clone();
        keys.iter()
            .enumerate()
            .map(|(index, key)| {
                let first = self.first_of_key.get(key).copied();
                match (answer(index), first.and_then(answer)) {
                    (Some(answer), _) => answer.map_err(StoreError::from),
                    // A repeated key: the first occurrence's deal, not created again.
                    (None, Some(first)) => first
                        .map(|(deal, _)| (deal, false))
                        .map_err(StoreError::from),
                    (None, None) => Err(StoreError::Internal("no result for the deal".into())),
                }
            })
            .collect()
    }
}

impl Store {
    /// Creates the deal, or returns the one created before with the same idempotency key
    /// (`false` in the second place).
    pub async fn create_deal(
        &self,
        account_id: &str,
        actor_id: &str,
        input: NewDeal,
    ) -> Result<(Deal, bool), StoreError> {
        self.create_deals(account_id, actor_id, vec![input])
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Internal("no result for the deal".into())))
    }

    /// Creates many deals in one transaction; each result in input order is the deal
    /// (created now: `true`, or before with the same key: `false`) or why it was refused.
    /// When the database refuses the batch for the data of some deal, each deal is created
    /// in a transaction of its own, so only that deal fails; a database that is unavailable
    /// fails the whole call.
    pub async fn create_deals(
        &self,
        account_id: &str,
        actor_id: &str,
        inputs: Vec<NewDeal>,
    ) -> Result<Vec<Result<(Deal, bool), StoreError>>, StoreError> {
        db::traced(SCHEMA, "INSERT deals", async {
        let err = match self
            .create_deals_together(account_id, actor_id, inputs.clone())
            .await
        {
            Err(err) if err.data_refusal().is_some() => err,
            together => return together,
        };
        tracing::warn!(%account_id, deals = inputs.len(), error = %err, "batch refused by the database, creating its deals one by one");
        let mut results = Vec::with_capacity(inputs.len());
        for input in inputs {
            let result = match self
                .create_deals_together(account_id, actor_id, vec![input])
                .await
            {
                Ok(mut one) => one
                    .pop()
                    .unwrap_or_else(|| Err(StoreError::Internal("no result for the deal".into()))),
                Err(err) => match err.data_refusal() {
                    Some(code) => {
                        tracing::warn!(%account_id, %code, "deal refused by the database");
                        Err(StoreError::invalid(
                            "deal",
                            format!("cannot be stored: the database refused it (SQLSTATE {code})"),
                        ))
                    }
                    None => return Err(err),
                },
            };
            results.push(result);
        }
        Ok(results)
    })
.await
    }

    /// [`Store::create_deals`] in one transaction: any database error fails them all.
    async fn create_deals_together(
        &self,
        account_id: &str,
        actor_id: &str,
        mut inputs: Vec<NewDeal>,
    ) -> Result<Vec<Result<(Deal, bool), StoreError>>, StoreError> {
        let now = now();
        let keys: Vec<String> = inputs.iter().map(|i| i.idempotency_key.clone()).collect();
        let causes: HashMap<String, String> = inputs
            .iter()
            .filter_map(|i| Some((i.idempotency_key.clone(), i.trace_parent.clone()?)))
            .collect();
        let mut tx = self.pool.begin().await?;
        let stripped = self
            .without_erased_contacts(&mut tx, account_id, &mut inputs)
            .await?;
        let mut batch = CreateBatch {
            known: deals_by_keys(&mut tx, account_id, &keys).await?,
            ..CreateBatch::default()
        };
        let mut plans: HashMap<Uuid, Option<Plan>> = HashMap::new();
        for (index, input) in inputs.into_iter().enumerate() {
            if batch.answered(&input) {
                continue;
            }
            let plan_id = input.plan_id;
            if let std::collections::hash_map::Entry::Vacant(slot) = plans.entry(plan_id) {
                slot.insert(find_plan(&mut tx, account_id, plan_id, Lock::Share).await?);
            }
            batch.prepare(index, input, plans[&plan_id].as_ref(), now);
        }
        due_times(&mut tx, account_id, &mut batch.fresh).await?;
        let inserted = insert_deals(&mut tx, &batch.fresh).await?;
        let created: Vec<(Deal, Change)> = batch
            .fresh
            .iter()
            .filter(|d| inserted.contains(&d.idempotency_key))
            .map(|d| (d.clone(), Change::Created))
            .collect();
        events::record_caused(
            &mut tx,
            &self.contact_keys,
            actor_id,
            &created,
            now,
            &causes,
        )
        .await?;
        // A lead of an erased person: created without them, then an erasure that names
        // them, so the distributor forgets the relation its decision made.
        let erasures: Vec<(Deal, Change)> = created
            .iter()
            .filter_map(|(d, _)| {
                let former = stripped.get(&d.idempotency_key)?;
                Some(d.erased_on_arrival(former.clone(), now))
            })
            .collect();
        if !erasures.is_empty() {
            update_deals(&mut tx, &erasures).await?;
            events::record(&mut tx, &self.contact_keys, actor_id, &erasures, now).await?;
            for fresh in &mut batch.fresh {
                if let Some((erased, _)) = erasures.iter().find(|(e, _)| e.id == fresh.id) {
                    *fresh = erased.clone();
                }
            }
        }
        counts::apply(
            &mut tx,
            &count_deltas(created.iter().map(|(d, _)| (None, d))),
        )
        .await?;
        super::commit(tx).await?;
        // Keys a concurrent call inserted first: their deal, as it stands now.
        let raced: Vec<String> = batch
            .fresh
            .iter()
            .filter(|d| !inserted.contains(&d.idempotency_key))
            .map(|d| d.idempotency_key.clone())
            .collect();
        if !raced.is_empty() {
            let mut conn = self.pool.acquire().await?;
            let found = deals_by_keys(&mut conn, account_id, &raced).await?;
            batch.known.extend(found);
        }
        Ok(batch.results(&keys, &inserted))
    }

    pub async fn deal(&self, account_id: &str, deal_id: Uuid) -> Result<Deal, StoreError> {
        db::traced(SCHEMA, "SELECT deals", async {
            let mut conn = self.pool.acquire().await?;
            fetch_deal(&mut conn, account_id, deal_id, false).await
        })
        .await
    }

    /// The deal created with `key` in the account (for a deal from a lead, its intake id).
    pub async fn deal_by_key(&self, account_id: &str, key: &str) -> Result<Deal, StoreError> {
        db::traced(SCHEMA, "SELECT deals", async {
            let mut conn = self.pool.acquire().await?;
            deals_by_keys(&mut conn, account_id, &[key.to_owned()])
                .await?
                .remove(key)
                .ok_or_else(|| StoreError::NotFound(format!("deal with idempotency key {key}")))
        })
        .await
    }

    /// Changes one deal if it still has `expected_version` (else ABORTED, nothing written),
    /// unless it `already` is as asked: then it is answered as it is, nothing written.
    /// Without `expected_version` the change applies to the deal as it is now (AcceptDeal:
    /// what it does does not depend on what the caller saw).
    pub async fn change_deal(
        &self,
        account_id: &str,
        actor_id: &str,
        deal_id: Uuid,
        expected_version: Option<i64>,
        already: impl FnOnce(&Deal) -> bool,
        change: impl FnOnce(&Deal, &Plan, OffsetDateTime) -> Result<(Deal, Change), DomainError>,
    ) -> Result<Deal, StoreError> {
        db::traced(SCHEMA, "UPDATE deals", async {
            let now = now();
            let mut tx = self.pool.begin().await?;
            let deal = fetch_deal(&mut tx, account_id, deal_id, true).await?;
            // A retry of a change that was made (its answer lost), or a change someone else made
            // meanwhile: what the caller asked for holds, so it is answered as done, whatever
            // version the caller had.
            if already(&deal) {
                super::note_seen(&mut tx).await?;
                return Ok(deal);
            }
            if let Some(expected) = expected_version.filter(|&v| v != deal.version) {
                return Err(StoreError::Conflict(format!(
                    "deal {deal_id} is at version {}, not {expected}: reload it and retry",
                    deal.version
                )));
            }
            let plan = load_plan(&mut tx, account_id, deal.plan_id, Lock::Share).await?;
            let (next, what) = change(&deal, &plan, now)?;
            let next = settled(&mut tx, next.accepted_by(actor_id)).await?;
            let changes = [(next, what)];
            update_deals(&mut tx, &changes).await?;
            mark_reasons_used(&mut tx, &changes).await?;
            events::record(&mut tx, &self.contact_keys, actor_id, &changes, now).await?;
            counts::apply(&mut tx, &count_deltas([(Some(&deal), &changes[0].0)])).await?;
            super::commit(tx).await?;
            let [(next, _)] = changes;
            Ok(next)
        })
        .await
    }

    /// Applies `change` to every targeted deal, a chunk per transaction. `only_manager`
    /// restricts the deals to one manager's (callers without `deals:edit_all`). Deals
    /// `already` where the change would put them are counted unchanged; deals the change
    /// refuses are reported, not fatal.
    pub async fn bulk_change(
        &self,
        account_id: &str,
        actor_id: &str,
        target: BulkTarget,
        only_manager: Option<&str>,
        already: impl Fn(&Deal) -> bool,
        change: impl Fn(&Deal, &Plan, OffsetDateTime) -> Result<(Deal, Change), DomainError>,
    ) -> Result<BulkOutcome, StoreError> {
        db::traced(SCHEMA, "UPDATE deals", async {
            let ids = match target {
                BulkTarget::Ids(ids) => ids,
                BulkTarget::Query(query) => self.matching_ids(account_id, &query).await?,
            };
            if ids.len() > MAX_BULK_DEALS {
                // Refused whole rather than done in part: nothing half-written.
                return Err(StoreError::invalid(
                    "filter",
                    format!(
                        "matches more than {MAX_BULK_DEALS} deals, the most one bulk change \
                     takes; narrow it (by plan, stage or manager) and repeat"
                    ),
                ));
            }
            let mut outcome = BulkOutcome::default();
            for chunk in ids.chunks(BULK_CHUNK) {
                let now = now();
                let mut tx = self.pool.begin().await?;
                let deals: HashMap<Uuid, Deal> = lock_deals(&mut tx, account_id, chunk)
                    .await?
                    .into_iter()
                    .map(|d| (d.id, d))
                    .collect();
                let mut plans: HashMap<Uuid, Plan> = HashMap::new();
                let mut changes = Vec::with_capacity(deals.len());
                for id in chunk {
                    let Some(deal) = deals.get(id) else {
                        outcome.failures.push((*id, "not found".into()));
                        continue;
                    };
                    if only_manager.is_some_and(|m| deal.manager_id.as_deref() != Some(m)) {
                        outcome
                            .failures
                            .push((*id, DomainError::NotYours.to_string()));
                        continue;
                    }
                    // Where the change would put it already: done, and nothing written.
                    if already(deal) {
                        outcome.unchanged += 1;
                        continue;
                    }
                    let plan = match plans.entry(deal.plan_id) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => e.insert(
                            load_plan(&mut tx, account_id, deal.plan_id, Lock::Share).await?,
                        ),
                    };
                    match change(deal, plan, now) {
                        Ok((next, what)) => changes
                            .push((settled(&mut tx, next.accepted_by(actor_id)).await?, what)),
                        Err(err) => outcome.failures.push((*id, err.to_string())),
                    }
                }
                update_deals(&mut tx, &changes).await?;
                mark_reasons_used(&mut tx, &changes).await?;
                events::record(&mut tx, &self.contact_keys, actor_id, &changes, now).await?;
                let deltas = count_deltas(changes.iter().map(|(d, _)| (deals.get(&d.id), d)));
                counts::apply(&mut tx, &deltas).await?;
                super::commit(tx).await?;
                outcome.changed += changes.len() as i64;
            }
            Ok(outcome)
        })
        .await
    }

    async fn matching_ids(
        &self,
        account_id: &str,
        query: &DealQuery,
    ) -> Result<Vec<Uuid>, StoreError> {
        // A scan: on the read pool, and one more than the most a bulk change takes.
        let mut qb = sqlx::QueryBuilder::new("SELECT id FROM deals");
        push_filter(&mut qb, account_id, query);
        qb.push(" ORDER BY id LIMIT ");
        qb.push_bind(MAX_BULK_DEALS as i64 + 1);
        Ok(qb.build_query_scalar().fetch_all(&self.reads).await?)
    }
}

/// `deal` with what its manager's schedule decides, if anything (one read of it): the due
/// time of a deadline it was just given under, and the time to accept (late or not) if it
/// was just accepted.
async fn settled(tx: &mut Transaction<'_, Postgres>, deal: Deal) -> Result<Deal, StoreError> {
    if !deal.needs_timing() && !deal.needs_due() {
        return Ok(deal);
    }
    let Some(manager) = deal.manager_id.as_deref() else {
        return Ok(deal);
    };
    let schedule = super::managers::schedule_of(tx, &deal.account_id, manager).await?;
    Ok(deal.due_by(&schedule).timed(&schedule))
}

/// The due times of the new `deals` created under a deadline: one read of each manager's
/// schedule (a batch of leads has few managers).
async fn due_times(
    tx: &mut Transaction<'_, Postgres>,
    account_id: &str,
    deals: &mut [Deal],
) -> Result<(), StoreError> {
    let mut schedules = HashMap::new();
    for deal in deals.iter_mut().filter(|d| d.needs_due()) {
        let Some(manager) = deal.manager_id.clone() else {
            continue;
        };
        if !schedules.contains_key(&manager) {
            let schedule = super::managers::schedule_of(tx, account_id, &manager).await?;
            schedules.insert(manager.clone(), schedule);
        }
        *deal = deal.clone().due_by(&schedules[&manager]);
    }
    Ok(())
}

async fn fetch_deal(
    conn: &mut PgConnection,
    account_id: &str,
    deal_id: Uuid,
    for_update: bool,
) -> Result<Deal, StoreError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAL_COLUMNS} FROM deals WHERE account_id = $1 AND id = $2{lock}"
    )))
    .bind(account_id)
    .bind(deal_id)
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| deal_from_row(&row))
    .transpose()?
    .ok_or_else(|| StoreError::NotFound(format!("deal {deal_id}")))
}

async fn lock_deals(
    conn: &mut PgConnection,
    account_id: &str,
    ids: &[Uuid],
) -> Result<Vec<Deal>, StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAL_COLUMNS} FROM deals WHERE account_id = $1 AND id = ANY($2) ORDER BY id FOR UPDATE"
    )))
    .bind(account_id)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(deal_from_row)
    .collect()
}

pub async fn lock_deals_in_stage(
    conn: &mut PgConnection,
    account_id: &str,
    stage_id: Uuid,
) -> Result<Vec<Deal>, StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAL_COLUMNS} FROM deals WHERE account_id = $1 AND stage_id = $2 ORDER BY id FOR UPDATE"
    )))
    .bind(account_id)
    .bind(stage_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(deal_from_row)
    .collect()
}

async fn deals_by_keys(
    conn: &mut PgConnection,
    account_id: &str,
    keys: &[String],
) -> Result<HashMap<String, Deal>, StoreError> {
    // One probe of the unique (key, account) index per key. The account is checked outside
    // the probe (`OFFSET 0` keeps the condition from being pushed into it): with the account
    // inside, the planner may take any index that leads with the account, and for an
    // account whose statistics were taken while it was new (its first large bulk add) it
    // did, reading all of the account's deals once per key — a second per batch at 20,000
    // deals, on a database every account shares.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT d.* FROM UNNEST($2::text[]) AS k(key)
         CROSS JOIN LATERAL (SELECT {DEAL_COLUMNS} FROM deals
                             WHERE idempotency_key = k.key OFFSET 0) d
         WHERE d.account_id = $1"
    )))
    .bind(account_id)
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| deal_from_row(row).map(|d| (d.idempotency_key.clone(), d)))
    .collect()
}

/// Deals as one array per column, for the statements that write many at once.
struct DealColumns {
    id: Vec<Uuid>,
    account_id: Vec<String>,
    plan_id: Vec<Uuid>,
    stage_id: Vec<Uuid>,
    status: Vec<&'static str>,
    manager_id: Vec<Option<String>>,
    external_id: Vec<String>,
    name: Vec<String>,
    email: Vec<String>,
    phone: Vec<String>,
    phone_digits: Vec<String>,
    title: Vec<String>,
    amount_minor: Vec<i64>,
    currency: Vec<String>,
    loss_reason_id: Vec<Option<Uuid>>,
    stage_before_close_id: Vec<Option<Uuid>>,
    idempotency_key: Vec<String>,
    version: Vec<i64>,
    created_at: Vec<OffsetDateTime>,
    updated_at: Vec<OffsetDateTime>,
    closed_at: Vec<Option<OffsetDateTime>>,
    waiting_since: Vec<Option<OffsetDateTime>>,
    accepted_at: Vec<Option<OffsetDateTime>>,
    escalated_at: Vec<Option<OffsetDateTime>>,
    assigned_at: Vec<Option<OffsetDateTime>>,
    accept_seconds: Vec<Option<i64>>,
    deadline_seconds: Vec<Option<i64>>,
    response_due_at: Vec<Option<OffsetDateTime>>,
    accepted_late: Vec<bool>,
}

impl DealColumns {
    fn of<'a>(deals: impl Iterator<Item = &'a Deal>) -> Self {
        let mut c = Self {
            id: Vec::new(),
            account_id: Vec::new(),
            plan_id: Vec::new(),
            stage_id: Vec::new(),
            status: Vec::new(),
            manager_id: Vec::new(),
            external_id: Vec::new(),
            name: Vec::new(),
            email: Vec::new(),
            phone: Vec::new(),
            phone_digits: Vec::new(),
            title: Vec::new(),
            amount_minor: Vec::new(),
            currency: Vec::new(),
            loss_reason_id: Vec::new(),
            stage_before_close_id: Vec::new(),
            idempotency_key: Vec::new(),
            version: Vec::new(),
            created_at: Vec::new(),
            updated_at: Vec::new(),
            closed_at: Vec::new(),
            waiting_since: Vec::new(),
            accepted_at: Vec::new(),
            escalated_at: Vec::new(),
            assigned_at: Vec::new(),
            accept_seconds: Vec::new(),
            deadline_seconds: Vec::new(),
            response_due_at: Vec::new(),
            accepted_late: Vec::new(),
        };
        for d in deals {
            c.id.push(d.id);
            c.account_id.push(d.account_id.clone());
            c.plan_id.push(d.plan_id);
            c.stage_id.push(d.stage_id);
            c.status.push(d.status.as_str());
            c.manager_id.push(d.manager_id.clone());
            c.external_id.push(d.contact.external_id.clone());
            c.name.push(d.contact.name.clone());
            c.email.push(d.contact.email.clone());
            c.phone.push(d.contact.phone.clone());
            c.phone_digits.push(d.contact.phone_digits());
            c.title.push(d.title.clone());
            c.amount_minor.push(d.amount.amount_minor);
            c.currency.push(d.amount.currency.clone());
            c.loss_reason_id.push(d.loss_reason_id);
            c.stage_before_close_id.push(d.stage_before_close_id);
            c.idempotency_key.push(d.idempotency_key.clone());
            c.version.push(d.version);
            c.created_at.push(d.created_at);
            c.updated_at.push(d.updated_at);
            c.closed_at.push(d.closed_at);
            c.waiting_since.push(d.waiting_since);
            c.accepted_at.push(d.accepted_at);
            c.escalated_at.push(d.escalated_at);
            c.assigned_at.push(d.assigned_at);
            c.accept_seconds.push(d.accept_seconds);
            c.deadline_seconds.push(d.deadline_seconds);
            c.response_due_at.push(d.response_due_at);
            c.accepted_late.push(d.accepted_late);
        }
        c
    }
}

/// Inserts the deals in one statement; returns the idempotency keys actually inserted (a
/// key another transaction inserted first is skipped).
async fn insert_deals(
    tx: &mut Transaction<'_, Postgres>,
    deals: &[Deal],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    if deals.is_empty() {
        return Ok(Default::default());
    }
    let c = DealColumns::of(deals.iter());
    sqlx::query_scalar(
        "INSERT INTO deals (id, account_id, plan_id, stage_id, status, manager_id,
            contact_external_id, contact_name, contact_email, contact_phone, contact_phone_digits,
            title, amount_minor, currency, loss_reason_id, stage_before_close_id, idempotency_key,
            version, created_at, updated_at, closed_at, waiting_since, assigned_at,
            deadline_seconds, response_due_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bigint[],
            $14::text[], $15::uuid[], $16::uuid[], $17::text[], $18::bigint[], $19::timestamptz[],
            $20::timestamptz[], $21::timestamptz[], $22::timestamptz[], $23::timestamptz[],
            $24::bigint[], $25::timestamptz[])
         ON CONFLICT (account_id, idempotency_key) DO NOTHING
         RETURNING idempotency_key",
    )
    .bind(c.id)
    .bind(c.account_id)
    .bind(c.plan_id)
    .bind(c.stage_id)
    .bind(c.status)
    .bind(c.manager_id)
    .bind(c.external_id)
    .bind(c.name)
    .bind(c.email)
    .bind(c.phone)
    .bind(c.phone_digits)
    .bind(c.title)
    .bind(c.amount_minor)
    .bind(c.currency)
    .bind(c.loss_reason_id)
    .bind(c.stage_before_close_id)
    .bind(c.idempotency_key)
    .bind(c.version)
    .bind(c.created_at)
    .bind(c.updated_at)
    .bind(c.closed_at)
    .bind(c.waiting_since)
    .bind(c.assigned_at)
    .bind(c.deadline_seconds)
    .bind(c.response_due_at)
    .fetch_all(&mut **tx)
    .await
    .map(|keys: Vec<String>| keys.into_iter().collect())
}

/// Writes the new state of every changed deal in one statement.
pub async fn update_deals(
    tx: &mut Transaction<'_, Postgres>,
    changes: &[(Deal, Change)],
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let c = DealColumns::of(changes.iter().map(|(d, _)| d));
    key_lookups_only(tx).await?;
    sqlx::query(
        "UPDATE deals SET stage_id = x.stage_id, status = x.status, manager_id = x.manager_id,
            contact_external_id = x.ext, contact_name = x.name, contact_email = x.email,
            contact_phone = x.phone, contact_phone_digits = x.digits, title = x.title,
            amount_minor = x.amount, currency = x.currency, loss_reason_id = x.reason,
            stage_before_close_id = x.before, version = x.version, updated_at = x.updated,
            closed_at = x.closed, waiting_since = x.waiting, accepted_at = x.accepted,
            escalated_at = x.escalated, assigned_at = x.assigned, accept_seconds = x.took,
            deadline_seconds = x.deadline, response_due_at = x.due, accepted_late = x.late
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[],
                     $13::uuid[], $14::uuid[], $15::bigint[], $16::timestamptz[], $17::timestamptz[],
                     $18::timestamptz[], $19::timestamptz[], $20::timestamptz[], $21::timestamptz[],
                     $22::bigint[], $23::bigint[], $24::timestamptz[], $25::bool[])
            AS x(id, stage_id, status, manager_id, ext, name, email, phone, digits, title, amount,
                 currency, reason, before, version, updated, closed, waiting, accepted, escalated,
                 assigned, took, deadline, due, late)
         WHERE deals.id = x.id",
    )
    .bind(c.id)
    .bind(c.stage_id)
    .bind(c.status)
    .bind(c.manager_id)
    .bind(c.external_id)
    .bind(c.name)
    .bind(c.email)
    .bind(c.phone)
    .bind(c.phone_digits)
    .bind(c.title)
    .bind(c.amount_minor)
    .bind(c.currency)
    .bind(c.loss_reason_id)
    .bind(c.stage_before_close_id)
    .bind(c.version)
    .bind(c.updated_at)
    .bind(c.closed_at)
    .bind(c.waiting_since)
    .bind(c.accepted_at)
    .bind(c.escalated_at)
    .bind(c.assigned_at)
    .bind(c.accept_seconds)
    .bind(c.deadline_seconds)
    .bind(c.response_due_at)
    .bind(c.accepted_late)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends the response deadlines running in the plan (its deadline removed, or the plan
/// archived: [`Plan::ends_deadlines_of`]), in the plan change's transaction: its deals
/// given and not yet accepted keep no due time, so none is late from now on.
pub async fn end_deadlines(
    tx: &mut Transaction<'_, Postgres>,
    plan: &Plan,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deals SET deadline_seconds = NULL, response_due_at = NULL
         WHERE account_id = $1 AND plan_id = $2 AND deadline_seconds IS NOT NULL
            AND accepted_at IS NULL",
    )
    .bind(&plan.account_id)
    .bind(plan.id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

//! The list view, the board and the history: reads, built from one filter.

use std::collections::HashMap;

use super::StoreError;
use crate::SCHEMA;
use salesplan_platform::{db, validate::ContactInput};
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Store, counts,
    rows::{DEAL_COLUMNS, deal_from_row, fetch_stage_totals},
};
use crate::domain::{
    MoneySum,
    deal::Deal,
    feed::DbSnapshot,
    query::{DealQuery, PageToken, Sort, SortField, SortValue},
};

/// Per stage and currency: how many deals `query` matches and their sum — from the kept
/// counts when they answer the query, else aggregated over the matching deals.
async fn stage_totals_on(
    conn: &mut PgConnection,
    account_id: &str,
    query: &DealQuery,
) -> Result<Vec<(Uuid, i64, MoneySum)>, StoreError> {
    if query.counted_by_cells() {
        return counts::stage_totals(conn, account_id, query).await;
    }
    let mut qb = QueryBuilder::new(
        "SELECT stage_id, currency, count(*)::bigint AS n, coalesce(sum(amount_minor), 0)::text AS amount FROM deals",
    );
    push_filter(&mut qb, account_id, query);
    qb.push(" GROUP BY stage_id, currency");
    fetch_stage_totals(conn, qb).await
}

/// Per stage (in `stage_ids` order): totals and the first `cards` deals of `query`
/// (without a search), read on `conn`.
async fn board_on(
    conn: &mut PgConnection,
    account_id: &str,
    query: &DealQuery,
    (stage_ids, sort, cards): (&[Uuid], Sort, usize),
) -> Result<Board, StoreError> {
    let mut per_stage: HashMap<Uuid, Totals> = HashMap::new();
    let mut totals = Totals::default();
    for (stage_id, count, amount) in stage_totals_on(conn, account_id, query).await? {
        totals.add(count, amount.clone());
        per_stage.entry(stage_id).or_default().add(count, amount);
    }
    let mut per_stage_cards: HashMap<Uuid, Vec<Deal>> = HashMap::new();
    if cards > 0 {
        // One round trip: the first cards of each column through its index.
        let mut qb = QueryBuilder::new("SELECT d.* FROM UNNEST(");
        qb.push_bind(stage_ids.to_vec());
        qb.push(format!(
            "::uuid[]) AS s(sid) CROSS JOIN LATERAL (SELECT {DEAL_COLUMNS} FROM deals"
        ));
        push_filter(&mut qb, account_id, query);
        qb.push(" AND stage_id = s.sid");
        push_order(&mut qb, sort);
        qb.push(" LIMIT ").push_bind(cards as i64 + 1).push(") d");
        for row in qb.build().fetch_all(&mut *conn).await? {
            let deal = deal_from_row(&row)?;
            per_stage_cards.entry(deal.stage_id).or_default().push(deal);
        }
    }
    let columns = stage_ids
        .iter()
        .map(|id| {
            let mut deals = per_stage_cards.remove(id).unwrap_or_default();
            let more = deals.len() > cards;
            deals.truncate(cards);
            Column {
                stage_id: *id,
                totals: per_stage.remove(id).unwrap_or_default(),
                cards: Page { deals, more },
            }
        })
        .collect();
    Ok(Board { columns, totals })
}

/// Closed-at of open deals in the sort: before every real date.
pub fn open_deal_closed_at() -> OffsetDateTime {
    time::macros::datetime!(0001-01-01 00:00 UTC)
}

/// A page of deals, and whether more follow.
#[derive(Debug, Clone)]
pub struct Page {
    pub deals: Vec<Deal>,
    pub more: bool,
}

/// Count and per-currency sums of what a filter matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub count: i64,
    pub amounts: Vec<MoneySum>,
}

impl Totals {
    /// The totals of exactly these deals.
    pub fn of(deals: &[Deal]) -> Self {
        let mut totals = Totals::default();
        for deal in deals {
            totals.add(1, deal.amount.clone().into());
        }
        totals
    }

    fn add(&mut self, count: i64, amount: MoneySum) {
        self.count += count;
        match self
            .amounts
            .iter_mut()
            .find(|m| m.currency == amount.currency)
        {
            Some(m) => m.amount_minor += amount.amount_minor,
            None => {
                self.amounts.push(amount);
                self.amounts.sort_by(|a, b| a.currency.cmp(&b.currency));
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Column {
    pub stage_id: Uuid,
    pub totals: Totals,
    pub cards: Page,
}

#[derive(Debug, Clone)]
pub struct Board {
    pub columns: Vec<Column>,
    pub totals: Totals,
}

#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub id: i64,
    pub at: OffsetDateTime,
    pub actor_id: String,
    pub action: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub loss_reason_id: Option<Uuid>,
    pub status: Option<String>,
    /// Why the system made the change, where it said.
    pub note: Option<String>,
}

/// The columns a history entry is read from.
pub(super) const HISTORY_COLUMNS: &str =
    "id, at, actor_id, action, from_value, to_value, loss_reason_id, status,
        detail->>'note' AS note";

/// A history entry from a row of [`HISTORY_COLUMNS`].
pub(super) fn history_row(r: &sqlx::postgres::PgRow) -> Result<HistoryRow, sqlx::Error> {
    Ok(HistoryRow {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor_id: r.try_get("actor_id")?,
        action: r.try_get("action")?,
        from: r.try_get("from_value")?,
        to: r.try_get("to_value")?,
        loss_reason_id: r.try_get("loss_reason_id")?,
        status: r.try_get("status")?,
        note: r.try_get("note")?,
    })
}

/// A board whose search matches at most this many deals is built from one read of them.
const BOARD_MATCHES_READ_WHOLE: usize = 500;

/// The board of exactly `deals` (in card order): columns in `stage_ids` order, each with
/// its totals and first `cards` deals.
fn board_of(deals: Vec<Deal>, stage_ids: &[Uuid], cards: usize) -> Board {
    let totals = Totals::of(&deals);
    let mut per_stage: HashMap<Uuid, Vec<Deal>> = HashMap::new();
    for deal in deals {
        per_stage.entry(deal.stage_id).or_default().push(deal);
    }
    let columns = stage_ids
        .iter()
        .map(|id| {
            let mut deals = per_stage.remove(id).unwrap_or_default();
            let totals = Totals::of(&deals);
            let more = deals.len() > cards;
            deals.truncate(cards);
            Column {
                stage_id: *id,
                totals,
                cards: Page { deals, more },
            }
        })
        .collect();
    Board { columns, totals }
}

/// `WHERE account … AND <every condition of the query>`.
pub fn push_filter(qb: &mut QueryBuilder<Postgres>, account_id: &str, q: &DealQuery) {
    qb.push(" WHERE account_id = ")
        .push_bind(account_id.to_owned());
    if let Some(plan) = q.plan_id {
        qb.push(" AND plan_id = ").push_bind(plan);
    }
    if !q.stage_ids.is_empty() {
        qb.push(" AND stage_id = ANY(")
            .push_bind(q.stage_ids.clone())
            .push(")");
    }
    if let ([manager], false) = (q.managers.as_slice(), q.unassigned) {
        // Equality, not ANY: PostgreSQL then reads the manager's index in sort order.
        qb.push(" AND manager_id = ").push_bind(manager.clone());
    } else if !q.managers.is_empty() || q.unassigned {
        qb.push(" AND (manager_id = ANY(")
            .push_bind(q.managers.clone())
            .push(")");
        if q.unassigned {
            qb.push(" OR manager_id IS NULL");
        }
        qb.push(")");
    }
    if !q.statuses.is_empty() {
        let statuses: Vec<String> = q.statuses.iter().map(|s| s.as_str().to_owned()).collect();
        qb.push(" AND status = ANY(").push_bind(statuses).push(")");
    }
    if !q.loss_reason_ids.is_empty() || q.without_loss_reason {
        qb.push(" AND (loss_reason_id = ANY(")
            .push_bind(q.loss_reason_ids.clone())
            .push(")");
        if q.without_loss_reason {
            qb.push(" OR (status = 'lost' AND loss_reason_id IS NULL)");
        }
        qb.push(")");
    }
    for (column, range) in [("created_at", q.created), ("closed_at", q.closed)] {
        if let Some(from) = range.from {
            qb.push(format_args!(" AND {column} >= ")).push_bind(from);
        }
        if let Some(to) = range.to {
            qb.push(format_args!(" AND {column} < ")).push_bind(to);
        }
    }
    if q.waiting {
        qb.push(" AND waiting_since IS NOT NULL");
    }
    if let Some(search) = &q.search {
        qb.push(" AND (search_text LIKE ")
            .push_bind(search.pattern.clone())
            .push(" ESCAPE '\\'");
        if let Some(digits) = &search.digits_pattern {
            qb.push(" OR search_text LIKE ").push_bind(digits.clone());
        }
        qb.push(")");
    }
}

fn sort_expr(field: SortField) -> &'static str {
    match field {
        SortField::CreatedAt => "created_at",
        SortField::UpdatedAt => "updated_at",
        SortField::ClosedAt => "coalesce(closed_at, '0001-01-01 00:00:00+00'::timestamptz)",
        SortField::Amount => "amount_minor",
        SortField::Title => "title",
    }
}

/// The sort value of `deal`, for the token of the page it ends.
pub fn sort_value(field: SortField, deal: &Deal) -> SortValue {
    match field {
        SortField::CreatedAt => SortValue::Time(deal.created_at.unix_timestamp_nanos()),
        SortField::UpdatedAt => SortValue::Time(deal.updated_at.unix_timestamp_nanos()),
        SortField::ClosedAt => SortValue::Time(
            deal.closed_at
                .unwrap_or_else(open_deal_closed_at)
                .unix_timestamp_nanos(),
        ),
        SortField::Amount => SortValue::Amount(deal.amount.amount_minor),
        SortField::Title => SortValue::Text(deal.title.clone()),
    }
}

fn push_keyset(
    qb: &mut QueryBuilder<Postgres>,
    sort: Sort,
    after: &PageToken,
) -> Result<(), StoreError> {
    let op = if sort.ascending { ">" } else { "<" };
    qb.push(format_args!(" AND ({}, id) {op} (", sort_expr(sort.field)));
    match (&after.value, sort.field) {
        (
            SortValue::Time(nanos),
            SortField::CreatedAt | SortField::UpdatedAt | SortField::ClosedAt,
        ) => {
            let at = OffsetDateTime::from_unix_timestamp_nanos(*nanos)
                .map_err(|_| StoreError::invalid("page_token", "not a token of this query"))?;
            qb.push_bind(at);
        }
        (SortValue::Amount(amount), SortField::Amount) => {
            qb.push_bind(*amount);
        }
        (SortValue::Text(text), SortField::Title) => {
            qb.push_bind(text.clone());
        }
        _ => {
            return Err(StoreError::invalid(
                "page_token",
                "not a token of this query",
            ));
        }
    }
    qb.push(", ").push_bind(after.id).push(")");
    Ok(())
}

fn push_order(qb: &mut QueryBuilder<Postgres>, sort: Sort) {
    let dir = if sort.ascending { "ASC" } else { "DESC" };
    qb.push(format_args!(
        " ORDER BY {} {dir}, id {dir}",
        sort_expr(sort.field)
    ));
}

impl Store {
    async fn list_deals(
        &self,
        account_id: &str,
        query: &DealQuery,
        sort: Sort,
        after: Option<&PageToken>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let mut qb = QueryBuilder::new(format!("SELECT {DEAL_COLUMNS} FROM deals"));
        push_filter(&mut qb, account_id, query);
        if let Some(after) = after {
            push_keyset(&mut qb, sort, after)?;
        }
        push_order(&mut qb, sort);
        qb.push(" LIMIT ").push_bind(limit as i64 + 1);
        let rows = qb.build().fetch_all(&self.reads).await?;
        let mut deals = rows
            .iter()
            .map(deal_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let more = deals.len() > limit;
        deals.truncate(limit);
        Ok(Page { deals, more })
    }

    /// A page of `query` and the totals of everything it matches.
    pub async fn list_with_totals(
        &self,
        account_id: &str,
        query: &DealQuery,
        sort: Sort,
        after: Option<&PageToken>,
        limit: usize,
    ) -> Result<(Page, Totals), StoreError> {
        db::traced(SCHEMA, "SELECT deals", async {
            if query.counted_by_cells() {
                // Cheap totals: read them beside the page.
                return tokio::try_join!(
                    self.list_deals(account_id, query, sort, after, limit),
                    self.totals(account_id, query),
                );
            }
            // Aggregated totals scan what the page's query scans again (for a search, the
            // trigram posting lists): when the first page holds every match, count the page.
            let page = self
                .list_deals(account_id, query, sort, after, limit)
                .await?;
            let totals = if after.is_none() && !page.more {
                Totals::of(&page.deals)
            } else {
                self.totals(account_id, query).await?
            };
            Ok((page, totals))
        })
        .await
    }

    async fn totals(&self, account_id: &str, query: &DealQuery) -> Result<Totals, StoreError> {
        let mut totals = Totals::default();
        for (_, count, amount) in self.stage_totals(account_id, query).await? {
            totals.add(count, amount);
        }
        Ok(totals)
    }

    /// Per stage and currency: how many deals `query` matches and their sum — from the
    /// kept counts when they answer the query, else aggregated over the matching deals.
    async fn stage_totals(
        &self,
        account_id: &str,
        query: &DealQuery,
    ) -> Result<Vec<(Uuid, i64, MoneySum)>, StoreError> {
        let mut conn = self.reads.acquire().await?;
        stage_totals_on(&mut conn, account_id, query).await
    }

    /// Per stage (in `stage_ids` order): totals and the first `cards` deals. `query` must
    /// name the plan.
    pub async fn board(
        &self,
        account_id: &str,
        query: &DealQuery,
        stage_ids: &[Uuid],
        sort: Sort,
        cards: usize,
    ) -> Result<Board, StoreError> {
        db::traced(SCHEMA, "SELECT deals", async {
            if query.search.is_some() {
                // Per column, a search would scan its trigram index once for the totals and once
                // per column for the cards; a search that matches few deals is read once.
                let matches = self
                    .list_deals(account_id, query, sort, None, BOARD_MATCHES_READ_WHOLE)
                    .await?;
                if !matches.more {
                    return Ok(board_of(matches.deals, stage_ids, cards));
                }
            }
            let mut conn = self.reads.acquire().await?;
            board_on(&mut conn, account_id, query, (stage_ids, sort, cards)).await
        })
        .await
    }

    /// The board (without a search) as one snapshot of the primary sees it, and that
    /// snapshot: a watch that starts from it tells by each change's transaction whether
    /// the board holds it already. On the primary, since the changes the watch replays
    /// were published from the primary's commits (a replica may not have replayed them).
    pub async fn board_at_snapshot(
        &self,
        account_id: &str,
        query: &DealQuery,
        (stage_ids, sort, cards): (&[Uuid], Sort, usize),
    ) -> Result<(Board, DbSnapshot), StoreError> {
        db::traced(SCHEMA, "SELECT deals", async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
            let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
                .fetch_one(&mut *tx)
                .await?;
            let snapshot = DbSnapshot::parse(&snapshot)
                .ok_or_else(|| StoreError::Internal(format!("snapshot {snapshot:?}")))?;
            let board = board_on(&mut tx, account_id, query, (stage_ids, sort, cards)).await?;
            tx.commit().await?;
            Ok((board, snapshot))
        })
        .await
    }

    /// The title and contact of each of `deal_ids` in the account, as they are now (a
    /// watch's changes carry them; events never do).
    pub async fn personal_data(
        &self,
        account_id: &str,
        deal_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, (String, ContactInput)>, StoreError> {
        db::traced(SCHEMA, "SELECT deals", async {
            let rows = sqlx::query(
                "SELECT id, title, contact_external_id, contact_name, contact_email,
                    contact_phone
                 FROM deals WHERE account_id = $1 AND id = ANY($2)",
            )
            .bind(account_id)
            .bind(deal_ids)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|row| {
                    let contact = ContactInput {
                        external_id: row.try_get("contact_external_id")?,
                        name: row.try_get("contact_name")?,
                        email: row.try_get("contact_email")?,
                        phone: row.try_get("contact_phone")?,
                    };
                    Ok((row.try_get("id")?, (row.try_get("title")?, contact)))
                })
                .collect()
        })
        .await
    }

    /// Up to `limit` entries of a deal's history after the entry `after`, oldest first, and
    /// whether more follow.
    pub async fn history(
        &self,
        account_id: &str,
        deal_id: Uuid,
        after: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<HistoryRow>, bool), StoreError> {
        db::traced(SCHEMA, "SELECT deal_history", async {
            // Through the deal itself: another account's deal is simply not found.
            self.deal(account_id, deal_id).await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {HISTORY_COLUMNS} FROM deal_history WHERE account_id = $1 AND deal_id = $2
                    AND ($3::bigint IS NULL OR id > $3)
                 ORDER BY id LIMIT $4"
            )))
            .bind(account_id)
            .bind(deal_id)
            .bind(after)
            .bind(limit as i64 + 1)
            .fetch_all(&self.reads)
            .await?;
            let more = rows.len() > limit;
            let entries = rows
                .iter()
                .take(limit)
                .map(history_row)
                .collect::<Result<_, sqlx::Error>>()?;
            Ok((entries, more))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_board_of_read_deals_keeps_card_order_and_counts_every_deal() {
        let (s1, s2, empty) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut usd = Deal::sample(s1, None, 7);
        usd.amount.currency = "USD".into();
        let deals = vec![
            Deal::sample(s1, None, 100),
            Deal::sample(s2, None, 50),
            usd,
            Deal::sample(s1, None, 30),
        ];
        let ids: Vec<Uuid> = deals.iter().map(|d| d.id).collect();

        let board = board_of(deals, &[empty, s1, s2], 2);

        let stages: Vec<Uuid> = board.columns.iter().map(|c| c.stage_id).collect();
        assert_eq!(stages, [empty, s1, s2]);
        let (none, first, second) = (&board.columns[0], &board.columns[1], &board.columns[2]);
        assert_eq!(none.totals, Totals::default());
        assert!(none.cards.deals.is_empty() && !none.cards.more);
        let cards: Vec<Uuid> = first.cards.deals.iter().map(|d| d.id).collect();
        assert_eq!(cards, [ids[0], ids[2]], "first two in the order read");
        assert!(first.cards.more);
        assert_eq!(first.totals.count, 3);
        let sums: Vec<(&str, i128)> = first
            .totals
            .amounts
            .iter()
            .map(|m| (m.currency.as_str(), m.amount_minor))
            .collect();
        assert_eq!(sums, [("EUR", 130), ("USD", 7)]);
        assert_eq!(second.totals.count, 1);
        assert!(!second.cards.more);
        assert_eq!(board.totals.count, 4);
        assert_eq!(board.totals.amounts[0].amount_minor, 180);
    }
}

//! Queries over many deals of one account: the board, search, deep pages; then the
//! reporting read model built from their events and the loss-reasons report (`reports`).

use std::time::{Duration, Instant};

use salesplan_platform::{Permission, grpc::outgoing};
use salesplan_proto::v1::{self as pb, deal_service_client::DealServiceClient};

use super::{BenchConfig, Line, flush_page_cache, intake::Env};

/// Seeds `n` deals of `account` (a quarter won, a quarter lost with one of three reasons)
/// over 20 managers, with the board's kept counts. A closed deal is at version 2 (created,
/// then closed): the events `reports` publishes for them say so.
pub(super) async fn seed(
    pool: &sqlx::PgPool,
    account: &str,
    plan: &pb::Plan,
    n: usize,
) -> anyhow::Result<()> {
    let stage = |i: usize| plan.stages[i].id.clone();
    sqlx::query(
        "INSERT INTO deal_service.deals (id, account_id, plan_id, stage_id, status, manager_id,
            contact_external_id, contact_name, contact_email, contact_phone, contact_phone_digits,
            title, amount_minor, currency, loss_reason_id, stage_before_close_id, idempotency_key,
            version, created_at, updated_at, closed_at)
         SELECT gen_random_uuid(), $7, $1::uuid,
            (ARRAY[$2, $3, $4, $5]::uuid[])[1 + i % 4],
            (ARRAY['open', 'open', 'won', 'lost'])[1 + i % 4],
            'm' || (i % 20), 'ext-' || i, 'Person ' || i, 'person' || i || '@example.com',
            '+1 555 ' || lpad(i::text, 7, '0'), '1555' || lpad(i::text, 7, '0'),
            'Person ' || i, 100 + i % 1000, 'USD',
            CASE WHEN i % 4 = 3 THEN (ARRAY['00000000-0000-0000-0000-00000000a001',
                '00000000-0000-0000-0000-00000000a002', '00000000-0000-0000-0000-00000000a003']::uuid[])[1 + i % 3] END,
            CASE WHEN i % 4 >= 2 THEN $2::uuid END,
            'seed-' || i, CASE WHEN i % 4 >= 2 THEN 2 ELSE 1 END,
            now() - (i || ' seconds')::interval, now(),
            CASE WHEN i % 4 >= 2 THEN now() - ((i % 365) || ' days')::interval END
         FROM generate_series(1, $6) AS i",
    )
    .bind(&plan.id)
    .bind(stage(0))
    .bind(stage(1))
    .bind(stage(2))
    .bind(stage(3))
    .bind(n as i64)
    .bind(account)
    .execute(pool)
    .await?;
    // The board's kept counts, as deal-service would have kept them.
    sqlx::query(
        "INSERT INTO deal_service.stage_counts AS c (account_id, plan_id, stage_id, manager_id, currency, deals, amount_minor)
         SELECT account_id, plan_id, stage_id, coalesce(manager_id, ''), currency, count(*), sum(amount_minor)
         FROM deal_service.deals WHERE account_id = $2 AND plan_id = $1 GROUP BY 1, 2, 3, 4, 5
         ON CONFLICT (account_id, plan_id, stage_id, manager_id, currency) DO UPDATE
         SET deals = c.deals + excluded.deals, amount_minor = c.amount_minor + excluded.amount_minor",
    )
    .bind(uuid::Uuid::parse_str(&plan.id)?)
    .bind(account)
    .execute(pool)
    .await?;
    for table in ["deal_service.deals", "deal_service.stage_counts"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
            .execute(pool)
            .await?;
    }
    Ok(())
}

pub(super) async fn timed<F, Fut>(repeats: usize, mut call: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    call().await?; // warm up
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        call().await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

pub async fn run(env: &Env, config: &BenchConfig) -> anyhow::Result<Vec<Line>> {
    let pool = sqlx::PgPool::connect(&env.database_url).await?;
    let plan = env.plan("Bench queries").await?;
    let started = Instant::now();
    seed(&pool, "bench", &plan, config.deals).await?;
    let mut lines = vec![Line::rate(
        "queries",
        "seeding deals (SQL)",
        config.deals,
        started.elapsed(),
        "—",
    )];
    flush_page_cache("the queries").await?;
    let reader = Reader {
        deals: DealServiceClient::new(env.channel(&env.deal_url).await?),
        token: env.token(&[Permission::DealsEditAll, Permission::ReportsRead])?,
        n: config.deals,
        repeats: config.repeats,
    };
    lines.extend(reader.boards(&plan.id).await?);
    lines.extend(reader.searches().await?);
    lines.push(reader.cold_search().await?);
    lines.push(reader.deep_pages(&plan.id).await?);
    lines.extend(super::reports::run(env, &pool, "bench", &reader.token, reader.repeats).await?);
    Ok(lines)
}

/// A reader of the `n` seeded deals, timing each query `repeats` times.
struct Reader {
    deals: DealServiceClient<tonic::transport::Channel>,
    token: String,
    n: usize,
    repeats: usize,
}

impl Reader {
    /// GetBoard of the plan: one manager's, everyone's, and a search.
    async fn boards(&self, plan: &str) -> anyhow::Result<Vec<Line>> {
        let n = self.n;
        let mut lines = Vec::new();
        for (what, filter, target) in [
            (
                "one manager",
                pb::DealFilter {
                    manager_ids: vec!["m7".into()],
                    ..Default::default()
                },
                "p99 ≤ 30 ms",
            ),
            ("no filter", pb::DealFilter::default(), "—"),
            (
                "search by e-mail fragment",
                pb::DealFilter {
                    search: format!("person{}@", n / 3 + 1),
                    ..Default::default()
                },
                "p99 ≤ 30 ms",
            ),
        ] {
            let samples = timed(self.repeats, || self.board(plan, filter.clone())).await?;
            lines.push(Line::latency(
                "queries",
                format!("GetBoard, {what}, {n} deals"),
                samples,
                target,
            ));
        }
        Ok(lines)
    }

    async fn board(&self, plan: &str, filter: pb::DealFilter) -> anyhow::Result<()> {
        let request = outgoing(
            pb::GetBoardRequest {
                plan_id: plan.to_owned(),
                filter: Some(filter),
                sort: None,
                cards_per_stage: 20,
                min_consistency_token: String::new(),
            },
            &self.token,
        );
        self.deals.clone().get_board(request).await?;
        Ok(())
    }

    /// Searches by how much they match, each repeat another term (no one query's pages
    /// stay warm; the broad search has 19 terms, so it cycles through them): about one
    /// deal, about a hundred, and tens of thousands (reading three pages of 50 with the
    /// totals of everything matched). Each line says how many deals its terms matched.
    async fn searches(&self) -> anyhow::Result<Vec<Line>> {
        let n = self.n;
        let mut varied = 0usize;
        let mut term = |kind: &str| {
            varied += 1;
            let k = (varied * 7_919) % 19;
            match kind {
                "one" => format!("Person {}", n / 2 + varied * 13),
                // A four-digit number is a prefix of ~111 of a million: itself, ten, a hundred.
                "hundreds" => format!("Person {}", 1_000 + (varied * 7_919) % 9_000),
                // A leading digit (`person3…`) or a last one (`…7@example`): ~11 % or 10 %.
                _ if k < 9 => format!("person{}", k + 1),
                _ => format!("{}@example", k - 9),
            }
        };
        let mut lines = Vec::new();
        for (what, kind, pages) in [
            ("name, matching one deal", "one", 1),
            ("name, matching ~100 deals", "hundreds", 1),
            (
                "e-mail fragment, matching ~10% of the deals, 3 pages",
                "many",
                3,
            ),
        ] {
            let terms: Vec<String> = (0..=self.repeats).map(|_| term(kind)).collect();
            let mut terms = terms.into_iter();
            let matched = std::sync::Mutex::new(Vec::new());
            let samples = timed(self.repeats, || {
                let search = terms.next().unwrap_or_default();
                let matched = &matched;
                let pages = search_pages(self.deals.clone(), self.token.clone(), search, pages);
                async move {
                    let total = pages.await?;
                    matched
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(total);
                    Ok(())
                }
            })
            .await?;
            let matched = matched.into_inner().unwrap_or_else(|e| e.into_inner());
            let (fewest, most) = (
                matched.iter().min().copied().unwrap_or(0),
                matched.iter().max().copied().unwrap_or(0),
            );
            // The terms are made for the real run's million deals; the smoke run's few
            // hundred may match none of the narrow ones.
            anyhow::ensure!(
                fewest > 0 || n < 100_000,
                "a search by {what} matched nothing"
            );
            lines.push(Line::latency(
                "queries",
                format!("ListDeals, search by {what}, {n} deals (matched {fewest}–{most})"),
                samples,
                "p99 ≤ 50 ms",
            ));
        }
        Ok(lines)
    }

    /// The first search after the page cache was written back and dropped (where the bench
    /// may drop it, as root; the line says when it could not). PostgreSQL's shared buffers
    /// keep what they hold: 128 MB by default, less than the deals table and its indexes.
    async fn cold_search(&self) -> anyhow::Result<Line> {
        flush_page_cache("a cold search").await?;
        let dropped = drop_page_cache().await;
        let started = Instant::now();
        search_pages(self.deals.clone(), self.token.clone(), "0123456".into(), 1).await?;
        let cache = if dropped {
            "page cache dropped"
        } else {
            "page cache NOT dropped (not root): warm"
        };
        Ok(Line::latency(
            "queries",
            format!("ListDeals, search by phone fragment, first after the {cache} (one call)"),
            vec![started.elapsed()],
            "—",
        ))
    }

    /// Deep pagination: pages 11 to 20 of 500, following the tokens.
    async fn deep_pages(&self, plan: &str) -> anyhow::Result<Line> {
        let mut client = self.deals.clone();
        let mut page_token = String::new();
        let mut samples = Vec::new();
        for page in 0..20 {
            let started = Instant::now();
            let reply = client
                .list_deals(outgoing(
                    pb::ListDealsRequest {
                        filter: Some(pb::DealFilter {
                            plan_id: plan.to_owned(),
                            ..Default::default()
                        }),
                        sort: None,
                        page_size: 500,
                        page_token,
                        min_consistency_token: String::new(),
                    },
                    &self.token,
                ))
                .await?
                .into_inner();
            if page >= 10 {
                samples.push(started.elapsed());
            }
            page_token = reply.next_page_token;
            if page_token.is_empty() {
                break;
            }
        }
        Ok(Line::latency(
            "queries",
            "ListDeals, pages 11–20 of 500 (with totals)",
            samples,
            "—",
        ))
    }
}

/// Drops the kernel's clean page cache; `false` where this process may not.
async fn drop_page_cache() -> bool {
    tokio::fs::write("/proc/sys/vm/drop_caches", "1")
        .await
        .is_ok()
}

/// `pages` pages of 50 deals matching `search`, following the page tokens; how many deals
/// the search matched.
async fn search_pages(
    mut client: DealServiceClient<tonic::transport::Channel>,
    token: String,
    search: String,
    pages: usize,
) -> anyhow::Result<i64> {
    let mut page_token = String::new();
    let mut total = 0;
    for _ in 0..pages {
        let reply = client
            .list_deals(outgoing(
                pb::ListDealsRequest {
                    filter: Some(pb::DealFilter {
                        search: search.clone(),
                        ..Default::default()
                    }),
                    sort: None,
                    page_size: 50,
                    page_token,
                    min_consistency_token: String::new(),
                },
                &token,
            ))
            .await?
            .into_inner();
        total = reply.total_count;
        page_token = reply.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    Ok(total)
}

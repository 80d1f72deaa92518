//! A fresh PostgreSQL database for one test.

use sqlx::{Connection, PgConnection};

pub struct TestDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

/// The server tests use: `SALESPLAN_TEST_DATABASE_URL`, else `DATABASE_URL`, else local.
pub fn admin_url() -> String {
    std::env::var("SALESPLAN_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    // The database is the path after the authority: scheme://authority/db.
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..authority_end], name);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// `url` connecting as `user` with `password` instead of its own user.
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[start..];
    let host = rest
        .find('@')
        .filter(|at| rest.find('/').is_none_or(|slash| at < &slash))
        .map_or(rest, |at| &rest[at + 1..]);
    format!("{}{user}:{password}@{host}", &url[..start])
}

impl TestDatabase {
    pub async fn create() -> anyhow::Result<Self> {
        Self::create_with("").await
    }

    /// A database created with `options` (e.g. `TEMPLATE template0 LC_COLLATE 'C'
    /// LC_CTYPE 'C'`, CloudNativePG's default locale).
    pub async fn create_with(options: &str) -> anyhow::Result<Self> {
        let admin_url = admin_url();
        let name = format!("salesplan_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{name}\" {options}"
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        Ok(Self {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
        })
    }
}

/// The cells where deal-service's kept counts disagree with a recount of its deals, as
/// `(account, plan, stage, manager, currency, deals, amount)` rows of each side that the
/// other lacks; empty when they agree.
pub async fn kept_counts_drift(
    pool: &sqlx::PgPool,
) -> anyhow::Result<Vec<(String, String, String, String, String, i64, i64)>> {
    Ok(sqlx::query_as(
        "WITH kept AS (
             SELECT account_id, plan_id::text, stage_id::text, manager_id, currency, deals, amount_minor
             FROM deal_service.stage_counts WHERE deals <> 0 OR amount_minor <> 0),
         recount AS (
             SELECT account_id, plan_id::text, stage_id::text, coalesce(manager_id, '') AS manager_id,
                 currency, count(*) AS deals, sum(amount_minor)::bigint AS amount_minor
             FROM deal_service.deals GROUP BY 1, 2, 3, 4, 5)
         (SELECT 'kept ' || account_id, plan_id, stage_id, manager_id, currency, deals, amount_minor
          FROM (TABLE kept EXCEPT TABLE recount) k)
         UNION ALL
         (SELECT 'recount ' || account_id, plan_id, stage_id, manager_id, currency, deals, amount_minor
          FROM (TABLE recount EXCEPT TABLE kept) r)",
    )
    .fetch_all(pool)
    .await?)
}

/// What deal-service's dropped foreign keys would have refused (migration 0004): deals
/// whose stage is not a stage of their plan, and history rows of no deal.
pub async fn dangling_references(pool: &sqlx::PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM deal_service.deals d
                 WHERE NOT EXISTS (SELECT 1 FROM deal_service.stages s
                                   WHERE s.id = d.stage_id AND s.plan_id = d.plan_id)),
                (SELECT count(*) FROM deal_service.deal_history h
                 WHERE NOT EXISTS (SELECT 1 FROM deal_service.deals d WHERE d.id = h.deal_id))",
    )
    .fetch_one(pool)
    .await?)
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop may run inside or outside a runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(drop))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_user() {
        assert_eq!(
            with_user("postgres://postgres@h:5432/db", "r", "p"),
            "postgres://r:p@h:5432/db"
        );
        assert_eq!(
            with_user("postgres://u:secret@h/db?sslmode=disable", "r", "p"),
            "postgres://r:p@h/db?sslmode=disable"
        );
        assert_eq!(
            with_user("postgres://h:5432/db", "r", "p"),
            "postgres://r:p@h:5432/db"
        );
    }

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}

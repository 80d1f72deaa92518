//! PostgreSQL: one pool per service, confined to the service's own schema.
//!
//! Services may share a database; each works in its own schema (`search_path` is set on
//! every connection), which also holds that service's `_sqlx_migrations` table.

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseConfig;

/// A service's migrations (`sqlx::migrate!`), as [`crate::service::Service::store`] names them.
pub use sqlx::migrate::Migrator;

/// A service's own schema in PostgreSQL: the database it is in, its name, its migrations.
pub struct Schema<'a> {
    pub database: &'a DatabaseConfig,
    pub name: &'static str,
    pub migrator: &'static Migrator,
}

/// Opens a pool whose connections resolve names in `schema` first, then `public` (where
/// extensions such as `pg_trgm` live).
///
/// Its statements may run on PostgreSQL's cached generic plans (the default
/// `plan_cache_mode`): they touch rows by key — per-key probes are `LATERAL … LIMIT 1`,
/// which no plan flattens into a scan, and batch transactions run with
/// [`key_lookups_only`] — so a plan made while a table was small stays right as it grows.
/// Planning every statement anew cost the intake a fifth of PostgreSQL's CPU and doubled
/// the latency at 1,000 leads/s (docs/performance.md, issue 17).
///
/// Every statement of the pool is cut off after the configured statement timeout
/// (`SALESPLAN_DB_STATEMENT_TIMEOUT_MS`), so no query holds a connection for long.
pub async fn connect(config: &DatabaseConfig, schema: &str) -> Result<PgPool, sqlx::Error> {
    open(
        config,
        schema,
        config.max_connections,
        config.statement_timeout,
    )
    .await
}

/// The pool of reads that scan (lists, boards, reports): its own connections, so they can
/// never take the connections of writes and intake, and its own, shorter statement
/// timeout (`SALESPLAN_DB_READ_MAX_CONNECTIONS`, `SALESPLAN_DB_READ_TIMEOUT_MS`).
///
/// A scan runs in one process (no parallel workers): one account's search then takes at
/// most one core of the database, however large its account. Every scan is planned for
/// its parameters (`plan_cache_mode`): how much a search term or a filter matches, and how
/// large the account is, decide the index; a generic plan cached for one term (or while
/// the account was small) would read the wrong one for the next.
pub async fn connect_reads(config: &DatabaseConfig, schema: &str) -> Result<PgPool, sqlx::Error> {
    let options = options(config, schema, config.read_timeout)?.options([
        ("max_parallel_workers_per_gather", "0"),
        ("plan_cache_mode", "force_custom_plan"),
    ]);
    pool(options, config.read_max_connections).await
}

async fn open(
    config: &DatabaseConfig,
    schema: &str,
    max_connections: u32,
    statement_timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    pool(options(config, schema, statement_timeout)?, max_connections).await
}

fn options(
    config: &DatabaseConfig,
    schema: &str,
    statement_timeout: Duration,
) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(config.url.expose())?
        .options([
            ("search_path", format!("{schema},public")),
            (
                "statement_timeout",
                statement_timeout.as_millis().to_string(),
            ),
        ])
        .application_name(schema))
}

async fn pool(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// Keeps the rest of the transaction on the indexes. Batch statements touch rows by key, but
/// the planner guesses 1,000 rows for an UNNEST and would hash-join it against a scan of the
/// whole table, a cost that grows with every row the table gains. And no JIT: those
/// guesses (and a scan priced out this way) push the estimated cost past `jit_above_cost`,
/// and compiling then takes tens of milliseconds for a statement that reads a few rows.
pub async fn key_lookups_only(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)")
        .execute(tx)
        .await?;
    Ok(())
}

/// Runs `work` (a store call: its statements, in one transaction) inside a database client
/// span named by `summary`, the operation and the table it is about (`"INSERT deals"`),
/// with the semantic conventions' `db.*` attributes: never a statement's values.
///
/// The span exists only inside one of the services' own spans: statements of a polling
/// loop (the outbox relay looking for rows, a projection's idle round) export nothing.
pub async fn traced<T, E, F>(schema: &'static str, summary: &'static str, work: F) -> Result<T, E>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    crate::telemetry::in_span(span(schema, summary), work).await
}

fn span(schema: &'static str, summary: &'static str) -> tracing::Span {
    let (operation, collection) = summary.split_once(' ').unwrap_or((summary, ""));
    crate::telemetry::own_child(|| {
        tracing::info_span!(
            "db",
            otel.name = summary,
            otel.kind = "client",
            db.system.name = "postgresql",
            db.namespace = schema,
            db.operation.name = operation,
            db.collection.name = collection,
            db.query.summary = summary,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        )
    })
}

/// Creates the schema if needed, then applies the service's migrations, on a connection of
/// its own without a statement timeout (a migration may rewrite a large table).
pub async fn migrate(
    config: &DatabaseConfig,
    schema: &str,
    migrator: &Migrator,
) -> Result<(), sqlx::Error> {
    let pool = open(config, schema, 1, Duration::ZERO).await?;
    // Created here only where it is missing (a development database): in production the
    // schema is created for the service's role (deploy/k8s/postgres/roles.sql), which may
    // not create schemas, and `CREATE SCHEMA IF NOT EXISTS` checks that right first.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&pool)
            .await?;
    // Two replicas may race to create the schema; the loser sees a unique violation.
    let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    if !exists
        && let Err(err) = sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&pool)
            .await
        && !crate::error::is_unique_violation(&err)
    {
        return Err(err);
    }
    let migrated = migrator.run(&pool).await;
    pool.close().await;
    migrated?;
    Ok(())
}

/// Connects, and migrates when the configuration says so (local development).
pub async fn connect_and_migrate(
    config: &DatabaseConfig,
    schema: &str,
    migrator: &Migrator,
) -> Result<PgPool, sqlx::Error> {
    if config.migrate_on_start {
        migrate(config, schema, migrator).await?;
    }
    connect(config, schema).await
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn statements_are_traced_only_inside_the_services_own_spans() {
        let subscriber = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer());
        tracing::subscriber::with_default(subscriber, || {
            assert!(
                super::span("s", "SELECT plans").is_none(),
                "outside any span"
            );
            let own = tracing::info_span!("request");
            own.in_scope(|| {
                let span = super::span("s", "SELECT plans");
                assert!(!span.is_none(), "inside a request's span");
                assert_eq!(span.metadata().map(|m| m.name()), Some("db"));
            });
            let foreign = tracing::info_span!(target: "h2::proto", "frame");
            foreign.in_scope(|| {
                assert!(
                    super::span("s", "SELECT plans").is_none(),
                    "inside h2's span"
                );
            });
        });
    }
}

//! PostgreSQL: one pool per service, confined to the service's own schema.
//!
//! Services may share a database; each works in its own schema (`search_path` is set on
//! every connection), which also holds that service's `_sqlx_migrations` table.

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseConfig;

/// Opens a pool whose connections resolve names in `schema` first, then `public` (where
/// extensions such as `pg_trgm` live).
///
/// Every statement is planned for its parameters (`plan_cache_mode`): PostgreSQL otherwise
/// caches a generic plan per connection after five runs, and a plan cached while a table
/// was still small (right after a deploy, in every test) reads all of an account's rows
/// through whichever index came first, on every batch thereafter. Planning a statement
/// costs a fraction of a millisecond; the wrong cached plan cost 40–100 ms per batch.
pub async fn connect(config: &DatabaseConfig, schema: &str) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(config.url.expose())?
        .options([
            ("search_path", format!("{schema},public")),
            ("plan_cache_mode", "force_custom_plan".to_owned()),
        ])
        .application_name(schema);
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// Keeps the rest of the transaction on the indexes. Batch statements touch rows by key, but
/// the planner guesses 1,000 rows for an UNNEST and would hash-join it against a scan of the
/// whole table, a cost that grows with every row the table gains.
pub async fn key_lookups_only(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(tx)
        .await?;
    Ok(())
}

/// Creates the schema if needed, then applies the service's migrations.
pub async fn migrate(pool: &PgPool, schema: &str, migrator: &Migrator) -> Result<(), sqlx::Error> {
    // Two replicas may race to create the schema; the loser sees a unique violation.
    let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    if let Err(err) = sqlx::query(sqlx::AssertSqlSafe(create)).execute(pool).await
        && !crate::error::is_unique_violation(&err)
    {
        return Err(err);
    }
    migrator.run(pool).await?;
    Ok(())
}

/// Connects, and migrates when the configuration says so (local development).
pub async fn connect_and_migrate(
    config: &DatabaseConfig,
    schema: &str,
    migrator: &Migrator,
) -> Result<PgPool, sqlx::Error> {
    let pool = connect(config, schema).await?;
    if config.migrate_on_start {
        migrate(&pool, schema, migrator).await?;
    }
    Ok(pool)
}

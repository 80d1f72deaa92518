//! Recreates the demo database (`just demo` starts from an empty one every run).

use clap::Parser;
use sqlx::{Connection, PgConnection};

#[derive(Parser)]
struct Args {
    /// A database URL of the server (any database on it).
    #[arg(long)]
    admin_url: String,
    #[arg(long, default_value = "salesplan_demo")]
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "--name: letters, digits and underscores only"
    );
    let mut conn = PgConnection::connect(&args.admin_url).await?;
    for statement in [
        format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", args.name),
        format!("CREATE DATABASE \"{}\"", args.name),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut conn)
            .await?;
    }
    eprintln!("demo database {} is empty and ready", args.name);
    Ok(())
}

#![forbid(unsafe_code)]

use std::process::ExitCode;

use salesplan_platform::{
    config::{Env, load_or_exit},
    service::{self, Service},
    telemetry,
};

/// reporting: a read model of deals built from deal events, and the reports on it.
#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Common(service::Command),
    /// Empty the read model and replay the plan and deal streams from their first message
    /// (safe while reporting runs).
    Rebuild,
    /// Compare every closed deal and the kept totals with deal-service's deals
    /// (`SALESPLAN_DEAL_DATABASE_URL`): exit 1 on a difference, 2 when it cannot run.
    Verify,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match service::parse_args::<Cli>(reporting::Config::NAME) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        None => service::run::<reporting::Config>(service::Command::Serve).await,
        Some(Command::Common(command)) => service::run::<reporting::Config>(command).await,
        Some(Command::Rebuild) => maintenance(true).await,
        Some(Command::Verify) => maintenance(false).await,
    }
}

async fn maintenance(rebuild: bool) -> ExitCode {
    let env = Env::from_process();
    let config = load_or_exit(|| reporting::Config::from_env(&env));
    let _telemetry = telemetry::init(reporting::Config::NAME, &config.common.telemetry);
    let result = if rebuild {
        reporting::maintenance::rebuild(&config)
            .await
            .map(|(plans, deals)| {
                println!("rebuilt the read model from {plans} plan events and {deals} deal events");
                ExitCode::SUCCESS
            })
    } else {
        reporting::maintenance::verify(&config, config.deal_database_url.expose())
            .await
            .map(|(closed, differences)| {
                if differences.is_empty() {
                    println!(
                        "verify: the read model agrees with deal-service ({closed} closed deals)"
                    );
                    return ExitCode::SUCCESS;
                }
                for line in differences.iter().take(1_000) {
                    println!("{line}");
                }
                println!(
                    "verify: {} differences over {closed} closed deals",
                    differences.len()
                );
                ExitCode::FAILURE
            })
    };
    result.unwrap_or_else(|err| {
        eprintln!("reporting: {err:#}");
        ExitCode::from(2)
    })
}

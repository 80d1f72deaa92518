#![forbid(unsafe_code)]

use std::process::ExitCode;

use salesplan_platform::{
    bus::{Bus, streams},
    config::{Env, load_or_exit},
    service::{self, Service},
    telemetry,
};

/// deal-service: plans, stages, deals and their history; the outbox of their events.
#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Common(service::Command),
    /// Once, after the upgrade that took personal data out of deal events: publish each
    /// earlier deal event again without its contact and title, and delete the original
    /// (overwritten). Needs a NATS user that may delete SALESPLAN_DEALS messages.
    ScrubEvents,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match service::parse_args::<Cli>(deal_service::Config::NAME) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        None => service::run::<deal_service::Config>(service::Command::Serve).await,
        Some(Command::Common(command)) => service::run::<deal_service::Config>(command).await,
        Some(Command::ScrubEvents) => scrub_events().await,
    }
}

async fn scrub_events() -> ExitCode {
    let env = Env::from_process();
    let config = load_or_exit(|| deal_service::Config::read(&env));
    let _telemetry = telemetry::init(deal_service::Config::NAME, &config.common.telemetry);
    let result = async {
        // As the broker's `maintenance` user (its inbox is named so): deal-service's own
        // user may not delete deal events.
        let bus = Bus::connect(&config.common.nats, "maintenance").await?;
        bus.ensure_streams(&streams::ALL).await?;
        let done = deal_service::events::scrub::scrub_deal_events(&bus, &config.contact_keys).await;
        bus.close().await;
        done
    }
    .await;
    match result {
        Ok(done) => {
            println!(
                "scrub-events: {} deal events read, {} published again without personal data and {} before them as they were, their originals erased",
                done.read, done.rewritten, done.moved
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("deal-service: {err:#}");
            ExitCode::from(2)
        }
    }
}

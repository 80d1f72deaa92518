#![forbid(unsafe_code)]

use std::process::ExitCode;

use salesplan_platform::{
    config::{Env, load_or_exit},
    service::Service,
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    match command.as_deref() {
        Some("rebuild") | Some("verify") => {}
        _ => return salesplan_platform::service::main::<reporting::Config>().await,
    }
    let env = Env::from_process();
    let config = load_or_exit(|| reporting::Config::from_env(&env));
    let _telemetry = telemetry::init(reporting::Config::NAME, &config.common.telemetry);
    let result =
        if command.as_deref() == Some("rebuild") {
            reporting::maintenance::rebuild(&config)
                .await
                .map(|(plans, deals)| {
                    println!(
                        "rebuilt the read model from {plans} plan events and {deals} deal events"
                    );
                    ExitCode::SUCCESS
                })
        } else {
            // deal-service's database, read-only (default: the same database as reporting).
            let source = env.string(
                "SALESPLAN_DEAL_DATABASE_URL",
                config.common.database.url.expose(),
            );
            reporting::maintenance::verify(&config, &source).await.map(|(closed, differences)| {
            if differences.is_empty() {
                println!("verify: the read model agrees with deal-service ({closed} closed deals)");
                ExitCode::SUCCESS
            } else {
                for line in differences.iter().take(1_000) {
                    println!("{line}");
                }
                println!("verify: {} differences over {closed} closed deals", differences.len());
                ExitCode::FAILURE
            }
        })
        };
    result.unwrap_or_else(|err| {
        eprintln!("reporting: {err:#}");
        ExitCode::from(2)
    })
}

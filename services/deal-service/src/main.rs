#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    salesplan_platform::service::main::<deal_service::Config>().await
}

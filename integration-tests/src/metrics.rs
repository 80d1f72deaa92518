//! Reading a service's Prometheus endpoint in a test.

use salesplan_platform::service::Running;

/// The text of `running`'s `/metrics`.
pub async fn scrape(running: &Running) -> anyhow::Result<String> {
    let addr = running.metrics_addr.expect("metrics are served");
    Ok(reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?)
}

/// The value of the first sample of `metric` whose labels contain every `label` (0 when
/// there is none).
pub fn sample(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or(0.0)
}

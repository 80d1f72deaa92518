//! Small helpers for talking to the running services in tests and the demo.

use salesplan_platform::grpc::outgoing;
use salesplan_proto::v1::{
    self as pb, deal_service_client::DealServiceClient, plan_service_client::PlanServiceClient,
};
use tonic::transport::Channel;

pub use pb::distribution::{Mode, Strategy};

/// The consistency token a write answered with (header `salesplan-consistency-token`).
pub fn write_token<T>(
    response: &tonic::Response<T>,
) -> anyhow::Result<salesplan_platform::consistency::Token> {
    use salesplan_platform::consistency::{HEADER, Token};
    let header = response
        .metadata()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    Token::parse(HEADER, header)?
        .ok_or_else(|| anyhow::anyhow!("a write answered without a consistency token"))
}

/// A plan request with the given distribution and managers (amount 100.00 USD).
pub fn plan_request(
    name: &str,
    mode: Mode,
    strategy: Strategy,
    prefer_related: bool,
    managers: &[&str],
) -> pb::CreatePlanRequest {
    pb::CreatePlanRequest {
        name: name.into(),
        average_amount: Some(pb::Money {
            amount_minor: 10_000,
            currency: "USD".into(),
        }),
        chat_label: name.chars().take(12).collect(),
        distribution: Some(pb::Distribution {
            mode: mode as i32,
            prefer_related,
            keep_related_when_unavailable: false,
            response_deadline_seconds: 0,
            max_reassignments: 0,
            strategy: strategy as i32,
        }),
        manager_ids: managers.iter().map(|m| (*m).to_owned()).collect(),
        members: vec![],
    }
}

pub async fn create_plan(
    channel: Channel,
    token: &str,
    request: pb::CreatePlanRequest,
) -> anyhow::Result<pb::Plan> {
    PlanServiceClient::new(channel)
        .create_plan(outgoing(request, token))
        .await?
        .into_inner()
        .plan
        .ok_or_else(|| anyhow::anyhow!("CreatePlan returned no plan"))
}

/// Every deal matching `filter`, through ListDeals pages of 500.
pub async fn all_deals(
    channel: Channel,
    token: &str,
    filter: pb::DealFilter,
) -> anyhow::Result<Vec<pb::Deal>> {
    let mut deals = DealServiceClient::new(channel);
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = deals
            .list_deals(outgoing(
                pb::ListDealsRequest {
                    filter: Some(filter.clone()),
                    sort: None,
                    page_size: 500,
                    page_token,
                    min_consistency_token: String::new(),
                },
                token,
            ))
            .await?
            .into_inner();
        out.extend(page.deals);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// The webhook body of one lead.
pub fn lead_json(plan_id: &str, run: &str, external_id: &str) -> serde_json::Value {
    serde_json::json!({
        "plan_id": plan_id,
        "tunnel_id": "funnel-1",
        "block_id": "add-to-plan",
        "run_id": run,
        "contact": { "external_id": external_id, "name": format!("Contact {external_id}") },
    })
}

/// The chunks of a bulk add of `n` contacts into `plan_id`, `per_chunk` at a time, contact
/// `i` with the external id `external_id(i)`.
pub fn audience_chunks(
    plan_id: &str,
    job_id: &str,
    n: usize,
    per_chunk: usize,
    external_id: impl Fn(usize) -> String,
) -> Vec<pb::AddAudienceRequest> {
    (0..n)
        .collect::<Vec<_>>()
        .chunks(per_chunk)
        .map(|chunk| pb::AddAudienceRequest {
            plan_id: plan_id.to_owned(),
            job_id: job_id.to_owned(),
            assign_to_manager_id: None,
            contacts: chunk
                .iter()
                .map(|i| pb::AudienceContact {
                    contact: Some(pb::Contact {
                        external_id: external_id(*i),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        })
        .collect()
}

/// How many deals a plan holds, as a reader sees it (the kept counts: one cheap read).
pub async fn deal_count(channel: Channel, token: &str, plan_id: &str) -> anyhow::Result<i64> {
    Ok(DealServiceClient::new(channel)
        .list_deals(outgoing(
            pb::ListDealsRequest {
                filter: Some(pb::DealFilter {
                    plan_id: plan_id.to_owned(),
                    ..Default::default()
                }),
                page_size: 1,
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner()
        .total_count)
}

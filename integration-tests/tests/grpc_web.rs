//! Browsers reach the API through gRPC-Web: every service's gRPC port answers the gRPC-Web
//! protocol over HTTP/1.1 (what a browser speaks to it without a proxy), and a page of
//! another origin may call it only when the deployment names that origin.

use std::collections::HashMap;

use integration_tests::{
    TestDatabase, TestNats,
    api::{Mode, Strategy, create_plan, plan_request},
    stack::Stack,
};
use prost::Message;
use salesplan_platform::{Permission, grpc::outgoing, service::Service};
use salesplan_proto::v1::{self as pb, deal_service_client::DealServiceClient};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_check_response};

/// How a gRPC-Web call ended: its messages and its status (from the trailer frame, or the
/// headers of a trailers-only answer).
struct Answer<A> {
    messages: Vec<A>,
    status: HashMap<String, String>,
}

/// One gRPC-Web call over HTTP/1.1: the request as one length-prefixed frame, the answer's
/// frames decoded (flag 0x00: a message; 0x80: the trailers, `name: value` lines).
async fn grpc_web<Q: Message, A: Message + Default>(
    base: &str,
    path: &str,
    token: Option<&str>,
    request: &Q,
) -> anyhow::Result<Answer<A>> {
    let message = request.encode_to_vec();
    let mut body = vec![0u8];
    body.extend(u32::try_from(message.len())?.to_be_bytes());
    body.extend(message);
    let mut call = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(body);
    if let Some(token) = token {
        call = call.bearer_auth(token);
    }
    let response = call.send().await?;
    anyhow::ensure!(response.status() == 200, "HTTP {}", response.status());
    anyhow::ensure!(
        response.version() == reqwest::Version::HTTP_11,
        "not HTTP/1.1: {:?}",
        response.version()
    );
    let content_type = response.headers()["content-type"].to_str()?.to_owned();
    anyhow::ensure!(
        content_type.starts_with("application/grpc-web"),
        "content-type {content_type}"
    );
    let mut status: HashMap<String, String> = response
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("grpc-"))
        .map(|(name, value)| Ok((name.to_string(), value.to_str()?.to_owned())))
        .collect::<anyhow::Result<_>>()?;
    let mut rest = &response.bytes().await?[..];
    let mut messages = Vec::new();
    while !rest.is_empty() {
        anyhow::ensure!(rest.len() >= 5, "a frame header cut short");
        let length = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        anyhow::ensure!(rest.len() >= 5 + length, "a frame cut short");
        let (flag, payload) = (rest[0], &rest[5..5 + length]);
        if flag & 0x80 != 0 {
            for line in std::str::from_utf8(payload)?.split("\r\n") {
                if let Some((name, value)) = line.split_once(':') {
                    status.insert(name.trim().to_lowercase(), value.trim().to_owned());
                }
            }
        } else {
            messages.push(A::decode(payload)?);
        }
        rest = &rest[5 + length..];
    }
    Ok(Answer { messages, status })
}

#[tokio::test]
async fn every_service_answers_grpc_web_over_http1() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    for running in [
        &stack.tunnel_listener,
        &stack.distributor,
        &stack.deal_service,
        &stack.reporting,
    ] {
        let answer: Answer<HealthCheckResponse> = grpc_web(
            &running.grpc_url(),
            "/grpc.health.v1.Health/Check",
            None,
            &HealthCheckRequest::default(),
        )
        .await?;
        assert_eq!(
            answer.status.get("grpc-status").map(String::as_str),
            Some("0")
        );
        assert_eq!(
            answer.messages.iter().map(|m| m.status).collect::<Vec<_>>(),
            [health_check_response::ServingStatus::Serving as i32],
            "{}",
            running.grpc_url()
        );
    }
    stack.stop().await
}

/// deal-service alone, with `origins` allowed to call from a browser.
async fn deal_service_with_origins(
    origins: &[&str],
) -> anyhow::Result<(
    TestNats,
    TestDatabase,
    salesplan_platform::service::Running,
    CancellationToken,
)> {
    salesplan_platform::telemetry::init_for_tests();
    let (nats, db) = (TestNats::start().await?, TestDatabase::create().await?);
    let mut config = deal_service::Config::local(&db.url, &nats.url);
    config.distributor_url = format!("http://127.0.0.1:{}", integration_tests::ports::reserve()?);
    config.common.cors_origins =
        salesplan_platform::grpc::cors_origins("SALESPLAN_CORS_ORIGINS", &origins.join(","))?;
    let shutdown = CancellationToken::new();
    let running = config.start(shutdown.clone()).await?;
    Ok((nats, db, running, shutdown))
}

#[tokio::test]
async fn the_board_and_its_changes_reach_a_browser_through_grpc_web() -> anyhow::Result<()> {
    let (_nats, _db, running, shutdown) = deal_service_with_origins(&[]).await?;
    let issuer = salesplan_platform::auth::TokenIssuer::hs256(
        salesplan_platform::config::AuthConfig::DEV_SECRET.as_bytes(),
    );
    let token = issuer.issue(
        &salesplan_platform::Actor::new(
            "acme",
            "admin",
            [Permission::PlansAdmin, Permission::DealsEditAll],
        ),
        std::time::Duration::from_secs(600),
    )?;
    let channel = tonic::transport::Endpoint::from_shared(running.grpc_url())?
        .connect()
        .await?;
    let plan = create_plan(
        channel.clone(),
        &token,
        plan_request("Board", Mode::Manual, Strategy::RoundRobin, false, &["m1"]),
    )
    .await?;
    let mut deals = DealServiceClient::new(channel);
    for title in ["First", "Second"] {
        deals
            .create_deal(outgoing(
                pb::CreateDealRequest {
                    plan_id: plan.id.clone(),
                    title: title.into(),
                    idempotency_key: title.into(),
                    contact: Some(pb::Contact {
                        external_id: title.to_lowercase(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                &token,
            ))
            .await?;
    }
    let request = pb::GetBoardRequest {
        plan_id: plan.id.clone(),
        ..Default::default()
    };
    let through_grpc = deals
        .get_board(outgoing(request.clone(), &token))
        .await?
        .into_inner();
    let path = "/salesplan.v1.DealService/GetBoard";
    let answer: Answer<pb::GetBoardResponse> =
        grpc_web(&running.grpc_url(), path, Some(&token), &request).await?;
    assert_eq!(
        answer.status.get("grpc-status").map(String::as_str),
        Some("0")
    );
    assert_eq!(answer.messages, vec![through_grpc]);
    // Without a token: UNAUTHENTICATED, as through gRPC.
    let refused: Answer<pb::GetBoardResponse> =
        grpc_web(&running.grpc_url(), path, None, &request).await?;
    assert!(refused.messages.is_empty());
    assert_eq!(
        refused.status.get("grpc-status").map(String::as_str),
        Some("16")
    );

    // The server stream too: a watch from the start of the feed gets both deals' changes,
    // with their contacts, as frames of one HTTP/1.1 answer; its token lasts 2 s, so the
    // answer ends with UNAUTHENTICATED in the trailer frame.
    let brief = issuer.issue(
        &salesplan_platform::Actor::new("acme", "board", [Permission::DealsRead]),
        std::time::Duration::from_secs(2),
    )?;
    let watch = pb::WatchDealsRequest {
        plan_id: plan.id.clone(),
        resume_token: "w1.0".into(),
        ..Default::default()
    };
    let path = "/salesplan.v1.DealService/WatchDeals";
    let watched: Answer<pb::WatchDealsResponse> =
        grpc_web(&running.grpc_url(), path, Some(&brief), &watch).await?;
    let contacts: Vec<String> = watched
        .messages
        .iter()
        .filter_map(|m| match &m.item {
            Some(pb::watch_deals_response::Item::Change(c)) => c.deal.as_ref(),
            _ => None,
        })
        .filter_map(|d| d.contact.as_ref().map(|c| c.external_id.clone()))
        .collect();
    assert_eq!(contacts, ["first", "second"]);
    assert_eq!(
        watched.status.get("grpc-status").map(String::as_str),
        Some("16"),
        "{:?}",
        watched.status
    );
    shutdown.cancel();
    running.wait().await?;
    Ok(())
}

/// A browser's preflight for a gRPC-Web call from `origin`: the answer's headers.
async fn preflight(base: &str, origin: &str) -> anyhow::Result<reqwest::header::HeaderMap> {
    let response = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/salesplan.v1.DealService/GetBoard"),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-grpc-web",
        )
        .send()
        .await?;
    Ok(response.headers().clone())
}

#[tokio::test]
async fn only_the_origins_the_deployment_names_may_call_from_a_browser() -> anyhow::Result<()> {
    const CRM: &str = "https://crm.example.com";
    let (_nats, _db, running, shutdown) = deal_service_with_origins(&[CRM]).await?;
    let allowed = preflight(&running.grpc_url(), CRM).await?;
    assert_eq!(allowed["access-control-allow-origin"], CRM);
    let headers = allowed["access-control-allow-headers"].to_str()?.to_owned();
    for header in ["authorization", "content-type", "x-grpc-web"] {
        assert!(headers.contains(header), "{headers}");
    }
    let evil = preflight(&running.grpc_url(), "https://evil.example.com").await?;
    assert!(
        evil.get("access-control-allow-origin").is_none(),
        "{evil:?}"
    );
    // The answer's status and consistency token are readable by the page.
    let call = reqwest::Client::new()
        .post(format!(
            "{}/grpc.health.v1.Health/Check",
            running.grpc_url()
        ))
        .header("origin", CRM)
        .header("content-type", "application/grpc-web+proto")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await?;
    let exposed = call.headers()["access-control-expose-headers"]
        .to_str()?
        .to_owned();
    for header in ["grpc-status", "grpc-message", "salesplan-consistency-token"] {
        assert!(exposed.contains(header), "{exposed}");
    }
    shutdown.cancel();
    running.wait().await?;

    // None named (the default): no page of any origin may.
    let (_nats, _db, running, shutdown) = deal_service_with_origins(&[]).await?;
    let refused = preflight(&running.grpc_url(), CRM).await?;
    assert!(
        refused.get("access-control-allow-origin").is_none(),
        "{refused:?}"
    );
    shutdown.cancel();
    running.wait().await?;
    Ok(())
}

//! The edges of the system: bad webhook input, authentication, NATS outages, poison
//! messages, health and reflection.

use std::time::Duration;

use futures::StreamExt;
use integration_tests::{Stack, stack::eventually};
use salesplan_platform::{Permission, bus::streams, grpc::outgoing};
use salesplan_proto::v1::{self as pb, plan_service_client::PlanServiceClient};
use serde_json::json;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const ACCOUNT: &str = "acme";

async fn intake_messages(stack: &Stack) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let mut stream = js.get_stream(streams::INTAKE.name).await?;
    Ok(stream.info().await?.state.messages)
}

fn valid_lead() -> serde_json::Value {
    json!({
        "plan_id": uuid::Uuid::new_v4().to_string(),
        "run_id": "run-1",
        "contact": { "email": "ann@example.com" },
    })
}

#[tokio::test]
async fn bad_webhook_input_gets_a_clear_4xx_and_publishes_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let http = reqwest::Client::new();
    let intake = stack.token(ACCOUNT, "funnel", &[Permission::IntakeWrite]);
    let no_permission = stack.token(ACCOUNT, "manager", &[Permission::DealsEditAll]);

    let send = |body: reqwest::Body, token: Option<&str>| {
        let mut request = http
            .post(stack.webhook_url())
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let lead_without = |field: &str| {
        let mut lead = valid_lead();
        lead.as_object_mut().expect("object").remove(field);
        reqwest::Body::from(lead.to_string())
    };

    let mut bad_email = valid_lead();
    bad_email["contact"]["email"] = json!("ann@");
    let mut bad_phone = valid_lead();
    bad_phone["contact"] = json!({ "phone": "call me maybe" });
    let mut no_contact_id = valid_lead();
    no_contact_id["contact"] = json!({ "name": "Ann" });
    let mut bad_plan = valid_lead();
    bad_plan["plan_id"] = json!("not-a-uuid");
    let foreign_key =
        salesplan_platform::auth::TokenIssuer::hs256(b"a-key-nobody-here-trusts-at-all").issue(
            &salesplan_platform::Actor::new(ACCOUNT, "funnel", [Permission::IntakeWrite]),
            Duration::from_secs(60),
        )?;
    let expired = stack.token_expired(ACCOUNT, "funnel", &[Permission::IntakeWrite]);
    let mut negative_amount = valid_lead();
    negative_amount["amount"] = json!({ "amount_minor": -100, "currency": "USD" });
    /// (body, token, expected status, expected error code, expected field)
    type Case<'a> = (
        reqwest::Body,
        Option<&'a str>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "{oops".into(),
            Some(&intake),
            400,
            "invalid_argument",
            Some("body"),
        ),
        (
            lead_without("run_id"),
            Some(&intake),
            400,
            "invalid_argument",
            Some("run_id"),
        ),
        (
            lead_without("plan_id"),
            Some(&intake),
            400,
            "invalid_argument",
            Some("plan_id"),
        ),
        (
            lead_without("contact"),
            Some(&intake),
            400,
            "invalid_argument",
            Some("contact"),
        ),
        (
            bad_email.to_string().into(),
            Some(&intake),
            400,
            "invalid_argument",
            Some("contact.email"),
        ),
        (
            bad_phone.to_string().into(),
            Some(&intake),
            400,
            "invalid_argument",
            Some("contact.phone"),
        ),
        (
            no_contact_id.to_string().into(),
            Some(&intake),
            400,
            "invalid_argument",
            Some("contact.external_id"),
        ),
        (
            bad_plan.to_string().into(),
            Some(&intake),
            400,
            "invalid_argument",
            Some("plan_id"),
        ),
        (
            negative_amount.to_string().into(),
            Some(&intake),
            400,
            "invalid_argument",
            Some("amount.amount_minor"),
        ),
        (
            valid_lead().to_string().into(),
            None,
            401,
            "unauthenticated",
            None,
        ),
        (
            valid_lead().to_string().into(),
            Some("not-a-token"),
            401,
            "unauthenticated",
            None,
        ),
        (
            valid_lead().to_string().into(),
            Some(&no_permission),
            403,
            "permission_denied",
            None,
        ),
        (
            valid_lead().to_string().into(),
            Some(&foreign_key),
            401,
            "unauthenticated",
            None,
        ),
        (
            valid_lead().to_string().into(),
            Some(&expired),
            401,
            "unauthenticated",
            None,
        ),
        (
            "x".repeat(70 * 1024).into(),
            Some(&intake),
            413,
            "payload_too_large",
            None,
        ),
    ];
    for (i, (body, token, status, code, field)) in cases.into_iter().enumerate() {
        let response = send(body, token).await?;
        assert_eq!(response.status().as_u16(), status, "case {i}");
        let body: serde_json::Value = response.json().await?;
        assert_eq!(body["error"]["code"], code, "case {i}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        match field {
            Some(field) => assert_eq!(body["error"]["field"], field, "case {i}: {body}"),
            None => assert!(body["error"].get("field").is_none(), "case {i}: {body}"),
        }
    }

    let unknown = http
        .post(format!("{}/v1/nothing-here", stack.http_base()))
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);
    let body: serde_json::Value = unknown.json().await?;
    assert_eq!(body["error"]["code"], "not_found");

    assert_eq!(intake_messages(&stack).await?, 0, "nothing was published");
    stack.stop().await
}

async fn manual_plan(stack: &Stack) -> anyhow::Result<pb::Plan> {
    let admin = stack.token(ACCOUNT, "admin", &[Permission::PlansAdmin]);
    let mut plans = PlanServiceClient::new(stack.channel(&stack.deal_service).await?);
    Ok(plans
        .create_plan(outgoing(
            pb::CreatePlanRequest {
                name: "P".into(),
                average_amount: Some(pb::Money {
                    amount_minor: 0,
                    currency: "USD".into(),
                }),
                chat_label: "P".into(),
                distribution: Some(pb::Distribution {
                    mode: pb::distribution::Mode::Manual as i32,
                    ..Default::default()
                }),
                manager_ids: vec!["m1".into()],
                members: vec![],
            },
            &admin,
        ))
        .await?
        .into_inner()
        .plan
        .expect("plan"))
}

#[tokio::test]
async fn webhook_answers_503_while_nats_is_down_never_202() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let plan = manual_plan(&stack).await?;
    let intake = stack.token(ACCOUNT, "funnel", &[Permission::IntakeWrite]);
    let http = reqwest::Client::new();
    let mut lead = valid_lead();
    lead["plan_id"] = json!(plan.id);
    let ok = http
        .post(stack.webhook_url())
        .bearer_auth(&intake)
        .json(&lead)
        .send()
        .await?;
    assert_eq!(ok.status(), 202);

    stack.nats.kill();
    lead["run_id"] = json!("run-2");
    let down = http
        .post(stack.webhook_url())
        .bearer_auth(&intake)
        .json(&lead)
        .send()
        .await?;
    assert_eq!(down.status(), 503);
    let body: serde_json::Value = down.json().await?;
    assert_eq!(body["error"]["code"], "unavailable");
    // Services still stop cleanly without their broker.
    tokio::time::timeout(Duration::from_secs(30), stack.stop()).await??;
    Ok(())
}

#[tokio::test]
async fn grpc_refuses_missing_invalid_and_unprivileged_callers() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut plans = PlanServiceClient::new(stack.channel(&stack.deal_service).await?);
    let request = || pb::CreatePlanRequest {
        name: "P".into(),
        average_amount: Some(pb::Money {
            amount_minor: 0,
            currency: "USD".into(),
        }),
        chat_label: "P".into(),
        distribution: Some(pb::Distribution {
            mode: pb::distribution::Mode::Manual as i32,
            ..Default::default()
        }),
        manager_ids: vec![],
        members: vec![],
    };

    let err = plans
        .create_plan(tonic::Request::new(request()))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let err = plans
        .create_plan(outgoing(request(), "garbage"))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let forged = salesplan_platform::auth::TokenIssuer::hs256(b"some-other-secret-entirely")
        .issue(
            &salesplan_platform::Actor::new(ACCOUNT, "admin", [Permission::PlansAdmin]),
            Duration::from_secs(60),
        )?;
    let err = plans
        .create_plan(outgoing(request(), &forged))
        .await
        .expect_err("token signed with another key");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let manager = stack.token(ACCOUNT, "m1", &[Permission::DealsEditAll]);
    let err = plans
        .create_plan(outgoing(request(), &manager))
        .await
        .expect_err("no plans:admin");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("plans:admin"), "{}", err.message());

    let admin = stack.token(ACCOUNT, "admin", &[Permission::PlansAdmin]);
    let mut bad = request();
    bad.chat_label = "THIRTEEN-CHAR".into();
    let err = plans
        .create_plan(outgoing(bad, &admin))
        .await
        .expect_err("label too long");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("chat_label:"),
        "{}",
        err.message()
    );

    stack.stop().await
}

#[tokio::test]
async fn every_service_reports_health_and_serves_reflection() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    for (running, service) in [
        (&stack.tunnel_listener, "salesplan.v1.IntakeService"),
        (&stack.deal_service, "salesplan.v1.DealService"),
        (&stack.deal_service, "salesplan.v1.PlanService"),
        (&stack.reporting, "salesplan.v1.ReportService"),
        (&stack.distributor, ""),
    ] {
        let mut health = HealthClient::new(stack.channel(running).await?);
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(stack.channel(&stack.deal_service).await?);
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await?
        .into_inner();
    let response = responses.next().await.expect("one response")?;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        anyhow::bail!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"salesplan.v1.DealService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    stack.stop().await
}

#[tokio::test]
async fn a_poison_message_goes_to_dead_letters_and_blocks_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats.url).await?);
    let subject = streams::intake_subject(ACCOUNT, &uuid::Uuid::new_v4().to_string());
    js.publish(
        subject.clone(),
        bytes::Bytes::from_static(b"\xff\xffnot protobuf"),
    )
    .await?
    .await?;

    let dead = eventually(Duration::from_secs(20), || async {
        let mut stream = js.get_stream(streams::DEAD_LETTERS.name).await?;
        let messages = stream.info().await?.state.messages;
        Ok((messages > 0).then_some(messages))
    })
    .await?;
    assert_eq!(dead, 1);
    let stream = js.get_stream(streams::DEAD_LETTERS.name).await?;
    let message = stream
        .get_last_raw_message_by_subject(&streams::dead_letters_of("distributor-intake"))
        .await?;
    let headers = message.headers;
    assert_eq!(
        headers
            .get(salesplan_platform::bus::HEADER_ORIGINAL_SUBJECT)
            .map(|v| v.as_str()),
        Some(subject.as_str())
    );
    assert!(
        headers
            .get(salesplan_platform::bus::HEADER_REASON)
            .is_some_and(|v| v.as_str().contains("undecodable"))
    );

    // The consumer moved on: its pending count drains to zero.
    let consumer_pending = eventually(Duration::from_secs(10), || async {
        let stream = js.get_stream(streams::INTAKE.name).await?;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer("distributor-intake")
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let info = consumer.info().await?;
        Ok((info.num_pending == 0 && info.num_ack_pending == 0).then_some(()))
    })
    .await;
    assert!(consumer_pending.is_ok(), "the poison message is not stuck");
    stack.stop().await
}

#[tokio::test]
async fn the_webhook_limits_each_account_with_429_and_retry_after() -> anyhow::Result<()> {
    use salesplan_platform::service::Service;
    let stack = Stack::start().await?;
    let plan = manual_plan(&stack).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut config =
        tunnel_listener::Config::local(&stack.nats.url, &stack.deal_service.grpc_url());
    config.webhook_limit = salesplan_platform::limits::ClassLimit::rate_only(0.5, 2.0);
    let limited = config.start(shutdown.clone()).await?;
    let url = format!(
        "http://{}{}",
        limited.http_addr.expect("http"),
        tunnel_listener::http::webhook::PATH
    );
    let http = reqwest::Client::new();
    let funnel = stack.token(ACCOUNT, "funnel", &[Permission::IntakeWrite]);
    let post = |token: String, run: usize| {
        let mut lead = valid_lead();
        lead["plan_id"] = json!(plan.id);
        lead["run_id"] = json!(format!("run-{run}"));
        http.post(&url).bearer_auth(token).json(&lead).send()
    };
    assert_eq!(post(funnel.clone(), 1).await?.status(), 202);
    assert_eq!(post(funnel.clone(), 2).await?.status(), 202);
    let refused = post(funnel.clone(), 3).await?;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "resource_exhausted");
    // Other accounts have their own allowance (their plan is unknown here: 404, not 429).
    let other = stack.token("globex", "funnel", &[Permission::IntakeWrite]);
    assert_eq!(post(other, 4).await?.status(), 404);
    shutdown.cancel();
    limited.wait().await?;
    stack.stop().await
}

/// A handler that fails every message whose subject names `bad`, and counts what it saw.
#[derive(Default)]
struct FailsTheBadOne {
    bad_deliveries: std::sync::atomic::AtomicUsize,
    good_deliveries: std::sync::atomic::AtomicUsize,
}

impl salesplan_platform::bus::BatchHandler for FailsTheBadOne {
    async fn handle(
        &self,
        batch: &[salesplan_platform::bus::Delivery],
    ) -> Vec<salesplan_platform::bus::Outcome> {
        use std::sync::atomic::Ordering::SeqCst;
        batch
            .iter()
            .map(|delivery| {
                if delivery.subject.contains("bad") {
                    self.bad_deliveries.fetch_add(1, SeqCst);
                    salesplan_platform::bus::Outcome::Retry("always failing".into())
                } else {
                    self.good_deliveries.fetch_add(1, SeqCst);
                    salesplan_platform::bus::Outcome::Done
                }
            })
            .collect()
    }
}

/// A message that keeps failing is tried exactly `SALESPLAN_MAX_DELIVER` times, then
/// dead-lettered with its reason and counted; the message after it is handled once.
#[tokio::test]
async fn a_message_that_keeps_failing_is_dead_lettered_after_max_deliver() -> anyhow::Result<()> {
    use salesplan_platform::{
        bus::Bus,
        config::{Env, NatsConfig},
        metrics::Metrics,
    };
    use std::sync::atomic::Ordering::SeqCst;
    let nats = integration_tests::TestNats::start().await?;
    // Read from the environment, as a service reads it.
    let config = NatsConfig::from_env(&Env::from_pairs([
        ("NATS_URL", nats.url.as_str()),
        ("SALESPLAN_MAX_DELIVER", "3"),
    ]))?;
    assert_eq!(config.max_deliver, 3);
    let bus = Bus::connect(&config, "dead-letter-test").await?;
    bus.ensure_streams(&streams::ALL).await?;
    let handler = std::sync::Arc::new(FailsTheBadOne::default());
    let metrics = Metrics::unread();
    let stop = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(salesplan_platform::bus::run_consumer(
        bus.clone(),
        salesplan_platform::bus::ConsumerSpec::new(&streams::INTAKE, "test-consumer"),
        handler.clone(),
        stop.clone(),
        metrics.clone(),
    ));
    let js = bus.jetstream();
    let bad = streams::intake_subject(ACCOUNT, "bad");
    for subject in [bad.clone(), streams::intake_subject(ACCOUNT, "good")] {
        js.publish(subject, bytes::Bytes::from_static(b"x"))
            .await?
            .await?;
    }

    let dead = eventually(Duration::from_secs(20), || async {
        let mut stream = js.get_stream(streams::DEAD_LETTERS.name).await?;
        let messages = stream.info().await?.state.messages;
        Ok((messages > 0).then_some(messages))
    })
    .await?;
    assert_eq!(dead, 1);
    let letter = js
        .get_stream(streams::DEAD_LETTERS.name)
        .await?
        .get_last_raw_message_by_subject(&streams::dead_letters_of("test-consumer"))
        .await?;
    let header = |name| letter.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        header(salesplan_platform::bus::HEADER_ORIGINAL_SUBJECT),
        Some(bad)
    );
    assert_eq!(
        header(salesplan_platform::bus::HEADER_REASON).as_deref(),
        Some("always failing")
    );
    // Dead-lettered and acked: nothing left for the consumer, and no fourth try.
    eventually(Duration::from_secs(10), || async {
        let backlog =
            integration_tests::nats::consumer_backlog(js, streams::INTAKE.name, "test-consumer")
                .await?;
        Ok(backlog.is_empty().then_some(()))
    })
    .await?;
    assert_eq!(handler.bad_deliveries.load(SeqCst), 3);
    assert_eq!(handler.good_deliveries.load(SeqCst), 1);
    // Once, not again after the first was seen.
    let mut stream = js.get_stream(streams::DEAD_LETTERS.name).await?;
    assert_eq!(stream.info().await?.state.messages, 1);
    let text = metrics.render();
    assert!(
        text.contains("salesplan_consumer_dead_letters_total{consumer=\"test-consumer\"} 1"),
        "{text}"
    );
    stop.cancel();
    consumer.await?;
    Ok(())
}

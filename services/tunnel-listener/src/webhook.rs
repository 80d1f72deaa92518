//! The HTTP webhook of the tunnel action block "Add to sales plan".
//!
//! `POST /v1/tunnel-actions/add-to-sales-plan` with `Authorization: Bearer <token>` (a token
//! of the account with the `intake:write` permission) and a JSON lead. Answers
//! `202 {"intake_id": …, "duplicate": false}` only once JetStream has stored the event;
//! every error is a 4xx/5xx with `{"error": {"code", "message", "field"?}}`.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use salesplan_platform::{ApiError, Permission, auth::TokenVerifier, telemetry};
use salesplan_proto::v1 as pb;
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use crate::intake::{self, Intake};

pub const PATH: &str = "/v1/tunnel-actions/add-to-sales-plan";

pub struct WebhookState {
    pub intake: Intake,
    pub verifier: Arc<TokenVerifier>,
}

pub fn router(state: Arc<WebhookState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route(PATH, post(add_to_sales_plan))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// The JSON body of the webhook. Unknown fields are ignored, so a newer funnel builder
/// can send more.
#[derive(Debug, Deserialize)]
struct LeadJson {
    plan_id: String,
    #[serde(default)]
    tunnel_id: String,
    #[serde(default)]
    block_id: String,
    run_id: String,
    contact: ContactJson,
    #[serde(default)]
    title: String,
    #[serde(default)]
    amount: Option<MoneyJson>,
    #[serde(default)]
    related_manager_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ContactJson {
    #[serde(default)]
    external_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
}

#[derive(Debug, Deserialize)]
struct MoneyJson {
    amount_minor: i64,
    currency: String,
}

impl From<LeadJson> for pb::Lead {
    fn from(json: LeadJson) -> Self {
        pb::Lead {
            plan_id: json.plan_id,
            tunnel_id: json.tunnel_id,
            block_id: json.block_id,
            run_id: json.run_id,
            contact: Some(pb::Contact {
                external_id: json.contact.external_id,
                name: json.contact.name,
                email: json.contact.email,
                phone: json.contact.phone,
            }),
            title: json.title,
            amount: json.amount.map(|m| pb::Money {
                amount_minor: m.amount_minor,
                currency: m.currency,
            }),
            related_manager_id: json.related_manager_id,
        }
    }
}

async fn add_to_sales_plan(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = tracing::info_span!("webhook", otel.name = "POST add-to-sales-plan");
    telemetry::set_parent(&span, telemetry::extract_from_http(&headers));
    async move {
        match handle(&state, &headers, body).await {
            Ok(accepted) => (
                StatusCode::ACCEPTED,
                Json(json!({
                    "intake_id": accepted.intake_id,
                    "duplicate": !accepted.accepted_now,
                })),
            )
                .into_response(),
            Err(err) => error_response(err),
        }
    }
    .instrument(span)
    .await
}

async fn handle(
    state: &WebhookState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<intake::Accepted, WebhookError> {
    let authorization = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let actor = state
        .verifier
        .verify_header(authorization)
        .map_err(ApiError::from)?;
    actor.require(Permission::IntakeWrite)?;
    let _permit = state.intake.admit_lead(&actor)?;
    let body = body.map_err(|rejection| WebhookError::Body(rejection.status()))?;
    let lead = parse(&body)?;
    Ok(state
        .intake
        .accept(&actor, lead.into(), pb::IntakeSource::Webhook)
        .await?)
}

/// A webhook body as the validated lead it carries (what the handler publishes), or the
/// field and reason it is refused for. Never panics, whatever the bytes.
pub fn parse_lead(body: &[u8]) -> Result<pb::Lead, ApiError> {
    intake::validated_lead(parse(body)?.into())
}

fn parse(body: &[u8]) -> Result<LeadJson, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        // "." is the root; "?" is where a syntax error left no path.
        let path = if path == "?" { ".".to_owned() } else { path };
        let message = inner.to_string();
        // "missing field `run_id` at line 1 column 9": the field is the missing one.
        let field = match message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
        {
            Some((missing, _)) if path == "." => missing.to_owned(),
            Some((missing, _)) => format!("{path}.{missing}"),
            None if path == "." => "body".to_owned(),
            None => path,
        };
        let malformed = matches!(
            inner.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        );
        let field = if malformed { "body".to_owned() } else { field };
        let reason = match malformed {
            true => "malformed JSON".to_owned(),
            false => message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned(),
        };
        ApiError::invalid(field, reason)
    })
}

enum WebhookError {
    Api(ApiError),
    /// The body could not be read: too large (413) or broken.
    Body(StatusCode),
}

impl From<ApiError> for WebhookError {
    fn from(err: ApiError) -> Self {
        Self::Api(err)
    }
}

fn error_response(err: WebhookError) -> Response {
    match err {
        WebhookError::Api(ApiError::ResourceExhausted { retry_after, .. }) => {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "resource_exhausted",
                &format!("too many leads for this account; retry in {seconds} s"),
                None,
            );
            if let Ok(value) = http::HeaderValue::from_str(&seconds.to_string()) {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, value);
            }
            response
        }
        WebhookError::Body(status) if status == StatusCode::PAYLOAD_TOO_LARGE => json_error(
            status,
            "payload_too_large",
            "request body is larger than the limit",
            None,
        ),
        WebhookError::Body(status) => {
            json_error(status, "bad_request", "cannot read request body", None)
        }
        WebhookError::Api(err) => {
            if let ApiError::Internal(source) = &err {
                tracing::error!(error = %source, "webhook failed");
            }
            let code = format!("{:?}", err.code()).to_lowercase();
            let message = match &err {
                ApiError::InvalidArgument { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            json_error(err.http_status(), &snake(&code), &message, err.field())
        }
    }
}

/// `invalidargument` is unreadable: the gRPC code names, in snake case.
fn snake(code: &str) -> String {
    match code {
        "invalidargument" => "invalid_argument",
        "notfound" => "not_found",
        "alreadyexists" => "already_exists",
        "failedprecondition" => "failed_precondition",
        "permissiondenied" => "permission_denied",
        "deadlineexceeded" => "deadline_exceeded",
        other => other,
    }
    .to_owned()
}

fn json_error(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> Response {
    let mut error = json!({ "code": code, "message": message });
    if let Some(field) = field {
        error["field"] = json!(field);
    }
    (status, Json(json!({ "error": error }))).into_response()
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such route", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let err = parse(br#"{"plan_id": "p", "contact": {}}"#).unwrap_err();
        assert_eq!(err.field(), Some("run_id"));

        let err =
            parse(br#"{"plan_id": "p", "run_id": "r", "contact": {"email": 5}}"#).unwrap_err();
        assert_eq!(err.field(), Some("contact.email"));

        let err = parse(
            br#"{"plan_id": "p", "run_id": "r", "contact": {}, "amount": {"currency": "USD"}}"#,
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("amount.amount_minor"));

        let err = parse(b"{not json").unwrap_err();
        assert_eq!(err.field(), Some("body"));
        assert_eq!(err.to_string(), "body: malformed JSON");
    }

    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            ".*",
            "[\\x00-\\x1f]{0,3}",
            Just("😀👍🏽 مرحبا שלום".to_owned()),
            Just("'; DROP TABLE deals; --".to_owned()),
            Just("%_\\".to_owned()),
            "[a-z]{0,500}",
        ]
    }

    proptest! {
        #[test]
        fn any_bytes_are_parsed_or_refused_with_a_field(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(err) = parse_lead(&body) {
                prop_assert!(err.field().is_some(), "{err}");
            }
        }

        #[test]
        fn any_json_lead_is_accepted_or_refused_with_a_field(
            plan in text(), run in text(), name in text(), email in text(), phone in text(),
            external in text(), amount in any::<i64>(), currency in text(),
        ) {
            let body = serde_json::json!({
                "plan_id": plan, "run_id": run,
                "contact": {"name": name, "email": email, "phone": phone, "external_id": external},
                "amount": {"amount_minor": amount, "currency": currency},
            });
            match parse_lead(body.to_string().as_bytes()) {
                Ok(lead) => {
                    prop_assert!(amount >= 0);
                    let contact = lead.contact.unwrap_or_default();
                    prop_assert!(!contact.name.chars().any(char::is_control));
                }
                Err(err) => prop_assert!(matches!(err, ApiError::InvalidArgument { .. }), "{err}"),
            }
        }
    }

    #[test]
    fn emoji_and_right_to_left_names_are_kept() {
        let body = serde_json::json!({
            "plan_id": "0190b6c2-2f5e-7d4b-9c1a-1234567890ab",
            "run_id": "r",
            "contact": {"name": "مرحبا 😀", "external_id": "x"},
        });
        let lead = parse_lead(body.to_string().as_bytes()).unwrap();
        assert_eq!(lead.contact.unwrap().name, "مرحبا 😀");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let lead =
            parse(br#"{"plan_id": "p", "run_id": "r", "contact": {}, "new_thing": 1}"#).unwrap();
        assert_eq!(lead.run_id, "r");
    }
}

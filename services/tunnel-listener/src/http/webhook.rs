//! The HTTP webhook of the tunnel action block "Add to sales plan".
//!
//! `POST /v1/tunnel-actions/add-to-sales-plan` with `Authorization: Bearer <token>` (a token
//! of the account with the `intake:write` permission) and a JSON lead. Answers
//! `202 {"intake_id": …, "duplicate": false, "consistency_token": …}` only once JetStream
//! has stored the event (the token, also in the header `salesplan-consistency-token`, makes
//! a read wait for the lead's deal);
//! every error is a 4xx/5xx with `{"error": {"code", "message", "field"?}}`.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use salesplan_platform::{
    Actor, ApiError, Checks, Permission, auth::TokenVerifier, consistency, telemetry,
};
use salesplan_proto::v1 as pb;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::{domain::lead, events::intake::Intake};

pub const PATH: &str = "/v1/tunnel-actions/add-to-sales-plan";

pub struct WebhookState {
    pub intake: Intake,
    pub verifier: Arc<TokenVerifier>,
    /// Larger bodies get 413.
    pub max_body_bytes: usize,
    /// A body not read in full by then gets 408.
    pub body_timeout: std::time::Duration,
}

/// The body, within the size limit (413) and the body deadline (408).
async fn read_body(state: &WebhookState, body: axum::body::Body) -> Result<Bytes, WebhookError> {
    match tokio::time::timeout(
        state.body_timeout,
        axum::body::to_bytes(body, state.max_body_bytes),
    )
    .await
    {
        Err(_) => Err(WebhookError::Body(StatusCode::REQUEST_TIMEOUT)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) => {
            let too_large = std::error::Error::source(&err)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            Err(WebhookError::Body(if too_large {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            }))
        }
    }
}

pub fn router(state: Arc<WebhookState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route(PATH, post(add_to_sales_plan))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn add_to_sales_plan(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // Authenticated before anything is traced: an anonymous caller (a scanner, a forged
    // token) costs no span, and cannot choose a trace or have it sampled.
    let actor = match authenticate(&state, &headers) {
        Ok(actor) => actor,
        Err(err) => return error_response(err),
    };
    let span = tracing::info_span!(
        "webhook",
        otel.name = "POST add-to-sales-plan",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = PATH,
        http.response.status_code = tracing::field::Empty,
        salesplan.account_id = tracing::field::Empty,
        salesplan.plan_id = tracing::field::Empty,
        salesplan.intake_id = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    telemetry::set_parent(&span, telemetry::extract_from_http(&headers));
    span.record("salesplan.account_id", actor.account_id.as_str());
    let traced = span.clone();
    async move {
        let response = match handle(&state, &actor, &headers, body).await {
            Ok(accepted) => {
                traced.record("salesplan.intake_id", accepted.intake_id.to_string());
                let token = accepted.consistency_token();
                (
                    StatusCode::ACCEPTED,
                    [(consistency::HEADER, token.clone())],
                    Json(json!({
                        "intake_id": accepted.intake_id,
                        "duplicate": !accepted.accepted_now,
                        "consistency_token": token,
                    })),
                )
                    .into_response()
            }
            Err(err) => {
                // A refused lead's span says so, and why (an operator looks for it).
                telemetry::fail(&traced, &err.to_string());
                error_response(err)
            }
        };
        traced.record("http.response.status_code", response.status().as_u16());
        response
    }
    .instrument(span)
    .await
}

/// The caller, when its bearer token is valid and may add leads.
fn authenticate(state: &WebhookState, headers: &HeaderMap) -> Result<Actor, WebhookError> {
    let authorization = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let actor = state
        .verifier
        .verify_header(authorization)
        .map_err(ApiError::from)?;
    actor.require(Permission::IntakeWrite)?;
    Ok(actor)
}

async fn handle(
    state: &WebhookState,
    actor: &Actor,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<lead::Accepted, WebhookError> {
    let _permit = state.intake.admit_lead(actor)?;
    if !declared_json(headers) {
        return Err(WebhookError::Body(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    // Read only now, after the token: nobody unauthenticated makes the listener buffer.
    let body = read_body(state, body).await?;
    let lead = parse_lead(&body).inspect_err(|_| {
        state.intake.count_rejected(pb::IntakeSource::Webhook);
    })?;
    tracing::Span::current().record("salesplan.plan_id", lead.plan_id.as_str());
    Ok(state
        .intake
        .accept(actor, lead, pb::IntakeSource::Webhook)
        .await?)
}

/// A webhook body as the validated lead it carries (what the handler publishes), or every
/// field it is refused for, at once. Never panics, whatever the bytes. Unknown fields are
/// ignored, so a newer funnel builder can send more.
pub fn parse_lead(body: &[u8]) -> Result<pb::Lead, ApiError> {
    let mut checks = Checks::new();
    let lead = read_lead(body, &mut checks)?;
    // Fields refused for their JSON type keep that reason (the first per field wins).
    checks.check(lead::validated_lead(lead.clone()));
    checks.finish()?;
    lead::validated_lead(lead)
}

/// The lead's fields as JSON gives them; a missing or mistyped field is noted and left
/// empty. Only a body that is not a JSON object is refused at once.
fn read_lead(body: &[u8], checks: &mut Checks) -> Result<pb::Lead, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| ApiError::invalid("body", "malformed JSON"))?;
    let Value::Object(root) = value else {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    };
    let mut field = |name: &str, required: bool| string_at(&root, "", name, required, checks);
    let lead = pb::Lead {
        plan_id: field("plan_id", true),
        tunnel_id: field("tunnel_id", false),
        block_id: field("block_id", false),
        run_id: field("run_id", true),
        title: field("title", false),
        related_manager_id: match root.get("related_manager_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) => Some(m.clone()),
            Some(_) => {
                checks.note(ApiError::invalid("related_manager_id", "must be a string"));
                None
            }
        },
        contact: Some(read_contact(root.get("contact"), checks)),
        amount: read_amount(root.get("amount"), checks),
    };
    Ok(lead)
}

fn read_contact(value: Option<&Value>, checks: &mut Checks) -> pb::Contact {
    let contact = match value {
        Some(Value::Object(contact)) => contact,
        None | Some(Value::Null) => {
            checks.note(ApiError::invalid("contact", "required"));
            return pb::Contact::default();
        }
        Some(_) => {
            checks.note(ApiError::invalid("contact", "must be an object"));
            return pb::Contact::default();
        }
    };
    let mut field = |name: &str| string_at(contact, "contact.", name, false, checks);
    pb::Contact {
        external_id: field("external_id"),
        name: field("name"),
        email: field("email"),
        phone: field("phone"),
    }
}

fn read_amount(value: Option<&Value>, checks: &mut Checks) -> Option<pb::Money> {
    let amount = match value {
        None | Some(Value::Null) => return None,
        Some(Value::Object(amount)) => amount,
        Some(_) => {
            checks.note(ApiError::invalid("amount", "must be an object"));
            return None;
        }
    };
    let amount_minor = match amount.get("amount_minor") {
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
        None | Some(Value::Null) => {
            checks.note(ApiError::invalid("amount.amount_minor", "required"));
            None
        }
        Some(_) => {
            checks.note(ApiError::invalid(
                "amount.amount_minor",
                "must be an integer (minor units)",
            ));
            None
        }
    };
    let currency = string_at(amount, "amount.", "currency", true, checks);
    Some(pb::Money {
        amount_minor: amount_minor.unwrap_or_default(),
        currency,
    })
}

/// The string at `name` of `object` (empty when absent or null), noting a missing required
/// one or one of another type under `prefix` + `name`.
fn string_at(
    object: &serde_json::Map<String, Value>,
    prefix: &str,
    name: &str,
    required: bool,
    checks: &mut Checks,
) -> String {
    match object.get(name) {
        Some(Value::String(text)) => text.clone(),
        None | Some(Value::Null) if !required => String::new(),
        None | Some(Value::Null) => {
            checks.note(ApiError::invalid(format!("{prefix}{name}"), "required"));
            String::new()
        }
        Some(_) => {
            checks.note(ApiError::invalid(
                format!("{prefix}{name}"),
                "must be a string",
            ));
            String::new()
        }
    }
}

enum WebhookError {
    Api(ApiError),
    /// The body could not be read: too large (413) or broken.
    Body(StatusCode),
}

impl std::fmt::Display for WebhookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Api(err) => err.fmt(f),
            Self::Body(status) => write!(f, "body refused: {status}"),
        }
    }
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
                salesplan_platform::error::code_name(tonic::Code::ResourceExhausted),
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
        WebhookError::Body(StatusCode::UNSUPPORTED_MEDIA_TYPE) => json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON (Content-Type: application/json)",
            None,
        ),
        WebhookError::Body(StatusCode::REQUEST_TIMEOUT) => json_error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the body did not arrive in time",
            None,
        ),
        WebhookError::Body(status) => {
            json_error(status, "bad_request", "cannot read request body", None)
        }
        WebhookError::Api(err) => {
            if let ApiError::Internal(source) = &err {
                tracing::error!(error = %source, "webhook failed");
            }
            let message = match err.violations() {
                [only] => only.reason.clone(),
                _ => err.to_string(),
            };
            let mut error = json!({
                "code": err.code_name(),
                "message": message,
                "reason": err.reason().as_str(),
            });
            if let Some(field) = err.field() {
                error["field"] = json!(field);
            }
            if !err.violations().is_empty() {
                error["violations"] = err
                    .violations()
                    .iter()
                    .map(|v| json!({"field": v.field, "reason": v.reason}))
                    .collect();
            }
            (err.http_status(), Json(json!({ "error": error }))).into_response()
        }
    }
}

/// An error of HTTP itself (route, method, body): its reason is its code, upper case
/// (`METHOD_NOT_ALLOWED`, `UNSUPPORTED_MEDIA_TYPE`, `PAYLOAD_TOO_LARGE`, …).
fn json_error(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> Response {
    let mut error = json!({
        "code": code,
        "message": message,
        "reason": code.to_ascii_uppercase(),
    });
    if let Some(field) = field {
        error["field"] = json!(field);
    }
    (status, Json(json!({ "error": error }))).into_response()
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such route", None)
}

async fn method_not_allowed() -> Response {
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route takes POST only",
        None,
    );
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
    response
}

/// A body declared as something other than JSON is refused (415); a body without a
/// content type is read as JSON (funnel builders often send none).
fn declared_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return true;
    };
    let media = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = "0190b6c2-2f5e-7d4b-9c1a-1234567890ab";

    fn fields(body: &str) -> Vec<String> {
        parse_lead(body.as_bytes())
            .unwrap_err()
            .violations()
            .iter()
            .map(|v| v.field.clone())
            .collect()
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let plan = PLAN;
        assert_eq!(
            fields(&format!(
                r#"{{"plan_id": "{plan}", "contact": {{"external_id": "x"}}}}"#
            )),
            ["run_id"]
        );
        assert_eq!(
            fields(&format!(
                r#"{{"plan_id": "{plan}", "run_id": "r", "contact": {{"email": 5, "external_id": "x"}}}}"#
            )),
            ["contact.email"]
        );
        assert_eq!(
            fields(&format!(
                r#"{{"plan_id": "{plan}", "run_id": "r", "contact": {{"external_id": "x"}}, "amount": {{"currency": "USD"}}}}"#
            )),
            ["amount.amount_minor"]
        );
        let err = parse_lead(b"{not json").unwrap_err();
        assert_eq!(err.field(), Some("body"));
        assert_eq!(err.to_string(), "body: malformed JSON");
    }

    /// Every violation of a body at once, each field once, with the first reason found.
    #[test]
    fn every_violation_is_reported_at_once() {
        let body = r#"{"plan_id": "nope", "contact": {"email": "not-mail", "phone": 7},
                       "amount": {"amount_minor": -5, "currency": "usd?"}, "title": 3}"#;
        let err = parse_lead(body.as_bytes()).unwrap_err();
        let mut got: Vec<(&str, &str)> = err
            .violations()
            .iter()
            .map(|v| (v.field.as_str(), v.reason.as_str()))
            .collect();
        got.sort();
        let fields: Vec<&str> = got.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "amount.amount_minor",
                "amount.currency",
                "contact.email",
                "contact.phone",
                "plan_id",
                "run_id",
                "title",
            ],
            "{got:?}"
        );
        assert!(
            got.contains(&("contact.phone", "must be a string")),
            "{got:?}"
        );
        assert!(got.contains(&("run_id", "required")), "{got:?}");
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
        let body = format!(
            r#"{{"plan_id": "{PLAN}", "run_id": "r", "contact": {{"external_id": "x"}}, "new_thing": 1}}"#
        );
        let lead = parse_lead(body.as_bytes()).unwrap();
        assert_eq!(lead.run_id, "r");
    }

    #[test]
    fn json_media_types_are_told_apart() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, value.parse().unwrap());
            declared_json(&headers)
        };
        assert!(declared_json(&HeaderMap::new()));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("application/vnd.funnel+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
    }
}

//! The API error every service returns, and the one place that decides its gRPC code and
//! its details (the richer error model: `google.rpc.ErrorInfo` on every error, `BadRequest`
//! with every field violation, `RetryInfo` on RESOURCE_EXHAUSTED).

use std::fmt;

use tonic::{Code, Status};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The `ErrorInfo.domain` of every error.
pub const ERROR_DOMAIN: &str = "salesplan.v1";

/// Why a request was refused, for machines: the `ErrorInfo.reason` of every error. The
/// names are stable; clients may match on them (listed in `proto/salesplan/v1/common.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// INVALID_ARGUMENT: see the BadRequest detail for every field and why.
    InvalidFields,
    /// INVALID_ARGUMENT: the plan requires a loss reason to close a deal as LOST.
    LossReasonRequired,
    NotFound,
    AlreadyExists,
    PermissionMissing,
    Unauthenticated,
    /// ABORTED: the entity changed since the caller read it (its version moved on).
    StaleVersion,
    /// RESOURCE_EXHAUSTED: over a limit of the account; RetryInfo says when to retry.
    AccountLimit,
    Unavailable,
    DeadlineExceeded,
    Internal,
    // FAILED_PRECONDITION, by the rule that refused:
    PlanArchived,
    PlanCapReached,
    StageCapReached,
    ProtectedStage,
    LastOpenStage,
    StageHoldsDeals,
    ManagerNotInPlan,
    DealClosed,
    DealOpen,
    NothingToChange,
    /// A deal cannot wait for automatic distribution in a plan that distributes by hand.
    ManualDistribution,
    /// The account has availability set for as many managers as it may.
    ManagerCapReached,
    /// The distributor placed a waiting deal with a manager who is away by now.
    ManagerUnavailable,
    /// The distributor's reassignment after a missed deadline meets the deal out of that
    /// assignment (accepted, assigned anew, or closed).
    AssignmentEnded,
    /// The distributor's reassignment after a missed deadline meets a deal whose deadline
    /// ended since (the plan's deadline removed, or the plan archived): nothing to do.
    DeadlineEnded,
    /// FAILED_PRECONDITION: a watch's resume token is older than the changes kept for
    /// resuming: reload the board.
    WatchTokenExpired,
    /// ABORTED: a watcher fell too far behind the changes and was cut off: reconnect with
    /// the last resume token.
    WatchLagged,
    /// UNAVAILABLE: the replica is stopping: reconnect (to another one) with the last
    /// resume token.
    Draining,
}

impl Reason {
    /// Whether `status` (a service's answer) was refused for this reason (its ErrorInfo).
    pub fn is_why(self, status: &Status) -> bool {
        use tonic_types::StatusExt as _;
        status
            .get_error_details()
            .error_info()
            .is_some_and(|info| info.domain == ERROR_DOMAIN && info.reason == self.as_str())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidFields => "INVALID_FIELDS",
            Self::LossReasonRequired => "LOSS_REASON_REQUIRED",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::PermissionMissing => "PERMISSION_MISSING",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::StaleVersion => "STALE_VERSION",
            Self::AccountLimit => "ACCOUNT_LIMIT",
            Self::Unavailable => "UNAVAILABLE",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::Internal => "INTERNAL",
            Self::PlanArchived => "PLAN_ARCHIVED",
            Self::PlanCapReached => "PLAN_CAP_REACHED",
            Self::StageCapReached => "STAGE_CAP_REACHED",
            Self::ProtectedStage => "PROTECTED_STAGE",
            Self::LastOpenStage => "LAST_OPEN_STAGE",
            Self::StageHoldsDeals => "STAGE_HOLDS_DEALS",
            Self::ManagerNotInPlan => "MANAGER_NOT_IN_PLAN",
            Self::DealClosed => "DEAL_CLOSED",
            Self::DealOpen => "DEAL_OPEN",
            Self::NothingToChange => "NOTHING_TO_CHANGE",
            Self::ManualDistribution => "MANUAL_DISTRIBUTION",
            Self::ManagerCapReached => "MANAGER_CAP_REACHED",
            Self::ManagerUnavailable => "MANAGER_UNAVAILABLE",
            Self::AssignmentEnded => "ASSIGNMENT_ENDED",
            Self::DeadlineEnded => "DEADLINE_ENDED",
            Self::WatchTokenExpired => "WATCH_TOKEN_EXPIRED",
            Self::WatchLagged => "WATCH_LAGGED",
            Self::Draining => "DRAINING",
        }
    }
}

/// One field of a request and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub reason: String,
}

/// Every violation of a request, shown as `field: reason; field: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations(pub Vec<Violation>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.reason)?;
        }
        Ok(())
    }
}

/// What went wrong, in terms a caller can act on. Internal details (SQL, I/O) stay in the
/// `Internal` source, which is logged and never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Every field violation of the request at once.
    #[error("{violations}")]
    InvalidArgument {
        violations: Violations,
        reason: Reason,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{message}")]
    FailedPrecondition { reason: Reason, message: String },
    #[error("missing permission {0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unavailable(String),
    /// Over a limit of the caller's account (calls at once, rate, contacts in flight):
    /// retry after `retry_after`.
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after: std::time::Duration,
    },
    /// Took longer than this service allows one request (a statement timeout, an idle
    /// stream).
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("internal error")]
    Internal(#[source] BoxError),
    /// A long call (a watch) ended by the server, with the code and reason that tell the
    /// client what to do next.
    #[error("{message}")]
    Ended {
        code: Code,
        reason: Reason,
        message: String,
    },
}

/// A gRPC code's name in snake case (`invalid_argument`); upper case, it is the name the
/// gRPC specification gives it (`INVALID_ARGUMENT`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            violations: Violations(vec![Violation {
                field: field.into(),
                reason: reason.into(),
            }]),
            reason: Reason::InvalidFields,
        }
    }

    /// A request refused by a rule of the state it meets (FAILED_PRECONDITION).
    pub fn precondition(reason: Reason, message: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }

    /// The machine-readable reason (`ErrorInfo.reason`).
    pub fn reason(&self) -> Reason {
        match self {
            Self::InvalidArgument { reason, .. } | Self::FailedPrecondition { reason, .. } => {
                *reason
            }
            Self::NotFound(_) => Reason::NotFound,
            Self::AlreadyExists(_) => Reason::AlreadyExists,
            Self::PermissionDenied(_) => Reason::PermissionMissing,
            Self::Unauthenticated(_) => Reason::Unauthenticated,
            Self::Aborted(_) => Reason::StaleVersion,
            Self::Unavailable(_) => Reason::Unavailable,
            Self::ResourceExhausted { .. } => Reason::AccountLimit,
            Self::DeadlineExceeded(_) => Reason::DeadlineExceeded,
            Self::Internal(_) => Reason::Internal,
            Self::Ended { reason, .. } => *reason,
        }
    }

    /// Every field violation (empty for other errors).
    pub fn violations(&self) -> &[Violation] {
        match self {
            Self::InvalidArgument { violations, .. } => &violations.0,
            _ => &[],
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    pub fn internal(source: impl Into<BoxError>) -> Self {
        Self::Internal(source.into())
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition { .. } => Code::FailedPrecondition,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::Aborted(_) => Code::Aborted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Internal(_) => Code::Internal,
            Self::Ended { code, .. } => *code,
        }
    }

    /// The gRPC code's name in snake case (`invalid_argument`), as the webhook's JSON
    /// errors say it.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code())
    }

    /// The HTTP status of the same error, for the webhook.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::InvalidArgument { .. } => S::BAD_REQUEST,
            Self::NotFound(_) => S::NOT_FOUND,
            Self::AlreadyExists(_) | Self::Aborted(_) => S::CONFLICT,
            Self::FailedPrecondition { .. } => S::UNPROCESSABLE_ENTITY,
            Self::PermissionDenied(_) => S::FORBIDDEN,
            Self::Unauthenticated(_) => S::UNAUTHORIZED,
            Self::Unavailable(_) => S::SERVICE_UNAVAILABLE,
            Self::ResourceExhausted { .. } => S::TOO_MANY_REQUESTS,
            Self::DeadlineExceeded(_) => S::GATEWAY_TIMEOUT,
            Self::Internal(_) => S::INTERNAL_SERVER_ERROR,
            // Streams end so; the webhook never answers with one.
            Self::Ended { .. } => S::SERVICE_UNAVAILABLE,
        }
    }

    /// The (first) field an `InvalidArgument` is about.
    pub fn field(&self) -> Option<&str> {
        self.violations().first().map(|v| v.field.as_str())
    }

    /// Prefixes the fields of an `InvalidArgument`, for errors of a nested message
    /// (`contact` + `email` → `contact.email`).
    pub fn within(self, parent: &str) -> Self {
        match self {
            Self::InvalidArgument { violations, reason } => Self::InvalidArgument {
                violations: Violations(
                    violations
                        .0
                        .into_iter()
                        .map(|v| Violation {
                            field: format!("{parent}.{}", v.field),
                            reason: v.reason,
                        })
                        .collect(),
                ),
                reason,
            },
            other => other,
        }
    }
}

/// Collects the field violations of a request, so it is refused once with all of them.
/// Any other error met on the way (NOT_FOUND, …) wins over them.
#[derive(Debug, Default)]
pub struct Checks {
    violations: Vec<Violation>,
    reason: Option<Reason>,
    other: Option<ApiError>,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value, or its default while the error is noted.
    pub fn take<T: Default>(&mut self, result: Result<T, ApiError>) -> T {
        self.check(result).unwrap_or_default()
    }

    /// The value, or `None` while the error is noted.
    pub fn check<T>(&mut self, result: Result<T, ApiError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.note(err);
                None
            }
        }
    }

    pub fn note(&mut self, err: ApiError) {
        match err {
            ApiError::InvalidArgument { violations, reason } => {
                // One reason per field: the first found (a JSON type before a format).
                for v in violations.0 {
                    if !self.violations.iter().any(|seen| seen.field == v.field) {
                        self.violations.push(v);
                    }
                }
                // A specific reason says more than "invalid fields".
                if reason != Reason::InvalidFields || self.reason.is_none() {
                    self.reason = Some(reason);
                }
            }
            other => {
                self.other.get_or_insert(other);
            }
        }
    }

    /// Whether nothing was noted so far.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.other.is_none()
    }

    /// Ok when every check passed; else the first other error, or every violation.
    pub fn finish(self) -> Result<(), ApiError> {
        if let Some(other) = self.other {
            return Err(other);
        }
        if self.violations.is_empty() {
            return Ok(());
        }
        Err(ApiError::InvalidArgument {
            violations: Violations(self.violations),
            reason: self.reason.unwrap_or(Reason::InvalidFields),
        })
    }
}

/// Independent checks of one request, as a tuple of results: [`AllChecks::all`] gives
/// their values, or every violation at once (one per field).
pub trait AllChecks {
    type Output;
    fn all(self) -> Result<Self::Output, ApiError>;
}

macro_rules! all_checks {
    ($($name:ident),+) => {
        impl<$($name),+> AllChecks for ($(Result<$name, ApiError>,)+) {
            type Output = ($($name,)+);

            #[allow(non_snake_case)]
            fn all(self) -> Result<Self::Output, ApiError> {
                let ($($name,)+) = self;
                let mut checks = Checks::new();
                $(let $name = checks.check($name);)+
                checks.finish()?;
                match ($($name,)+) {
                    ($(Some($name),)+) => Ok(($($name,)+)),
                    _ => Err(ApiError::internal("a passed check has no value")),
                }
            }
        }
    };
}

/// Every element's value, or the violations of every element at once.
pub fn every<T>(
    results: impl IntoIterator<Item = Result<T, ApiError>>,
) -> Result<Vec<T>, ApiError> {
    let mut checks = Checks::new();
    let values: Vec<T> = results
        .into_iter()
        .filter_map(|r| checks.check(r))
        .collect();
    checks.finish()?;
    Ok(values)
}

all_checks!(A, B);
all_checks!(A, B, C);
all_checks!(A, B, C, D);
all_checks!(A, B, C, D, E);
all_checks!(A, B, C, D, E, F);

/// Field violations a status carries at most: the status travels in the call's trailers,
/// which clients cap (16 KiB is common); a request with a thousand bad entries gets the
/// first ones and how many more there are, not an answer too big to read.
pub const MAX_VIOLATIONS_SHOWN: usize = 20;
/// Bytes of field names and reasons a status carries at most (a reason may quote a
/// caller's value): with the message repeating them, well inside an 8 KiB trailer limit.
const MAX_VIOLATION_BYTES: usize = 2_048;

/// How many of `violations` a status carries: at most [`MAX_VIOLATIONS_SHOWN`] and
/// [`MAX_VIOLATION_BYTES`] (at least one).
fn shown(violations: &[Violation]) -> usize {
    let mut bytes = 0;
    let within = violations.iter().take_while(|v| {
        bytes += v.field.len() + v.reason.len();
        bytes <= MAX_VIOLATION_BYTES
    });
    within
        .count()
        .clamp(1, MAX_VIOLATIONS_SHOWN)
        .min(violations.len())
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
        if let ApiError::Internal(source) = &err {
            tracing::error!(error = %source, "internal error");
        }
        let mut metadata = std::collections::HashMap::<String, String>::new();
        let err = match err {
            ApiError::InvalidArgument {
                mut violations,
                reason,
            } if shown(&violations.0) < violations.0.len() => {
                let keep = shown(&violations.0);
                let more = violations.0.len() - keep;
                violations.0.truncate(keep);
                violations.0.push(Violation {
                    field: "(more)".into(),
                    reason: format!("{more} more violations not shown"),
                });
                metadata.insert("violations_not_shown".into(), more.to_string());
                ApiError::InvalidArgument { violations, reason }
            }
            other => other,
        };
        let mut details = ErrorDetails::new();
        details.set_error_info(err.reason().as_str(), ERROR_DOMAIN, metadata);
        match &err {
            ApiError::InvalidArgument { violations, .. } => {
                details.set_bad_request(
                    violations
                        .0
                        .iter()
                        .map(|v| FieldViolation::new(v.field.clone(), v.reason.clone()))
                        .collect::<Vec<_>>(),
                );
            }
            // The standard RetryInfo detail, so clients back off by the server's word.
            ApiError::ResourceExhausted { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
            }
            _ => {}
        }
        Status::with_error_details(err.code(), err.to_string(), details)
    }
}

/// PostgreSQL's "canceling statement due to statement timeout".
const QUERY_CANCELED: &str = "57014";

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(error = %err, "database unavailable");
                Self::Unavailable("database unavailable, retry later".into())
            }
            sqlx::Error::Database(db) if db.code().as_deref() == Some(QUERY_CANCELED) => {
                tracing::warn!(error = %err, "statement timeout");
                Self::DeadlineExceeded(
                    "the query ran longer than this service allows one; narrow the filter or \
                     the search"
                        .into(),
                )
            }
            _ => Self::Internal(err.into()),
        }
    }
}

/// The SQLSTATE when `err` is the database refusing the data of a statement (a data
/// exception, class 22, or a constraint violation, class 23): the same input fails again
/// however often it is retried, unlike a lost connection or a timeout.
pub fn sql_data_refusal(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .filter(|code| code.starts_with("22") || code.starts_with("23"))
            .map(|code| code.into_owned()),
        _ => None,
    }
}

/// Whether a database error is a unique violation (Postgres 23505), e.g. a replayed
/// idempotency key.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field_in_the_status() {
        let status: Status = ApiError::invalid("contact.email", "not an email address").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "contact.email: not an email address");
    }

    #[test]
    fn a_thousand_violations_travel_as_the_first_twenty_and_a_count() {
        use tonic_types::StatusExt;
        let violations = (0..1_000)
            .map(|i| ApiError::invalid(format!("members[{i}].manager_id"), "listed twice"));
        let status: Status = every::<()>(violations.map(Err)).unwrap_err().into();
        let details = status.get_error_details();
        let fields = &details.bad_request().expect("BadRequest").field_violations;
        assert_eq!(fields.len(), MAX_VIOLATIONS_SHOWN + 1);
        assert_eq!(fields[0].field, "members[0].manager_id");
        assert_eq!(
            fields[MAX_VIOLATIONS_SHOWN].description,
            "980 more violations not shown"
        );
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(
            info.metadata
                .get("violations_not_shown")
                .map(String::as_str),
            Some("980")
        );
        assert!(
            status
                .message()
                .ends_with("(more): 980 more violations not shown")
        );
        assert!(status.message().len() < 2_000, "{}", status.message().len());
        // Long reasons (quoting a 128-character id of 4-byte characters) are cut by size.
        let long = "𝔸".repeat(128);
        let violations = (0..60).map(|i| ApiError::invalid(format!("members[{i}]"), &long));
        let status: Status = every::<()>(violations.map(Err)).unwrap_err().into();
        assert!(status.message().len() < 4_000, "{}", status.message().len());
        assert!(status.message().ends_with("more violations not shown"));
    }

    #[test]
    fn every_violation_travels_in_one_status_with_its_reason() {
        use tonic_types::StatusExt;
        let mut checks = Checks::new();
        let name: String = checks.take(Err(ApiError::invalid("name", "required")));
        let label: Option<String> = checks.check(Ok("x".to_owned()));
        checks.note(ApiError::invalid("amount", "negative").within("average_amount"));
        assert!(name.is_empty() && label.is_some() && !checks.passed());
        let status: Status = checks.finish().unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "name: required; average_amount.amount: negative"
        );
        let details = status.get_error_details();
        let fields: Vec<&str> = details
            .bad_request()
            .expect("BadRequest")
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["name", "average_amount.amount"]);
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_FIELDS", ERROR_DOMAIN)
        );
    }

    #[test]
    fn every_error_carries_its_reason_and_limits_say_when_to_retry() {
        use tonic_types::StatusExt;
        let cases = [
            (
                ApiError::precondition(Reason::PlanArchived, "plan p is archived"),
                "PLAN_ARCHIVED",
            ),
            (ApiError::Aborted("stale".into()), "STALE_VERSION"),
            (ApiError::not_found("plan p"), "NOT_FOUND"),
            (ApiError::internal(std::io::Error::other("x")), "INTERNAL"),
        ];
        for (err, reason) in cases {
            let status: Status = err.into();
            let info = status.get_error_details().error_info().cloned();
            assert_eq!(info.map(|i| i.reason), Some(reason.to_owned()));
        }
        let status: Status = ApiError::ResourceExhausted {
            message: "slow down".into(),
            retry_after: std::time::Duration::from_millis(1500),
        }
        .into();
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().and_then(|r| r.retry_delay),
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some("ACCOUNT_LIMIT")
        );
    }

    #[test]
    fn nested_fields_get_their_parent_prefix() {
        let err = ApiError::invalid("email", "empty").within("contact");
        assert_eq!(err.field(), Some("contact.email"));
    }

    #[test]
    fn internal_details_never_reach_the_client() {
        let status: Status =
            ApiError::internal(std::io::Error::other("relation deals does not exist")).into();
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn all_checks_give_every_violation_or_every_value() {
        let ok: (Result<i32, ApiError>, Result<&str, ApiError>) = (Ok(1), Ok("a"));
        assert_eq!(ok.all().unwrap(), (1, "a"));
        let err = (
            Err::<i32, _>(ApiError::invalid("a", "bad")),
            Ok::<_, ApiError>(2),
            Err::<i32, _>(ApiError::invalid("c", "bad")),
        )
            .all()
            .unwrap_err();
        let ApiError::InvalidArgument { violations, .. } = err else {
            panic!("{err:?}");
        };
        let fields: Vec<&str> = violations.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["a", "c"]);
    }

    #[test]
    fn code_names_are_the_grpc_codes_in_snake_case() {
        let errors = [
            ApiError::invalid("f", "bad"),
            ApiError::NotFound("x".into()),
            ApiError::AlreadyExists("x".into()),
            ApiError::precondition(Reason::DealClosed, "x"),
            ApiError::PermissionDenied("x".into()),
            ApiError::Unauthenticated("x".into()),
            ApiError::Aborted("x".into()),
            ApiError::Unavailable("x".into()),
            ApiError::ResourceExhausted {
                message: "x".into(),
                retry_after: std::time::Duration::from_secs(1),
            },
            ApiError::DeadlineExceeded("x".into()),
            ApiError::internal("x"),
        ];
        for err in errors {
            let mut snake = String::new();
            for (i, c) in format!("{:?}", err.code()).chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_lowercase());
            }
            assert_eq!(err.code_name(), snake);
        }
    }
}

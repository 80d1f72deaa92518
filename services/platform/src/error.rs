//! The API error every service returns, and the one place that decides its gRPC code.

use tonic::{Code, Status};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, in terms a caller can act on. Internal details (SQL, I/O) stay in the
/// `Internal` source, which is logged and never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
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
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
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
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::Aborted(_) => Code::Aborted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status of the same error, for the webhook.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::InvalidArgument { .. } => S::BAD_REQUEST,
            Self::NotFound(_) => S::NOT_FOUND,
            Self::AlreadyExists(_) | Self::Aborted(_) => S::CONFLICT,
            Self::FailedPrecondition(_) => S::UNPROCESSABLE_ENTITY,
            Self::PermissionDenied(_) => S::FORBIDDEN,
            Self::Unauthenticated(_) => S::UNAUTHORIZED,
            Self::Unavailable(_) => S::SERVICE_UNAVAILABLE,
            Self::ResourceExhausted { .. } => S::TOO_MANY_REQUESTS,
            Self::DeadlineExceeded(_) => S::GATEWAY_TIMEOUT,
            Self::Internal(_) => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// The field an `InvalidArgument` is about.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidArgument { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Prefixes the field of an `InvalidArgument`, for errors of a nested message
    /// (`contact` + `email` → `contact.email`).
    pub fn within(self, parent: &str) -> Self {
        match self {
            Self::InvalidArgument { field, reason } => Self::InvalidArgument {
                field: format!("{parent}.{field}"),
                reason,
            },
            other => other,
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        use tonic_types::{ErrorDetails, StatusExt};
        match &err {
            ApiError::Internal(source) => tracing::error!(error = %source, "internal error"),
            // The standard RetryInfo detail, so clients back off by the server's word.
            ApiError::ResourceExhausted { retry_after, .. } => {
                return Status::with_error_details(
                    err.code(),
                    err.to_string(),
                    ErrorDetails::with_retry_info(Some(*retry_after)),
                );
            }
            _ => {}
        }
        Status::new(err.code(), err.to_string())
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
pub fn data_refusal(err: &ApiError) -> Option<String> {
    let ApiError::Internal(source) = err else {
        return None;
    };
    sql_data_refusal(source.downcast_ref::<sqlx::Error>()?)
}

/// [`data_refusal`] of a database error as sqlx returns it.
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
}

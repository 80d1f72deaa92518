//! The one error of deal-service's store: what a read or a change met, in the store's
//! terms, converted to the API's in one place.

use salesplan_platform::{ApiError, consistency::NotFresh};

use crate::domain::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such row in the caller's account (named: "deal 0190…").
    #[error("{0} not found")]
    NotFound(String),
    /// The row changed since the caller read it, or a concurrent call won a race: a retry
    /// (after reloading) can succeed.
    #[error("{0}")]
    Conflict(String),
    /// A rule of the domain refused the input or the change (invalid field, precondition).
    #[error(transparent)]
    Refused(#[from] DomainError),
    /// A read given a consistency token waited its time and the write is not readable yet.
    #[error(transparent)]
    NotFresh(#[from] NotFresh),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored value this code cannot read back (a hand-edited row), or an answer that
    /// should be there and is not: a bug, never the caller's.
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Refused(DomainError::invalid(field, reason))
    }

    /// The SQLSTATE when the database refused the data of a statement (see
    /// [`salesplan_platform::error::sql_data_refusal`]): the same input fails again.
    pub fn data_refusal(&self) -> Option<String> {
        match self {
            Self::Database(err) => salesplan_platform::error::sql_data_refusal(err),
            _ => None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(message) => Self::Aborted(message),
            StoreError::Refused(err) => err.into(),
            StoreError::NotFresh(err) => err.into(),
            StoreError::Database(err) => err.into(),
            StoreError::Internal(message) => Self::internal(message),
        }
    }
}

//! The pure rules of plans and deals: no I/O, no async, no transport types.

pub mod counts;
pub mod deal;
pub mod feed;
pub mod manager;
pub mod plan;
pub mod query;
pub mod stages;

pub use salesplan_platform::Reason;

/// A rule of the domain that an input breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Closing as LOST without a reason in a plan that requires one.
    #[error("loss_reason_id: required: this plan asks for a reason when a deal is lost")]
    LossReasonRequired,
    /// A rule of the state the request meets, named by `Reason`.
    #[error("{1}")]
    Precondition(Reason, String),
    /// The actor may change only the deals assigned to them (no `deals:edit_all`).
    #[error("not your deal: needs deals:edit_all")]
    NotYours,
    /// Only the deal's manager accepts it (no permission does it for them).
    #[error("only the deal's manager accepts it")]
    NotTheManager,
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<DomainError> for salesplan_platform::ApiError {
    fn from(err: DomainError) -> Self {
        match err {
            DomainError::Invalid { field, reason } => Self::invalid(field, reason),
            DomainError::LossReasonRequired => Self::InvalidArgument {
                violations: salesplan_platform::error::Violations(vec![
                    salesplan_platform::error::Violation {
                        field: "loss_reason_id".into(),
                        reason: "required: this plan asks for a reason when a deal is lost".into(),
                    },
                ]),
                reason: Reason::LossReasonRequired,
            },
            DomainError::Precondition(reason, message) => Self::precondition(reason, message),
            DomainError::NotTheManager => Self::PermissionDenied(
                "only the deal's manager accepts it (the deal is not assigned to you)".into(),
            ),
            DomainError::NotYours => Self::PermissionDenied(format!(
                "{} (the deal is not assigned to you)",
                salesplan_platform::Permission::DealsEditAll
            )),
        }
    }
}

/// Money in integer minor units of an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: String,
}

/// A sum of amounts in one currency. i128: amounts are at most 10^15 each, so no number of
/// deals a database can hold makes it overflow (an i64 sum does at 9,224 such deals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoneySum {
    pub amount_minor: i128,
    pub currency: String,
}

impl From<Money> for MoneySum {
    fn from(money: Money) -> Self {
        Self {
            amount_minor: i128::from(money.amount_minor),
            currency: money.currency,
        }
    }
}

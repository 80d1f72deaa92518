//! SQL, and only SQL: the read model (deals and kept totals), names, the consumers'
//! progress, the reports' queries and the operator commands' reads.

pub mod deals;
pub mod maintenance;
pub mod names;
pub mod progress;
pub mod reports;
pub mod responses;

/// The one error of reporting's store. Every read and write here is SQL over the read
/// model, so what can fail is the database; converted to the API's error in one place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// The SQLSTATE when the database refused the data of a statement: the same input
    /// fails again (see [`salesplan_platform::error::sql_data_refusal`]).
    pub fn data_refusal(&self) -> Option<String> {
        match self {
            Self::Database(err) => salesplan_platform::error::sql_data_refusal(err),
        }
    }
}

impl From<StoreError> for salesplan_platform::ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Database(err) => err.into(),
        }
    }
}

//! SQL, and only SQL: the read model (deals and kept totals), names, the consumers'
//! progress, the reports' queries and the operator commands' reads.

pub mod deals;
pub mod maintenance;
pub mod names;
pub mod progress;
pub mod reports;

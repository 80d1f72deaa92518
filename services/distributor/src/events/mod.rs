//! The distributor's consumers: intake events (decide, publish the decisions, create the
//! deals), deal events (open counts, relations, decision links) and plan events (the copy
//! of each plan's settings).

pub mod deals;
pub mod intake;
pub mod plans;

//! The distributor's consumers: intake events (decide, publish the decisions, create the
//! deals), deal events (open counts, relations, decision links) and plan events (the copy
//! of each plan's settings); and the waiting queues, decided when those events free a
//! place and made in deal-service by a relay of orders.

pub mod deadlines;
pub mod deals;
pub mod intake;
pub mod leased;
pub mod plans;
pub mod queue;

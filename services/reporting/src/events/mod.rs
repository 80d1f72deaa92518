//! The consumers: deal events into the read model, plan events into names, and
//! deal-service's horizons; each consumer's progress recorded as it goes.

pub mod deals;
pub mod plans;
pub mod progress;

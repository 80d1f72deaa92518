//! The pure rules of the distributor: who gets a new lead of a plan, over a batch, and
//! what deal events change in its counts and relations.

pub mod batch;
pub mod deadline;
pub mod deal_view;
pub mod distribution;
pub mod queue;

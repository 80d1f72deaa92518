//! The pure distribution rules: who gets a new lead of a plan.

pub mod distribution;

//! What the listener publishes: one intake event per accepted lead.

pub mod intake;

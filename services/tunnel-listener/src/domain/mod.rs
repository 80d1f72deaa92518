//! The pure parts of the listener: what a valid lead is, and what its answer says.

pub mod lead;

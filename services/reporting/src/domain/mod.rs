//! The pure parts of reporting: no I/O. Report rows and shares, the read model's
//! arithmetic, periods in whole days, and how far the model is.

pub mod deals;
pub mod period;
pub mod progress;
pub mod report;

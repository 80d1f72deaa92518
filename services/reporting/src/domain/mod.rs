//! The pure arithmetic of reports: no I/O.

pub mod report;

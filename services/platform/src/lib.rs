//! Plumbing every salesplan service shares, so no service copies it: configuration,
//! telemetry, the NATS JetStream bus, PostgreSQL, the gRPC server and its authentication,
//! shutdown, and the one mapping from errors to gRPC status codes.
#![forbid(unsafe_code)]

pub mod auth;
pub mod bus;
pub mod config;
pub mod consistency;
pub mod db;
pub mod error;
pub mod grpc;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod privacy;
pub mod schedule;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod validate;

pub use auth::{Actor, Permission};
pub use error::{AllChecks, ApiError, Checks, Reason, every};

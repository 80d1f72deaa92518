//! Test harness: real PostgreSQL and real NATS JetStream, isolated per test.
//!
//! - PostgreSQL: one server (`SALESPLAN_TEST_DATABASE_URL`, else `DATABASE_URL`, else the
//!   local default), a fresh database per test, dropped afterwards.
//! - NATS: a private `nats-server -js` per test on a free port with its own store dir,
//!   killed when the test ends (`NATS_SERVER_BIN` overrides the binary).
//!
//! So tests run in parallel and in any order.
#![forbid(unsafe_code)]

pub mod api;
pub mod bench;
pub mod chaos;
pub mod metrics;
pub mod nats;
pub mod ports;
pub mod postgres;
pub mod stack;

pub use nats::TestNats;
pub use postgres::TestDatabase;
pub use stack::Stack;

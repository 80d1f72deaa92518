//! What deal-service publishes: the outbox relay (every committed change's event, in
//! commit order per deal) and the horizons that let reads wait for a write.

pub mod lanes;
pub mod outbox;
pub mod scrub;

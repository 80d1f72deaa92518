//! What deal-service publishes: the outbox relay (every committed change's event, in
//! commit order per deal) and the horizons that let reads wait for a write; and what it
//! reads back: the live feed of deal changes behind WatchDeals.

pub mod feed;
pub mod lanes;
pub mod outbox;
pub mod scrub;

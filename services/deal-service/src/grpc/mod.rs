//! gRPC handlers: authorise, convert (validating), call the store, convert back.

mod deals;
mod outbox;
mod plans;

use crate::store::Store;

#[derive(Clone)]
pub struct Api {
    store: Store,
}

impl Api {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

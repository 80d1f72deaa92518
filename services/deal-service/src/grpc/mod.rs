//! gRPC handlers: authorise, convert (validating), call the store, convert back.

mod deals;
mod outbox;
mod plans;

use std::sync::Arc;

use salesplan_platform::limits::AccountLimiter;

use crate::{Limits, store::Store};

#[derive(Clone)]
pub struct Api {
    store: Store,
    /// ListDeals, GetBoard, GetDealHistory, ListPlans, ListParkedEvents.
    reads: Arc<AccountLimiter>,
    /// BulkMoveDeals, BulkAssignDeals, TransferDeals, ReplayParkedEvents.
    bulk: Arc<AccountLimiter>,
    /// CreateDeals.
    creates: Arc<AccountLimiter>,
    /// Plan changes: CreatePlan, UpdatePlan, ArchivePlan, SetPlanManagers, the stage
    /// calls, SetLossReasons.
    plan_changes: Arc<AccountLimiter>,
    /// How long a read given a consistency token waits for its write.
    consistency_wait: std::time::Duration,
}

impl Api {
    pub fn new(store: Store, limits: &Limits, consistency_wait: std::time::Duration) -> Self {
        Self {
            store,
            reads: AccountLimiter::new("reads", limits.reads),
            bulk: AccountLimiter::new("bulk changes", limits.bulk),
            creates: AccountLimiter::new("deal creation", limits.creates),
            plan_changes: AccountLimiter::new("plan changes", limits.plan_changes),
            consistency_wait,
        }
    }

    /// Waits until the write of the request's consistency token (if any) can be read.
    async fn readable(&self, token: &str) -> Result<(), salesplan_platform::ApiError> {
        match salesplan_platform::consistency::Token::parse("min_consistency_token", token)? {
            Some(token) => self.store.readable(token, self.consistency_wait).await,
            None => Ok(()),
        }
    }
}

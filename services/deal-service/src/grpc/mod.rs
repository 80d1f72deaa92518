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
}

impl Api {
    pub fn new(store: Store, limits: &Limits) -> Self {
        Self {
            store,
            reads: AccountLimiter::new("reads", limits.reads),
            bulk: AccountLimiter::new("bulk changes", limits.bulk),
            creates: AccountLimiter::new("deal creation", limits.creates),
            plan_changes: AccountLimiter::new("plan changes", limits.plan_changes),
        }
    }
}

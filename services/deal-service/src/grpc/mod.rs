//! gRPC handlers: authorise, convert (validating), call the store, convert back.

mod contacts;
mod deals;
mod managers;
mod outbox;
mod plans;
mod watch;

pub use watch::Watch;

use std::sync::Arc;

use salesplan_platform::{limits::AccountLimiter, metrics::Metrics};
use salesplan_proto::v1::distributor_service_client::DistributorServiceClient;

use crate::{Limits, store::Store};
use salesplan_platform::consistency::Wanted;

#[derive(Clone)]
pub struct Api {
    store: Store,
    /// EraseContact deletes the person's leads in the lanes and dead letters.
    bus: salesplan_platform::bus::Bus,
    contact_keys: salesplan_platform::privacy::ContactKeys,
    /// ExportContact asks it for the decisions that assigned the person's deals.
    distributor: DistributorServiceClient<tonic::transport::Channel>,
    /// ListDeals, GetBoard, GetDealHistory, ListPlans, ListParkedEvents.
    reads: Arc<AccountLimiter>,
    /// BulkMoveDeals, BulkAssignDeals, TransferDeals, ReplayParkedEvents.
    bulk: Arc<AccountLimiter>,
    /// CreateDeals.
    creates: Arc<AccountLimiter>,
    /// Plan changes: CreatePlan, UpdatePlan, ArchivePlan, SetPlanManagers, the stage
    /// calls, SetLossReasons.
    plan_changes: Arc<AccountLimiter>,
    /// Managers' SetSchedule and SetPaused (with the plan changes' allowance, apart: a
    /// manager pausing and resuming themself never holds up an administrator).
    availability_changes: Arc<AccountLimiter>,
    /// How long a read given a consistency token waits for its write.
    consistency_wait: std::time::Duration,
    /// WatchDeals: the live feed, and the service's shutdown (which ends the watches).
    watch: Watch,
}

impl Api {
    pub fn new(
        store: Store,
        bus: salesplan_platform::bus::Bus,
        contact_keys: salesplan_platform::privacy::ContactKeys,
        distributor: DistributorServiceClient<tonic::transport::Channel>,
        (limits, consistency_wait): (&Limits, std::time::Duration),
        watch: Watch,
        metrics: &Metrics,
    ) -> Self {
        Self {
            store,
            bus,
            contact_keys,
            distributor,
            reads: AccountLimiter::new("reads", limits.reads, metrics),
            bulk: AccountLimiter::new("bulk changes", limits.bulk, metrics),
            creates: AccountLimiter::new("deal creation", limits.creates, metrics),
            plan_changes: AccountLimiter::new("plan changes", limits.plan_changes, metrics),
            availability_changes: AccountLimiter::new(
                "availability changes",
                limits.plan_changes,
                metrics,
            ),
            consistency_wait,
            watch,
        }
    }

    /// Waits until what the request's consistency token (if any) stands for can be read:
    /// a write, or the deals of accepted leads.
    async fn readable(
        &self,
        account_id: &str,
        wanted: Option<Wanted>,
    ) -> Result<(), salesplan_platform::ApiError> {
        match wanted {
            Some(Wanted::Write(token)) => {
                Ok(self.store.readable(token, self.consistency_wait).await?)
            }
            Some(Wanted::Leads(leads)) => Ok(self
                .store
                .leads_readable(account_id, &leads, self.consistency_wait)
                .await?),
            None => Ok(()),
        }
    }
}

/// A store error answers a call as the API error it converts to.
impl From<crate::store::StoreError> for tonic::Status {
    fn from(err: crate::store::StoreError) -> Self {
        salesplan_platform::ApiError::from(err).into()
    }
}

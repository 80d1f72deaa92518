//! gRPC handlers: authorise, convert (validating), call the store, convert back.

use salesplan_platform::{Permission, auth, ids::parse_id};
use salesplan_proto::v1::{
    self as pb, deal_service_server::DealService, plan_service_server::PlanService,
};
use tonic::{Request, Response, Status};

use crate::{
    domain::{deal::NewDeal, plan::PlanDraft},
    store::Store,
};

#[derive(Clone)]
pub struct Api {
    store: Store,
}

impl Api {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl PlanService for Api {
    async fn create_plan(
        &self,
        request: Request<pb::CreatePlanRequest>,
    ) -> Result<Response<pb::CreatePlanResponse>, Status> {
        let actor = auth::actor(&request)?;
        actor.require(Permission::PlansAdmin)?;
        let draft = PlanDraft::try_from(request.into_inner())?;
        let plan = self
            .store
            .create_plan(&actor.account_id, &actor.user_id, draft)
            .await?;
        tracing::info!(plan_id = %plan.id, account_id = %actor.account_id, "plan created");
        Ok(Response::new(pb::CreatePlanResponse {
            plan: Some((&plan).into()),
        }))
    }

    async fn get_plan(
        &self,
        request: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::GetPlanResponse>, Status> {
        let actor = auth::actor(&request)?;
        let plan_id = parse_id("plan_id", &request.get_ref().plan_id)?;
        let plan = self.store.plan(&actor.account_id, plan_id).await?;
        Ok(Response::new(pb::GetPlanResponse {
            plan: Some((&plan).into()),
        }))
    }
}

#[tonic::async_trait]
impl DealService for Api {
    async fn create_deal(
        &self,
        request: Request<pb::CreateDealRequest>,
    ) -> Result<Response<pb::CreateDealResponse>, Status> {
        let actor = auth::actor(&request)?;
        let input = NewDeal::try_from(request.into_inner())?;
        // Anyone of the account may add a deal; giving it to someone else is editing
        // another manager's deals.
        if input
            .manager_id
            .as_deref()
            .is_some_and(|m| m != actor.user_id)
        {
            actor.require(Permission::DealsEditAll)?;
        }
        let (deal, created) = self
            .store
            .create_deal(&actor.account_id, &actor.user_id, input)
            .await?;
        if created {
            tracing::debug!(deal_id = %deal.id, plan_id = %deal.plan_id, "deal created");
        }
        Ok(Response::new(pb::CreateDealResponse {
            deal: Some((&deal).into()),
            created,
        }))
    }

    async fn get_deal(
        &self,
        request: Request<pb::GetDealRequest>,
    ) -> Result<Response<pb::GetDealResponse>, Status> {
        let actor = auth::actor(&request)?;
        let deal_id = parse_id("deal_id", &request.get_ref().deal_id)?;
        let deal = self.store.deal(&actor.account_id, deal_id).await?;
        Ok(Response::new(pb::GetDealResponse {
            deal: Some((&deal).into()),
        }))
    }
}

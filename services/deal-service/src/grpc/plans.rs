//! PlanService.

use salesplan_platform::{
    Actor, AllChecks, ApiError, Checks, Permission, auth, every, ids, ids::parse_id,
    limits::Permit, validate,
};
use salesplan_proto::v1::{self as pb, plan_service_server::PlanService};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::Api;
use crate::{
    convert,
    domain::{
        DomainError,
        plan::{self, Plan, PlanDraft},
        query::{AfterKey, bounded_page_size},
    },
};

type Reply<T> = Result<Response<T>, Status>;

/// Plans per ListPlans page: a plan at every cap is large (stages, managers, reasons).
const PLANS_PAGE: usize = 20;
const MAX_PLANS_PAGE: usize = 50;

fn admin<T>(request: &Request<T>) -> Result<Actor, ApiError> {
    let actor = auth::actor(request)?;
    actor.require(Permission::PlansAdmin)?;
    Ok(actor)
}

impl Api {
    /// An administrator's plan change, within the account's allowance of them (each is a
    /// plan event every consumer applies).
    fn plan_change<T>(&self, request: &Request<T>) -> Result<(Actor, Permit), ApiError> {
        let actor = admin(request)?;
        let permit = self.plan_changes.admit(&actor.account_id)?;
        Ok((actor, permit))
    }

    /// Archives or unarchives the plan; already so, it answers with the plan unchanged.
    async fn set_archived(
        &self,
        actor: &Actor,
        plan_id: Uuid,
        archived: bool,
    ) -> Result<Plan, ApiError> {
        let kind = if archived {
            pb::plan_event::Kind::Archived
        } else {
            pb::plan_event::Kind::Unarchived
        };
        let (plan, ()) = self
            .store
            .modify_plan(&actor.account_id, &actor.user_id, plan_id, kind, |plan| {
                plan.archived = archived;
                Ok(())
            })
            .await?;
        Ok(plan)
    }

    async fn change_plan<T>(
        &self,
        actor: &Actor,
        plan_id: Uuid,
        change: impl FnOnce(&mut Plan) -> Result<T, DomainError>,
    ) -> Result<(Plan, T), ApiError> {
        self.store
            .modify_plan(
                &actor.account_id,
                &actor.user_id,
                plan_id,
                pb::plan_event::Kind::Updated,
                change,
            )
            .await
            .map_err(ApiError::from)
    }
}

#[tonic::async_trait]
impl PlanService for Api {
    async fn create_plan(
        &self,
        request: Request<pb::CreatePlanRequest>,
    ) -> Reply<pb::CreatePlanResponse> {
        let (actor, _permit) = self.plan_change(&request)?;
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

    async fn get_plan(&self, request: Request<pb::GetPlanRequest>) -> Reply<pb::GetPlanResponse> {
        let actor = auth::actor_for(&request, Permission::PlatformLookup)?;
        // The listener looks a lead's plan up with `platform:lookup`, which reads nothing else.
        if !actor.has(Permission::PlatformLookup) {
            actor.require(Permission::DealsRead)?;
        }
        let plan_id = parse_id("plan_id", &request.get_ref().plan_id)?;
        let plan = self.store.plan(&actor.account_id, plan_id).await?;
        // The stamp is for the services that decide leads (the listener's look-up, the
        // distributor's refresh); a person's read of a plan does not pay for it.
        let with_availability = request.get_ref().with_availability;
        let (stamp, members) = if with_availability || actor.has(Permission::PlatformLookup) {
            self.store
                .members_availability(&actor.account_id, &plan.managers, with_availability)
                .await?
        } else {
            Default::default()
        };
        let now = crate::store::now();
        Ok(Response::new(pb::GetPlanResponse {
            plan: Some((&plan).into()),
            availability_version: stamp.versions,
            availability_sequence: stamp.sequence,
            member_availability: members
                .iter()
                .map(|m| convert::availability_to(m, now))
                .collect(),
        }))
    }

    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Reply<pb::ListPlansResponse> {
        let actor = auth::reader(&request, Permission::DealsRead)?;
        let _permit = self.reads.admit(&actor.account_id)?;
        let req = request.get_ref();
        let after = AfterKey::decode::<Uuid>(&req.page_token).map_err(ApiError::from)?;
        let limit = bounded_page_size(req.page_size, PLANS_PAGE, MAX_PLANS_PAGE);
        let (plans, more) = self
            .store
            .list_plans(&actor.account_id, req.include_archived, after, limit)
            .await?;
        let next_page_token = match plans.last() {
            Some(last) if more => AfterKey::encode(&last.id.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListPlansResponse {
            plans: plans.iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn update_plan(
        &self,
        request: Request<pb::UpdatePlanRequest>,
    ) -> Reply<pb::UpdatePlanResponse> {
        let (actor, _permit) = self.plan_change(&request)?;
        let req = request.into_inner();
        let mut checks = Checks::new();
        let plan_id = checks.check(parse_id("plan_id", &req.plan_id));
        let name = checks.take(
            req.name
                .as_deref()
                .map(|n| validate::required_text("name", n, plan::MAX_NAME_CHARS))
                .transpose(),
        );
        let label = checks.take(
            req.chat_label
                .as_deref()
                .map(|l| validate::required_text("chat_label", l, plan::MAX_LABEL_CHARS))
                .transpose(),
        );
        let amount = checks.take(convert::money_from("average_amount", req.average_amount));
        let distribution = checks.take(
            req.distribution
                .map(|d| convert::distribution_from(Some(d)))
                .transpose(),
        );
        checks.finish()?;
        let plan_id = plan_id.ok_or_else(|| ApiError::internal("a checked field is missing"))?;
        let (plan, ()) = self
            .change_plan(&actor, plan_id, |plan| {
                if let Some(name) = name {
                    plan.name = name;
                }
                if let Some(label) = label {
                    plan.chat_label = label;
                }
                if let Some(amount) = amount {
                    plan.average_amount = amount;
                }
                if let Some(distribution) = distribution {
                    plan.distribution = distribution;
                }
                Ok(())
            })
            .await?;
        Ok(Response::new(pb::UpdatePlanResponse {
            plan: Some((&plan).into()),
        }))
    }

    async fn archive_plan(
        &self,
        request: Request<pb::ArchivePlanRequest>,
    ) -> Reply<pb::ArchivePlanResponse> {
        let (actor, _permit) = self.plan_change(&request)?;
        let plan_id = parse_id("plan_id", &request.get_ref().plan_id)?;
        let plan = self.set_archived(&actor, plan_id, true).await?;
        Ok(Response::new(pb::ArchivePlanResponse {
            plan: Some((&plan).into()),
        }))
    }

    async fn unarchive_plan(
        &self,
        request: Request<pb::UnarchivePlanRequest>,
    ) -> Reply<pb::UnarchivePlanResponse> {
        let (actor, _permit) = self.plan_change(&request)?;
        let plan_id = parse_id("plan_id", &request.get_ref().plan_id)?;
        let plan = self.set_archived(&actor, plan_id, false).await?;
        Ok(Response::new(pb::UnarchivePlanResponse {
            plan: Some((&plan).into()),
        }))
    }

    async fn set_plan_managers(
        &self,
        request: Request<pb::SetPlanManagersRequest>,
    ) -> Reply<pb::SetPlanManagersResponse> {
        let (actor, _permit) = self.plan_change(&request)?;
        let req = request.into_inner();
        let (plan_id, managers) = (
            parse_id("plan_id", &req.plan_id),
            convert::members_from(&req.manager_ids, &req.members),
        )
            .all()?;
        let (plan, ()) = self
            .change_plan(&actor, plan_id, |plan| plan.set_managers(managers))
            .await?;
        Ok(Response::new(pb::SetPlanManagersResponse {
            plan: Some((&plan).into()),
        }))
    }

    async fn add_stage(
        &self,
        request: Request<pb::AddStageRequest>,
    ) -> Reply<pb::AddStageResponse> {
        let (actor, _permit) = self.plan_change(&request)?;
        let req = request.into_inner();
        let position = match req.position {
            Some(p) if p < 0 => Err(ApiError::invalid("position", "must not be negative")),
            p => Ok(p.map(|p| p as usize)),
        };
        let (plan_id, name, color, position) = (
            parse_id("plan_id", &req.plan_id),
            convert::stage_name(&req.name),
            convert::color(&req.color),
            position,
        )
            .all()?;
        let id = ids::new_id();
        let (plan, ()) = self
            .change_plan(&actor, plan_id, |plan| {
                plan.add_stage(id, name, color, position)
            })
            .await?;
        let stage = plan.stage(id).map(convert::stage_to_proto);
        Ok(Response::new(pb::AddStageResponse {
            plan: Some((&plan).into()),
            stage,
        }))
    }

    async fn update_stage(
        &self,
        request: Request<pb::UpdateStageRequest>,
    ) -> Reply<pb::UpdateStageResponse> {
        let (actor, _permit) = self.plan_change(&request)?;
        let req = request.into_inner();
        let (stage_id, name, color) = (
            parse_id("stage_id", &req.stage_id),
            req.name.as_deref().map(convert::stage_name).transpose(),
            req.color.as_deref().map(convert::color).transpose(),
        )
            .all()?;
        let plan_id = self
            .store
            .plan_of_stage(&actor.account_id, stage_id)
            .await?;
        let (plan, ()) = self
            .change_plan(&actor, plan_id, |plan| {
                plan.update_stage(stage_id, name, color)
            })
            .await?;
        Ok(Response::new(pb::UpdateStageResponse {
            plan: Some((&plan).into()),
        }))
    }

    async fn reorder_stages(
        &self,
        request: Request<pb::ReorderStagesRequest>,
    ) -> Reply<pb::ReorderStagesResponse> {
        let (actor, _permit) = self.plan_change(&request)?;
        let req = request.into_inner();
        let (plan_id, order) = (
            parse_id("plan_id", &req.plan_id),
            convert::ids("open_stage_ids", &req.open_stage_ids),
        )
            .all()?;
        let (plan, ()) = self
            .change_plan(&actor, plan_id, |plan| plan.reorder_stages(&order))
            .await?;
        Ok(Response::new(pb::ReorderStagesResponse {
            plan: Some((&plan).into()),
        }))
    }

    async fn delete_stage(
        &self,
        request: Request<pb::DeleteStageRequest>,
    ) -> Reply<pb::DeleteStageResponse> {
        let (actor, _permit) = self.plan_change(&request)?;
        let req = request.into_inner();
        let (stage_id, target) = (
            parse_id("stage_id", &req.stage_id),
            convert::optional_id("target_stage_id", req.target_stage_id.as_deref()),
        )
            .all()?;
        let (plan, moved_deals) = self
            .store
            .delete_stage(&actor.account_id, &actor.user_id, stage_id, target)
            .await?;
        Ok(Response::new(pb::DeleteStageResponse {
            plan: Some((&plan).into()),
            moved_deals,
        }))
    }

    async fn set_loss_reasons(
        &self,
        request: Request<pb::SetLossReasonsRequest>,
    ) -> Reply<pb::SetLossReasonsResponse> {
        let (actor, _permit) = self.plan_change(&request)?;
        let req = request.into_inner();
        let inputs = every(req.reasons.iter().enumerate().map(|(i, r)| {
            let field = format!("reasons[{i}]");
            (
                (!r.id.is_empty())
                    .then(|| parse_id(&format!("{field}.id"), &r.id))
                    .transpose(),
                validate::required_text(&format!("{field}.name"), &r.name, 100),
            )
                .all()
        }));
        let (plan_id, inputs) = (parse_id("plan_id", &req.plan_id), inputs).all()?;
        let (plan, ()) = self
            .change_plan(&actor, plan_id, |plan| {
                plan.set_loss_reasons(req.require_reason, inputs, ids::new_id)
            })
            .await?;
        Ok(Response::new(pb::SetLossReasonsResponse {
            plan: Some((&plan).into()),
        }))
    }
}

//! ManagerService: managers' availability.

use salesplan_platform::{Actor, AllChecks as _, ApiError, Permission, auth, schedule::Schedule};
use salesplan_proto::v1::{self as pb, manager_service_server::ManagerService};
use tonic::{Request, Response, Status};

use super::Api;
use crate::{
    convert::{self, availability_to},
    domain::{
        manager::{Change, Manager},
        query::{AfterKey, bounded_page_size},
    },
    store::now,
};

type Reply<T> = Result<Response<T>, Status>;

const MANAGERS_PAGE: usize = 100;
const MAX_MANAGERS_PAGE: usize = 500;

impl Api {
    /// Applies an availability change within the account's allowance of settings changes
    /// (each is an event the distributor applies).
    async fn change_manager(
        &self,
        actor: &Actor,
        manager_id: &str,
        change: Change,
    ) -> Result<pb::ManagerAvailability, ApiError> {
        let _permit = self.availability_changes.admit(&actor.account_id)?;
        let manager = self
            .store
            .change_manager(&actor.account_id, &actor.user_id, manager_id, change)
            .await?;
        tracing::info!(account_id = %actor.account_id, manager_id, version = manager.version, "manager availability set");
        Ok(shown(&manager))
    }
}

fn shown(manager: &Manager) -> pb::ManagerAvailability {
    availability_to(manager, now())
}

#[tonic::async_trait]
impl ManagerService for Api {
    async fn get_availability(
        &self,
        request: Request<pb::GetAvailabilityRequest>,
    ) -> Reply<pb::GetAvailabilityResponse> {
        let actor = auth::reader(&request, Permission::DealsRead)?;
        let _permit = self.reads.admit(&actor.account_id)?;
        let manager_id = convert::manager_id("manager_id", &request.get_ref().manager_id)?;
        let manager = self.store.manager(&actor.account_id, &manager_id).await?;
        Ok(Response::new(pb::GetAvailabilityResponse {
            availability: Some(shown(&manager)),
        }))
    }

    async fn list_availability(
        &self,
        request: Request<pb::ListAvailabilityRequest>,
    ) -> Reply<pb::ListAvailabilityResponse> {
        let actor = auth::reader(&request, Permission::DealsRead)?;
        let _permit = self.reads.admit(&actor.account_id)?;
        let req = request.get_ref();
        let after = AfterKey::decode::<String>(&req.page_token).map_err(ApiError::from)?;
        let limit = bounded_page_size(req.page_size, MANAGERS_PAGE, MAX_MANAGERS_PAGE);
        let (managers, more) = self
            .store
            .list_managers(&actor.account_id, after, limit)
            .await?;
        let next_page_token = match managers.last() {
            Some(last) if more => AfterKey::encode(&last.manager_id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAvailabilityResponse {
            managers: managers.iter().map(shown).collect(),
            next_page_token,
        }))
    }

    async fn set_schedule(
        &self,
        request: Request<pb::SetScheduleRequest>,
    ) -> Reply<pb::SetScheduleResponse> {
        let actor = auth::reader(&request, Permission::PlansAdmin)?;
        let req = request.into_inner();
        let (manager_id, schedule) = (
            convert::manager_id("manager_id", &req.manager_id),
            Schedule::from_proto("schedule", req.schedule.unwrap_or_default()),
        )
            .all()?;
        let availability = self
            .change_manager(&actor, &manager_id, Change::Schedule(Box::new(schedule)))
            .await?;
        Ok(Response::new(pb::SetScheduleResponse {
            availability: Some(availability),
        }))
    }

    async fn set_paused(
        &self,
        request: Request<pb::SetPausedRequest>,
    ) -> Reply<pb::SetPausedResponse> {
        let actor = auth::actor(&request)?;
        let req = request.into_inner();
        let manager_id = convert::manager_id("manager_id", &req.manager_id)?;
        // A manager pauses and resumes themself; anyone else needs plans:admin.
        if manager_id != actor.user_id {
            actor.require(Permission::PlansAdmin)?;
        }
        let availability = self
            .change_manager(&actor, &manager_id, Change::Paused(req.paused))
            .await?;
        Ok(Response::new(pb::SetPausedResponse {
            availability: Some(availability),
        }))
    }
}

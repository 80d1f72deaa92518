//! DistributorService: why a deal went to its manager.

use salesplan_platform::{ApiError, auth, ids::parse_id};
use salesplan_proto::v1::{self as pb, distributor_service_server::DistributorService};
use tonic::{Request, Response, Status};

use crate::store::Store;

#[derive(Clone)]
pub struct Explain {
    store: Store,
}

impl Explain {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl DistributorService for Explain {
    async fn explain_assignment(
        &self,
        request: Request<pb::ExplainAssignmentRequest>,
    ) -> Result<Response<pb::ExplainAssignmentResponse>, Status> {
        let actor = auth::actor(&request)?;
        let deal_id = parse_id("deal_id", &request.get_ref().deal_id)?;
        let assignment = self
            .store
            .assignment_of_deal(&actor.account_id, deal_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "assignment of deal {deal_id} (deals created directly have none)"
                ))
            })?;
        Ok(Response::new(pb::ExplainAssignmentResponse {
            assignment: Some(assignment),
        }))
    }
}

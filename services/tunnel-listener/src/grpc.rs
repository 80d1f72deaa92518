//! IntakeService: "add to sales plan" for gRPC clients.

use salesplan_platform::{Permission, auth, bus::Bus};
use salesplan_proto::v1::{self as pb, intake_service_server::IntakeService};
use tonic::{Request, Response, Status};

use crate::intake;

#[derive(Clone)]
pub struct Intake {
    bus: Bus,
}

impl Intake {
    pub fn new(bus: Bus) -> Self {
        Self { bus }
    }
}

#[tonic::async_trait]
impl IntakeService for Intake {
    async fn add_to_sales_plan(
        &self,
        request: Request<pb::AddToSalesPlanRequest>,
    ) -> Result<Response<pb::AddToSalesPlanResponse>, Status> {
        let actor = auth::actor(&request)?;
        actor.require(Permission::IntakeWrite)?;
        let lead = request
            .into_inner()
            .lead
            .ok_or_else(|| salesplan_platform::ApiError::invalid("lead", "required"))?;
        let accepted = intake::accept(&self.bus, &actor, lead, pb::IntakeSource::Grpc).await?;
        Ok(Response::new(pb::AddToSalesPlanResponse {
            intake_id: accepted.intake_id.to_string(),
            accepted_now: accepted.accepted_now,
        }))
    }
}

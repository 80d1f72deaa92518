//! IntakeService: "add to sales plan" and the audience bulk add for gRPC clients.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use salesplan_platform::{ApiError, Permission, auth};
use salesplan_proto::v1::{self as pb, intake_service_server::IntakeService};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::intake::Intake;

#[derive(Clone)]
pub struct IntakeApi {
    intake: Intake,
}

impl IntakeApi {
    pub fn new(intake: Intake) -> Self {
        Self { intake }
    }
}

type AudienceStream = Pin<Box<dyn Stream<Item = Result<pb::AddAudienceResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IntakeService for IntakeApi {
    async fn add_to_sales_plan(
        &self,
        request: Request<pb::AddToSalesPlanRequest>,
    ) -> Result<Response<pb::AddToSalesPlanResponse>, Status> {
        let actor = auth::actor(&request)?;
        actor.require(Permission::IntakeWrite)?;
        let lead = request
            .into_inner()
            .lead
            .ok_or_else(|| ApiError::invalid("lead", "required"))?;
        let accepted = self
            .intake
            .accept(&actor, lead, pb::IntakeSource::Grpc)
            .await?;
        Ok(Response::new(pb::AddToSalesPlanResponse {
            intake_id: accepted.intake_id.to_string(),
            accepted_now: accepted.accepted_now,
        }))
    }

    type AddAudienceStream = AudienceStream;

    async fn add_audience(
        &self,
        request: Request<Streaming<pb::AddAudienceRequest>>,
    ) -> Result<Response<AudienceStream>, Status> {
        let actor = auth::actor(&request)?;
        actor.require(Permission::IntakeWrite)?;
        let mut chunks = request.into_inner();
        let intake = self.intake.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut job = None;
            while let Some(chunk) = chunks.next().await {
                let answer = async {
                    let chunk = chunk?;
                    let job = match &job {
                        Some(job) => job,
                        None => job.insert(intake.audience_job(&actor, &chunk).await?),
                    };
                    let results = intake.accept_chunk(&actor, job, chunk).await?;
                    Ok::<_, Status>(pb::AddAudienceResponse { results })
                }
                .await;
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    // The client left, or the call ends with its error.
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

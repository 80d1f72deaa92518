//! IntakeService: "add to sales plan" and the audience bulk add for gRPC clients.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use salesplan_platform::{ApiError, Permission, auth, consistency, limits::AccountLimiter};
use salesplan_proto::v1::{self as pb, intake_service_server::IntakeService};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::{domain::lead, events::intake::Intake};

/// What one account may hold of AddAudience.
#[derive(Clone)]
pub struct AudienceLimits {
    /// Calls at once and started a second.
    pub calls: Arc<AccountLimiter>,
    /// A call that sends no chunk for this long is ended.
    pub idle_timeout: Duration,
}

#[derive(Clone)]
pub struct IntakeApi {
    intake: Intake,
    audience: AudienceLimits,
}

impl IntakeApi {
    pub fn new(intake: Intake, audience: AudienceLimits) -> Self {
        Self { intake, audience }
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
        let _permit = self.intake.admit_lead(&actor)?;
        let lead = request
            .into_inner()
            .lead
            .ok_or_else(|| ApiError::invalid("lead", "required"))?;
        let accepted = self
            .intake
            .accept(&actor, lead, pb::IntakeSource::Grpc)
            .await?;
        let token = accepted.consistency_token();
        let mut response = Response::new(pb::AddToSalesPlanResponse {
            intake_id: accepted.intake_id.to_string(),
            accepted_now: accepted.accepted_now,
            consistency_token: token.clone(),
        });
        if let Ok(value) = token.parse() {
            response.metadata_mut().insert(consistency::HEADER, value);
        }
        Ok(response)
    }

    type AddAudienceStream = AudienceStream;

    async fn add_audience(
        &self,
        request: Request<Streaming<pb::AddAudienceRequest>>,
    ) -> Result<Response<AudienceStream>, Status> {
        let actor = auth::actor(&request)?;
        actor.require(Permission::IntakeWrite)?;
        // Held for as long as the call lasts.
        let permit = self.audience.calls.admit(&actor.account_id)?;
        let idle_timeout = self.audience.idle_timeout;
        let mut chunks = request.into_inner();
        let intake = self.intake.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // The call's span lasts as long as its stream is handled (its plan checks are in
        // it; its leads are not traced).
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let _permit = permit;
                let mut job = None;
                loop {
                    let chunk = match tokio::time::timeout(idle_timeout, chunks.next()).await {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) => break,
                        Err(_) => {
                            let idle = ApiError::DeadlineExceeded(format!(
                                "no chunk for {} s: the bulk add is ended (what was answered is \
                             stored; send the rest in a new call with the same job id)",
                                idle_timeout.as_secs()
                            ));
                            let _ = tx.send(Err(idle.into())).await;
                            break;
                        }
                    };
                    let answer = async {
                        let chunk = chunk?;
                        let job = match &job {
                            Some(job) => job,
                            None => job.insert(intake.audience_job(&actor, &chunk).await?),
                        };
                        let results = intake.accept_chunk(&actor, job, chunk).await?;
                        Ok::<_, Status>(pb::AddAudienceResponse {
                            consistency_token: lead::chunk_token(&results),
                            results,
                        })
                    }
                    .await;
                    let failed = answer.is_err();
                    if tx.send(answer).await.is_err() || failed {
                        // The client left, or the call ends with its error.
                        break;
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

//! OutboxService: the events the relay parked, for the account's admins and the platform's
//! operators.

use salesplan_platform::{Actor, ApiError, Permission, auth, auth::valid_account_id};
use salesplan_proto::v1::{self as pb, outbox_service_server::OutboxService};
use tonic::{Request, Response, Status};

use super::Api;
use crate::convert;

type Reply<T> = Result<Response<T>, Status>;

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 500;
const MAX_REPLAY: usize = 1_000;

/// Whose parked events the caller may see: every account's (`None`) with
/// `platform:operate`, else its own with `plans:admin`.
fn scope(actor: &Actor) -> Result<Option<String>, ApiError> {
    if actor.has(Permission::PlatformOperate) {
        return Ok(None);
    }
    actor.require(Permission::PlansAdmin)?;
    Ok(Some(actor.account_id.clone()))
}

#[tonic::async_trait]
impl OutboxService for Api {
    async fn list_parked_events(
        &self,
        request: Request<pb::ListParkedEventsRequest>,
    ) -> Reply<pb::ListParkedEventsResponse> {
        let actor = auth::actor(&request)?;
        let _permit = self.reads.admit(&actor.account_id)?;
        let req = request.into_inner();
        let account = match scope(&actor)? {
            Some(own) => Some(own),
            None if req.account_id.is_empty() => None,
            None if valid_account_id(&req.account_id) => Some(req.account_id),
            None => return Err(ApiError::invalid("account_id", "not an account id").into()),
        };
        let limit = match i64::from(req.page_size) {
            n if n <= 0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let rows = self
            .store
            .parked_events(account.as_deref(), req.after_id.max(0), limit)
            .await?;
        let next_after_id = match rows.last() {
            Some(last) if rows.len() as i64 == limit => last.id,
            _ => 0,
        };
        Ok(Response::new(pb::ListParkedEventsResponse {
            events: rows
                .into_iter()
                .map(|r| pb::ParkedEvent {
                    id: r.id,
                    account_id: r.account_id,
                    subject: r.subject,
                    message_id: r.message_id,
                    payload_bytes: r.payload_bytes,
                    reason: r.reason,
                    created_at: Some(convert::timestamp(r.created_at)),
                    parked_at: Some(convert::timestamp(r.parked_at)),
                })
                .collect(),
            next_after_id,
        }))
    }

    async fn replay_parked_events(
        &self,
        request: Request<pb::ReplayParkedEventsRequest>,
    ) -> Reply<pb::ReplayParkedEventsResponse> {
        let actor = auth::actor(&request)?;
        let account = scope(&actor)?;
        let _permit = self.bulk.admit(&actor.account_id)?;
        let ids = request.into_inner().ids;
        if ids.len() > MAX_REPLAY {
            return Err(ApiError::invalid("ids", format!("at most {MAX_REPLAY} per call")).into());
        }
        let replayed = self.store.replay_parked(account.as_deref(), &ids).await?;
        tracing::info!(actor = %actor.user_id, account = %actor.account_id, replayed, "parked events replayed");
        Ok(Response::new(pb::ReplayParkedEventsResponse {
            replayed: replayed as i64,
        }))
    }
}

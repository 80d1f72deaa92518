//! DistributorService: why a deal went to its manager, and the leads refused on their own.

use std::sync::Arc;

use salesplan_platform::{
    AllChecks, ApiError, Permission, auth,
    ids::parse_id,
    limits::{AccountLimiter, ClassLimit},
    privacy::ContactKeys,
};
use salesplan_proto::v1::{self as pb, distributor_service_server::DistributorService};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    store::{After, Rejection, Store},
    upstream::{DealService, LookupError},
};

const DEFAULT_PAGE: i64 = 100;
/// The most keys ForgetContacts takes: three identifiers of each of EraseContact's most
/// deals.
const MAX_FORGOTTEN: usize = 30_000;
/// The most deals ExplainAssignments takes (ExportContact's most deals).
const MAX_EXPLAINED: usize = 1_000;
/// Look-ups at deal-service at once for deals whose decision is not linked yet.
const LOOKUPS_AT_ONCE: usize = 4;
/// The most deals of one ExplainAssignments call looked up at deal-service (deals whose
/// events the distributor has not seen yet, or that are no deals of the account): one
/// call never turns into a thousand calls to deal-service.
const LOOKUPS_AT_MOST: usize = 100;
const MAX_PAGE: i64 = 500;

/// `<unix nanos>.<intake id>` of the last rejection of a page.
fn page_token(last: &Rejection) -> String {
    format!(
        "{}.{}",
        last.rejected_at.unix_timestamp_nanos(),
        last.intake_id
    )
}

fn after(token: &str) -> Result<Option<After>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ApiError::invalid("page_token", "not a token of this list");
    let (nanos, id) = token.split_once('.').ok_or_else(invalid)?;
    let at = nanos
        .parse()
        .ok()
        .and_then(|n| time::OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .ok_or_else(invalid)?;
    let id = uuid::Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok(Some((at, id)))
}

fn rejection_to(r: Rejection) -> pb::IntakeRejection {
    pb::IntakeRejection {
        intake_id: r.intake_id.to_string(),
        plan_id: r.plan_id.to_string(),
        source: r.source,
        tunnel_id: r.tunnel_id,
        block_id: r.block_id,
        run_id: r.run_id,
        code: r.code,
        reason: r.reason,
        rejected_at: Some(salesplan_proto::time::timestamp(r.rejected_at)),
    }
}

#[derive(Clone)]
pub struct Explain {
    store: Store,
    upstream: DealService,
    limiter: Arc<AccountLimiter>,
}

impl Explain {
    pub fn new(
        store: Store,
        upstream: DealService,
        limit: ClassLimit,
        metrics: &salesplan_platform::metrics::Metrics,
    ) -> Self {
        Self {
            store,
            upstream,
            limiter: AccountLimiter::new("distributor lookups", limit, metrics),
        }
    }

    /// The decision that made the deal. Decisions are linked to their deals when the deal
    /// events arrive; a deal visible before that is found through its idempotency key (the
    /// decision was committed before the deal was asked for).
    async fn assignment(
        &self,
        account_id: &str,
        deal_id: Uuid,
    ) -> Result<Option<pb::Assignment>, ApiError> {
        if let Some(stored) = self.store.assignment_of_deal(account_id, deal_id).await? {
            return explained(&stored, deal_id).map(Some);
        }
        let (plan_id, key) = match self.upstream.deal_key(account_id, deal_id).await {
            Ok(found) => found,
            Err(LookupError::NotFound(_)) => return Ok(None),
            Err(LookupError::Unavailable(reason)) => return Err(ApiError::Unavailable(reason)),
        };
        let Ok(intake_id) = Uuid::parse_str(&key) else {
            return Ok(None);
        };
        self.store
            .assignment_of_lead(account_id, plan_id, intake_id)
            .await?
            .map(|stored| explained(&stored, deal_id))
            .transpose()
    }
}

impl Explain {
    /// The decisions of `deal_ids`, in their order. Most are linked to their deals; a deal
    /// the distributor has seen without one has none (created directly); the rest (deal
    /// events not taken yet) are looked up, a few at once, at most [`LOOKUPS_AT_MOST`]:
    /// with more, the answer is UNAVAILABLE (try again once the distributor caught up),
    /// never a silent gap.
    async fn assignments(
        &self,
        account_id: &str,
        deal_ids: &[Uuid],
    ) -> Result<Vec<pb::Assignment>, ApiError> {
        use futures::{StreamExt as _, TryStreamExt as _};
        // Seen first: a deal is linked in the same transaction that makes it seen, so a
        // deal seen here is linked in the later read if it has a decision at all.
        let seen = self.store.seen_deals(account_id, deal_ids).await?;
        let linked = self
            .store
            .assignments_of_deals(account_id, deal_ids)
            .await?;
        let unseen = deal_ids
            .iter()
            .filter(|id| !linked.contains_key(id) && !seen.contains(id))
            .count();
        if unseen > LOOKUPS_AT_MOST {
            return Err(ApiError::Unavailable(format!(
                "{unseen} of the deals are not known to the distributor yet (or are no deals \
                 of the account); at most {LOOKUPS_AT_MOST} such are looked up at once"
            )));
        }
        let (linked, seen) = (&linked, &seen);
        let found: Vec<Option<pb::Assignment>> = futures::stream::iter(deal_ids.iter().copied())
            .map(|deal_id| async move {
                match linked.get(&deal_id) {
                    Some(stored) => explained(stored, deal_id).map(Some),
                    None if seen.contains(&deal_id) => Ok(None),
                    None => self.assignment(account_id, deal_id).await,
                }
            })
            .buffered(LOOKUPS_AT_ONCE)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }
}

/// The request's deal ids: 1 to [`MAX_EXPLAINED`], each an id, every violation at once;
/// a repeated id once.
fn deal_ids(values: &[String]) -> Result<Vec<Uuid>, ApiError> {
    if values.is_empty() || values.len() > MAX_EXPLAINED {
        return Err(ApiError::invalid(
            "deal_ids",
            format!("1 to {MAX_EXPLAINED} deal ids"),
        ));
    }
    let mut checks = salesplan_platform::error::Checks::new();
    let mut ids = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        if let Some(id) = checks.check(parse_id(&format!("deal_ids[{i}]"), value))
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    checks.finish()?;
    Ok(ids)
}

/// A stored explanation, decoded, as the explanation of `deal_id`.
fn explained(stored: &[u8], deal_id: Uuid) -> Result<pb::Assignment, ApiError> {
    use prost::Message as _;
    let mut assignment = pb::Assignment::decode(stored)
        .map_err(|err| ApiError::internal(format!("a stored decision cannot be decoded: {err}")))?;
    assignment.deal_id = deal_id.to_string();
    Ok(assignment)
}

#[tonic::async_trait]
impl DistributorService for Explain {
    async fn explain_assignment(
        &self,
        request: Request<pb::ExplainAssignmentRequest>,
    ) -> Result<Response<pb::ExplainAssignmentResponse>, Status> {
        let actor = auth::reader(&request, Permission::DealsRead)?;
        let _permit = self.limiter.admit(&actor.account_id)?;
        let deal_id = parse_id("deal_id", &request.get_ref().deal_id)?;
        let assignment = self
            .assignment(&actor.account_id, deal_id)
            .await?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "assignment of deal {deal_id} (deals created directly have none)"
                ))
            })?;
        let earlier = self
            .store
            .earlier_assignments_of_deal(&actor.account_id, deal_id)
            .await
            .map_err(ApiError::from)?;
        let earlier = earlier
            .iter()
            .map(|stored| explained(stored, deal_id))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ExplainAssignmentResponse {
            assignment: Some(assignment),
            earlier,
        }))
    }

    async fn explain_assignments(
        &self,
        request: Request<pb::ExplainAssignmentsRequest>,
    ) -> Result<Response<pb::ExplainAssignmentsResponse>, Status> {
        let actor = auth::reader(&request, Permission::DealsRead)?;
        let _permit = self.limiter.admit(&actor.account_id)?;
        let deal_ids = deal_ids(&request.get_ref().deal_ids)?;
        let assignments = self.assignments(&actor.account_id, &deal_ids).await?;
        Ok(Response::new(pb::ExplainAssignmentsResponse {
            assignments,
        }))
    }

    async fn forget_contacts(
        &self,
        request: Request<pb::ForgetContactsRequest>,
    ) -> Result<Response<pb::ForgetContactsResponse>, Status> {
        let actor = auth::actor(&request)?;
        actor.require(Permission::ContactsErase)?;
        let _permit = self.limiter.admit(&actor.account_id)?;
        let keys = &request.get_ref().contact_keys;
        if keys.is_empty() || keys.len() > MAX_FORGOTTEN {
            return Err(ApiError::invalid(
                "contact_keys",
                format!("1 to {MAX_FORGOTTEN} keyed contact keys"),
            )
            .into());
        }
        salesplan_platform::error::every(keys.iter().enumerate().map(|(i, key)| {
            if ContactKeys::is_keyed(key) && key.len() <= 100 {
                Ok(())
            } else {
                Err(ApiError::invalid(
                    format!("contact_keys[{i}]"),
                    "not a keyed contact key",
                ))
            }
        }))?;
        let forgotten = self
            .store
            .forget_contacts(&actor.account_id, keys)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(actor = %actor.user_id, forgotten, "contacts forgotten");
        Ok(Response::new(pb::ForgetContactsResponse {
            forgotten: forgotten as i64,
        }))
    }

    async fn list_intake_rejections(
        &self,
        request: Request<pb::ListIntakeRejectionsRequest>,
    ) -> Result<Response<pb::ListIntakeRejectionsResponse>, Status> {
        let actor = auth::actor(&request)?;
        let _permit = self.limiter.admit(&actor.account_id)?;
        if !actor.has(Permission::IntakeWrite) {
            actor.require(Permission::PlansAdmin)?;
        }
        let req = request.into_inner();
        let (plan_id, after) = (
            (!req.plan_id.is_empty())
                .then(|| parse_id("plan_id", &req.plan_id))
                .transpose(),
            after(&req.page_token),
        )
            .all()?;
        let limit = match i64::from(req.page_size) {
            n if n <= 0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let rows = self
            .store
            .rejections(&actor.account_id, plan_id, after, limit)
            .await
            .map_err(ApiError::from)?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() as i64 == limit => page_token(last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListIntakeRejectionsResponse {
            rejections: rows.into_iter().map(rejection_to).collect(),
            next_page_token,
        }))
    }
}

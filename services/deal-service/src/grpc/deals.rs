//! DealService.

use salesplan_platform::{
    Actor, AllChecks, ApiError, Permission, Reason, auth, consistency::Wanted, ids::parse_id,
    validate,
};
use salesplan_proto::v1::{self as pb, deal_service_server::DealService};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::Api;
use crate::{
    convert,
    domain::{
        DomainError,
        deal::{Change, Deal, DealEdit, NewDeal, may_assign, may_change},
        plan::Plan,
        query::{AfterKey, PageToken, Sort, bounded_page_size, page_size},
    },
    store::{Board, BulkOutcome, BulkTarget, Page, queries_sort_value},
};

type Reply<T> = Result<Response<T>, Status>;

/// Failures listed in a bulk result at most (the count is always complete).
const MAX_LISTED_FAILURES: usize = 1_000;
const DEFAULT_CARDS: usize = 20;
const MAX_CREATE_BATCH: usize = 1_000;
const MAX_CARDS: usize = 100;
/// History entries per page: a deal moved back and forth for years has many.
const HISTORY_PAGE: usize = 100;
const MAX_HISTORY_PAGE: usize = 500;

/// The deals a bulk request names: by ids or by filter (the two oneofs carry the same).
fn bulk_target(
    ids: Option<pb::DealIds>,
    filter: Option<pb::DealFilter>,
) -> Result<BulkTarget, ApiError> {
    match (ids, filter) {
        (Some(ids), _) if ids.ids.len() > crate::store::MAX_BULK_DEALS => Err(ApiError::invalid(
            "deal_ids.ids",
            format!("at most {} deals per call", crate::store::MAX_BULK_DEALS),
        )),
        (Some(ids), _) => Ok(BulkTarget::Ids(convert::ids("deal_ids.ids", &ids.ids)?)),
        (None, Some(filter)) => Ok(BulkTarget::Query(Box::new(convert::query_from(Some(
            filter,
        ))?))),
        (None, None) => Err(ApiError::invalid("target", "give deal_ids or filter")),
    }
}

fn bulk_result(outcome: BulkOutcome) -> pb::BulkResult {
    pb::BulkResult {
        changed: outcome.changed,
        unchanged: outcome.unchanged,
        failures: outcome
            .failures
            .into_iter()
            .take(MAX_LISTED_FAILURES)
            .map(|(id, reason)| pb::BulkFailure {
                deal_id: id.to_string(),
                reason,
            })
            .collect(),
    }
}

/// Bulk operations need `deals:bulk_edit`; without `deals:edit_all` they touch only the
/// caller's own deals.
fn bulk_actor<T>(request: &Request<T>) -> Result<(Actor, Option<String>), ApiError> {
    let actor = auth::actor(request)?;
    actor.require(Permission::DealsBulkEdit)?;
    let only = (!actor.has(Permission::DealsEditAll)).then(|| actor.user_id.clone());
    Ok((actor, only))
}

fn page_token(sort: Sort, filter: u64, page: &Page) -> String {
    match page.deals.last() {
        Some(last) if page.more => PageToken {
            sort,
            filter,
            value: queries_sort_value(sort.field, last),
            id: last.id,
        }
        .encode(),
        _ => String::new(),
    }
}

impl Api {
    /// A change of one deal (`id`, expected `version`) by `actor`, who `may` change it: a
    /// deal `already` as asked is answered as it is; otherwise `change` makes it.
    async fn change_as(
        &self,
        actor: &Actor,
        (deal_id, version): (Uuid, Option<i64>),
        may: impl Fn(&Deal) -> bool,
        already: impl FnOnce(&Deal) -> bool,
        change: impl FnOnce(&Deal, &Plan, OffsetDateTime) -> Result<(Deal, Change), DomainError>,
    ) -> Result<Deal, ApiError> {
        self.store
            .change_deal(
                &actor.account_id,
                &actor.user_id,
                deal_id,
                version,
                |deal| may(deal) && already(deal),
                |deal, plan, now| {
                    if !may(deal) {
                        return Err(DomainError::NotYours);
                    }
                    change(deal, plan, now)
                },
            )
            .await
            .map_err(ApiError::from)
    }
}

#[tonic::async_trait]
impl DealService for Api {
    async fn create_deal(
        &self,
        request: Request<pb::CreateDealRequest>,
    ) -> Reply<pb::CreateDealResponse> {
        let actor = auth::actor(&request)?;
        let input = intake_only(&actor, NewDeal::try_from(request.into_inner())?);
        // Anyone of the account may add a deal; giving it to someone else (or leaving it to
        // the distributor, which gives it to someone) is editing another manager's deals.
        if gives_away(&actor, &input) {
            actor.require(Permission::DealsEditAll)?;
        }
        let (deal, created) = self
            .store
            .create_deal(&actor.account_id, &actor.user_id, input)
            .await?;
        Ok(Response::new(pb::CreateDealResponse {
            deal: Some(shown_to(&actor, &deal, created)),
            created,
        }))
    }

    async fn create_deals(
        &self,
        request: Request<pb::CreateDealsRequest>,
    ) -> Reply<pb::CreateDealsResponse> {
        let actor = auth::actor(&request)?;
        // The distributor's calls are bounded by the intake lanes (per account, in turn).
        let _permit = (!actor.has(Permission::PlatformIntake))
            .then(|| self.creates.admit(&actor.account_id))
            .transpose()?;
        let requests = request.into_inner().deals;
        if requests.len() > MAX_CREATE_BATCH {
            return Err(
                ApiError::invalid("deals", format!("at most {MAX_CREATE_BATCH} per call")).into(),
            );
        }
        let inputs: Vec<Result<NewDeal, ApiError>> = requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                NewDeal::try_from(r)
                    .map(|d| intake_only(&actor, d))
                    .map_err(|e| e.within(&format!("deals[{i}]")))
            })
            .collect();
        if inputs.iter().flatten().any(|d| gives_away(&actor, d)) {
            actor.require(Permission::DealsEditAll)?;
        }
        let valid: Vec<NewDeal> = inputs.iter().flatten().cloned().collect();
        let mut created = self
            .store
            .create_deals(&actor.account_id, &actor.user_id, valid)
            .await?
            .into_iter();
        let results = inputs
            .into_iter()
            .map(|input| {
                let outcome = match input {
                    Ok(_) => match created.next() {
                        Some(result) => result.map_err(ApiError::from),
                        None => Err(ApiError::internal("no result for the deal")),
                    },
                    Err(err) => Err(err),
                };
                match outcome {
                    Ok((deal, created)) => pb::CreateDealResult {
                        deal: Some(shown_to(&actor, &deal, created)),
                        created,
                        code: 0,
                        message: String::new(),
                    },
                    Err(err) => {
                        let status = Status::from(err);
                        pb::CreateDealResult {
                            deal: None,
                            created: false,
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                        }
                    }
                }
            })
            .collect();
        Ok(Response::new(pb::CreateDealsResponse { results }))
    }

    async fn get_deal(&self, request: Request<pb::GetDealRequest>) -> Reply<pb::GetDealResponse> {
        let actor = auth::actor_for(&request, Permission::PlatformLookup)?;
        // The listener asks whether a lead is a deal already (`platform:lookup`, by its
        // idempotency key): it learns that, and the deal's id, and nothing of the deal.
        let lookup_only = !actor.has(Permission::DealsRead)
            && actor.has(Permission::PlatformLookup)
            && request.get_ref().deal_id.is_empty();
        if !lookup_only {
            actor.require(Permission::DealsRead)?;
        }
        let req = request.into_inner();
        let deal = match (req.deal_id.as_str(), req.idempotency_key.as_str()) {
            ("", "") => return Err(ApiError::invalid("deal_id", "required").into()),
            ("", key) => {
                let key = validate::required_text("idempotency_key", key, convert::MAX_KEY_CHARS)?;
                self.store.deal_by_key(&actor.account_id, &key).await?
            }
            (id, "") => {
                let deal_id = parse_id("deal_id", id)?;
                self.store.deal(&actor.account_id, deal_id).await?
            }
            _ => {
                return Err(ApiError::invalid(
                    "idempotency_key",
                    "give deal_id or idempotency_key, not both",
                )
                .into());
            }
        };
        let deal = if lookup_only {
            pb::Deal {
                id: deal.id.to_string(),
                ..Default::default()
            }
        } else {
            (&deal).into()
        };
        Ok(Response::new(pb::GetDealResponse { deal: Some(deal) }))
    }

    async fn update_deal(
        &self,
        request: Request<pb::UpdateDealRequest>,
    ) -> Reply<pb::UpdateDealResponse> {
        let actor = auth::actor(&request)?;
        let req = request.into_inner();
        let (deal_id, version, edit) = (
            parse_id("deal_id", &req.deal_id),
            convert::expected_version(req.expected_version),
            DealEdit::try_from(req),
        )
            .all()?;
        let wanted = edit.clone();
        let edit_all = actor.has(Permission::DealsEditAll);
        let deal = self
            .change_as(
                &actor,
                (deal_id, Some(version)),
                |deal| may_change(&actor.user_id, edit_all, deal),
                |deal| deal.has(&wanted),
                |deal, _, now| deal.edit(edit, now),
            )
            .await?;
        Ok(Response::new(pb::UpdateDealResponse {
            deal: Some((&deal).into()),
        }))
    }

    async fn move_deal(
        &self,
        request: Request<pb::MoveDealRequest>,
    ) -> Reply<pb::MoveDealResponse> {
        let actor = auth::actor(&request)?;
        let req = request.into_inner();
        let (deal_id, version, stage_id, reason) = (
            parse_id("deal_id", &req.deal_id),
            convert::expected_version(req.expected_version),
            parse_id("stage_id", &req.stage_id),
            convert::optional_id("loss_reason_id", req.loss_reason_id.as_deref()),
        )
            .all()?;
        let edit_all = actor.has(Permission::DealsEditAll);
        let deal = self
            .change_as(
                &actor,
                (deal_id, Some(version)),
                |deal| may_change(&actor.user_id, edit_all, deal),
                |deal| deal.is_at(stage_id, reason),
                |deal, plan, now| deal.move_to(plan, stage_id, reason, now),
            )
            .await?;
        Ok(Response::new(pb::MoveDealResponse {
            deal: Some((&deal).into()),
        }))
    }

    async fn assign_deal(
        &self,
        request: Request<pb::AssignDealRequest>,
    ) -> Reply<pb::AssignDealResponse> {
        let actor = auth::actor(&request)?;
        let req = request.into_inner();
        let (deal_id, version, manager) = (
            parse_id("deal_id", &req.deal_id),
            convert::expected_version(req.expected_version),
            convert::optional_manager("manager_id", req.manager_id.as_deref()),
        )
            .all()?;
        // The distributor placing a waiting deal: the manager must still be available (its
        // copy of availability may be a moment behind a pause answered OK here; refused,
        // the deal waits again).
        if let Some(m) = manager
            .as_deref()
            .filter(|_| actor.has(Permission::PlatformIntake))
        {
            let away = self.store.manager(&actor.account_id, m).await?.availability;
            if let Some(why) = away.away_at(crate::store::now()) {
                return Err(ApiError::precondition(
                    Reason::ManagerUnavailable,
                    format!("manager {m} is unavailable: {}", why.as_str()),
                )
                .into());
            }
        }
        let asked = manager.clone();
        let edit_all = actor.has(Permission::DealsEditAll);
        let by_distributor = actor.has(Permission::PlatformIntake);
        let deal = match reassignment(&actor, &req, manager.as_deref())? {
            // The distributor's reassignment after a missed response deadline: at the
            // version it saw or, naming the missed assignment, while the deal is in it.
            Some((note, missed)) => {
                let escalate = req.escalate;
                let version = if missed.is_some() {
                    None
                } else {
                    Some(version)
                };
                self.change_as(
                    &actor,
                    (deal_id, version),
                    |_| true,
                    |deal| {
                        if escalate {
                            deal.is_escalated()
                        } else {
                            deal.is_with(asked.as_deref())
                        }
                    },
                    |deal, plan, now| deal.reassign(plan, (manager, missed), note, now),
                )
                .await?
            }
            None => {
                self.change_as(
                    &actor,
                    (deal_id, Some(version)),
                    |deal| may_assign(&actor.user_id, edit_all, deal, asked.as_deref()),
                    |deal| deal.is_with(asked.as_deref()),
                    |deal, plan, now| {
                        let (deal, change) = deal.assign(plan, manager, false, now)?;
                        Ok((deal.under_deadline(plan, by_distributor), change))
                    },
                )
                .await?
            }
        };
        Ok(Response::new(pb::AssignDealResponse {
            deal: Some((&deal).into()),
        }))
    }

    async fn accept_deal(
        &self,
        request: Request<pb::AcceptDealRequest>,
    ) -> Reply<pb::AcceptDealResponse> {
        let actor = auth::actor(&request)?;
        let req = request.into_inner();
        let (deal_id, version) = (
            parse_id("deal_id", &req.deal_id),
            convert::any_or_expected_version(req.expected_version),
        )
            .all()?;
        let me = actor.user_id.as_str();
        // Not through `change_as`: no permission accepts for the manager.
        let deal = self
            .store
            .change_deal(
                &actor.account_id,
                me,
                deal_id,
                version,
                |deal| deal.manager_id.as_deref() == Some(me) && deal.is_accepted(),
                |deal, _, now| deal.accept(me, now),
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::AcceptDealResponse {
            deal: Some((&deal).into()),
        }))
    }

    async fn reopen_deal(
        &self,
        request: Request<pb::ReopenDealRequest>,
    ) -> Reply<pb::ReopenDealResponse> {
        let actor = auth::actor(&request)?;
        actor.require(Permission::DealsEditAll)?;
        actor.require(Permission::DealsBulkEdit)?;
        let req = request.into_inner();
        let (deal_id, version) = (
            parse_id("deal_id", &req.deal_id),
            convert::expected_version(req.expected_version),
        )
            .all()?;
        let deal = self
            .change_as(
                &actor,
                (deal_id, Some(version)),
                // Reopening needs both permissions, checked above, not the deal's manager.
                |_| true,
                // Open already (a retry whose answer was lost, or reopened by someone
                // else): what the caller asked for holds.
                |deal| !deal.is_closed(),
                |deal, plan, now| deal.reopen(plan, now),
            )
            .await?;
        tracing::info!(deal_id = %deal.id, actor = %actor.user_id, "deal reopened");
        Ok(Response::new(pb::ReopenDealResponse {
            deal: Some((&deal).into()),
        }))
    }

    async fn transfer_deals(
        &self,
        request: Request<pb::TransferDealsRequest>,
    ) -> Reply<pb::BulkResult> {
        let (actor, only) = bulk_actor(&request)?;
        let _permit = self.bulk.admit(&actor.account_id)?;
        let req = request.into_inner();
        let (from, to, mut query) = (
            convert::manager_id("from_manager_id", &req.from_manager_id),
            convert::manager_id("to_manager_id", &req.to_manager_id),
            convert::query_from(req.filter),
        )
            .all()?;
        if from == to {
            return Err(
                ApiError::invalid("to_manager_id", "is the same as from_manager_id").into(),
            );
        }
        query.managers = vec![from];
        query.unassigned = false;
        let outcome = self
            .store
            .bulk_change(
                &actor.account_id,
                &actor.user_id,
                BulkTarget::Query(Box::new(query)),
                only.as_deref(),
                |deal| deal.is_with(Some(&to)),
                |deal, plan, now| deal.assign(plan, Some(to.clone()), true, now),
            )
            .await?;
        Ok(Response::new(bulk_result(outcome)))
    }

    async fn bulk_move_deals(
        &self,
        request: Request<pb::BulkMoveDealsRequest>,
    ) -> Reply<pb::BulkResult> {
        let (actor, only) = bulk_actor(&request)?;
        let _permit = self.bulk.admit(&actor.account_id)?;
        let req = request.into_inner();
        let target = {
            use pb::bulk_move_deals_request::Target;
            match req.target {
                Some(Target::DealIds(ids)) => bulk_target(Some(ids), None),
                Some(Target::Filter(filter)) => bulk_target(None, Some(filter)),
                None => bulk_target(None, None),
            }
        };
        let (stage_id, reason, target) = (
            parse_id("stage_id", &req.stage_id),
            convert::optional_id("loss_reason_id", req.loss_reason_id.as_deref()),
            target,
        )
            .all()?;
        let outcome = self
            .store
            .bulk_change(
                &actor.account_id,
                &actor.user_id,
                target,
                only.as_deref(),
                |deal| deal.is_at(stage_id, reason),
                |deal, plan, now| deal.move_to(plan, stage_id, reason, now),
            )
            .await?;
        Ok(Response::new(bulk_result(outcome)))
    }

    async fn bulk_assign_deals(
        &self,
        request: Request<pb::BulkAssignDealsRequest>,
    ) -> Reply<pb::BulkResult> {
        let (actor, only) = bulk_actor(&request)?;
        let _permit = self.bulk.admit(&actor.account_id)?;
        let req = request.into_inner();
        let target = {
            use pb::bulk_assign_deals_request::Target;
            match req.target {
                Some(Target::DealIds(ids)) => bulk_target(Some(ids), None),
                Some(Target::Filter(filter)) => bulk_target(None, Some(filter)),
                None => bulk_target(None, None),
            }
        };
        let (manager, target) = (
            convert::optional_manager("manager_id", req.manager_id.as_deref()),
            target,
        )
            .all()?;
        let outcome = self
            .store
            .bulk_change(
                &actor.account_id,
                &actor.user_id,
                target,
                only.as_deref(),
                |deal| deal.is_with(manager.as_deref()),
                |deal, plan, now| deal.assign(plan, manager.clone(), false, now),
            )
            .await?;
        Ok(Response::new(bulk_result(outcome)))
    }

    async fn list_deals(
        &self,
        request: Request<pb::ListDealsRequest>,
    ) -> Reply<pb::ListDealsResponse> {
        let actor = auth::reader(&request, Permission::DealsRead)?;
        let _permit = self.reads.admit(&actor.account_id)?;
        let req = request.into_inner();
        let fingerprint = convert::filter_fingerprint(&req.filter);
        let sort = convert::sort_from(req.sort);
        // A page token is read with its sort: with a bad sort, only the sort is reported.
        let after = match &sort {
            Ok(sort) if !req.page_token.is_empty() => {
                PageToken::decode(&req.page_token, *sort, fingerprint)
                    .map(Some)
                    .map_err(ApiError::from)
            }
            _ => Ok(None),
        };
        let (query, sort, after, wanted) = (
            convert::query_from(req.filter),
            sort,
            after,
            Wanted::parse("min_consistency_token", &req.min_consistency_token),
        )
            .all()?;
        let limit = page_size(req.page_size);
        self.readable(&actor.account_id, wanted).await?;
        let (page, totals) = self
            .store
            .list_with_totals(&actor.account_id, &query, sort, after.as_ref(), limit)
            .await?;
        Ok(Response::new(pb::ListDealsResponse {
            next_page_token: page_token(sort, fingerprint, &page),
            deals: page.deals.iter().map(Into::into).collect(),
            total_count: totals.count,
            total_amounts: convert::money_totals(&totals.amounts),
        }))
    }

    async fn get_board(
        &self,
        request: Request<pb::GetBoardRequest>,
    ) -> Reply<pb::GetBoardResponse> {
        let actor = auth::reader(&request, Permission::DealsRead)?;
        let _permit = self.reads.admit(&actor.account_id)?;
        let req = request.into_inner();
        let filter = req.filter.unwrap_or_default();
        let (plan_id, mut query, sort, wanted) = (
            parse_id("plan_id", &req.plan_id),
            convert::query_from(Some(filter.clone())),
            convert::sort_from(req.sort),
            Wanted::parse("min_consistency_token", &req.min_consistency_token),
        )
            .all()?;
        if query.plan_id.is_some_and(|p| p != plan_id) {
            return Err(ApiError::invalid("filter.plan_id", "must be the board's plan_id").into());
        }
        query.plan_id = Some(plan_id);
        let cards = cards_per_stage(req.cards_per_stage);
        self.readable(&actor.account_id, wanted).await?;
        let plan = self.store.plan(&actor.account_id, plan_id).await?;
        let stages: Vec<Uuid> = plan
            .stages
            .iter()
            .map(|s| s.id)
            .filter(|id| query.stage_ids.is_empty() || query.stage_ids.contains(id))
            .collect();
        let board = self
            .store
            .board(&actor.account_id, &query, &stages, sort, cards)
            .await?;
        Ok(Response::new(board_response(&plan, &board, &filter, sort)))
    }

    type WatchDealsStream = super::watch::WatchStream;

    async fn watch_deals(
        &self,
        request: Request<pb::WatchDealsRequest>,
    ) -> Reply<Self::WatchDealsStream> {
        self.watch(request).await
    }

    async fn get_deal_history(
        &self,
        request: Request<pb::GetDealHistoryRequest>,
    ) -> Reply<pb::GetDealHistoryResponse> {
        let actor = auth::reader(&request, Permission::DealsRead)?;
        let _permit = self.reads.admit(&actor.account_id)?;
        let req = request.get_ref();
        let (deal_id, after) = (
            parse_id("deal_id", &req.deal_id),
            AfterKey::decode::<i64>(&req.page_token).map_err(ApiError::from),
        )
            .all()?;
        let limit = bounded_page_size(req.page_size, HISTORY_PAGE, MAX_HISTORY_PAGE);
        let (rows, more) = self
            .store
            .history(&actor.account_id, deal_id, after, limit)
            .await?;
        let next_page_token = match rows.last() {
            Some(last) if more => AfterKey::encode(&last.id.to_string()),
            _ => String::new(),
        };
        let entries = rows.into_iter().map(history_entry).collect();
        Ok(Response::new(pb::GetDealHistoryResponse {
            entries,
            next_page_token,
        }))
    }
}

/// The most characters of a reassignment's note.
const MAX_NOTE_CHARS: usize = 500;

/// The note of an AssignDeal that is the distributor's reassignment after a missed
/// response deadline (`note` or `escalate` set), checked; `None` for a plain assignment.
/// Only the platform's distributor reassigns so: a person's assignment is their decision
/// and needs no note.
/// A board's cards per stage as asked: 0 or less the default, at most [`MAX_CARDS`].
pub(super) fn cards_per_stage(asked: i32) -> usize {
    match asked {
        n if n <= 0 => DEFAULT_CARDS,
        n => (n as usize).min(MAX_CARDS),
    }
}

/// A board as GetBoard answers it: per stage of `plan` in `board`, its totals, first
/// cards and the page token ListDeals takes (with `filter` narrowed to the stage) for more.
pub(super) fn board_response(
    plan: &Plan,
    board: &Board,
    filter: &pb::DealFilter,
    sort: Sort,
) -> pb::GetBoardResponse {
    let columns = board
        .columns
        .iter()
        .filter_map(|column| {
            let stage = plan.stage(column.stage_id)?;
            // The filter ListDeals gets to load more of this column.
            let column_filter = pb::DealFilter {
                plan_id: plan.id.to_string(),
                stage_ids: vec![stage.id.to_string()],
                ..filter.clone()
            };
            let fingerprint = convert::filter_fingerprint(&Some(column_filter));
            Some(pb::BoardColumn {
                stage: Some(convert::stage_to_proto(stage)),
                count: column.totals.count,
                amounts: convert::money_totals(&column.totals.amounts),
                deals: column.cards.deals.iter().map(Into::into).collect(),
                next_page_token: page_token(sort, fingerprint, &column.cards),
            })
        })
        .collect();
    pb::GetBoardResponse {
        plan: Some(plan.into()),
        columns,
        total_count: board.totals.count,
        total_amounts: convert::money_totals(&board.totals.amounts),
    }
}

/// The distributor's reassignment fields of `req` (its note, and the assignment that
/// missed its deadline), checked; none for a person's assignment.
fn reassignment(
    actor: &Actor,
    req: &pb::AssignDealRequest,
    manager: Option<&str>,
) -> Result<Option<(String, Option<OffsetDateTime>)>, ApiError> {
    let (note, escalate) = (req.note.as_str(), req.escalate);
    if note.is_empty() && !escalate {
        if req.missed_assigned_at.is_some() {
            return Err(ApiError::invalid(
                "missed_assigned_at",
                "only with the distributor's note",
            ));
        }
        return Ok(None);
    }
    let mut checks = salesplan_platform::Checks::new();
    if !actor.has(Permission::PlatformIntake) {
        checks.note(ApiError::invalid(
            if escalate { "escalate" } else { "note" },
            "only the platform's distributor reassigns with a note or escalates",
        ));
    }
    if escalate && manager.is_some() {
        checks.note(ApiError::invalid(
            "escalate",
            "an escalated deal waits without a manager: leave manager_id out",
        ));
    }
    let note = checks.take(validate::required_text("note", note, MAX_NOTE_CHARS));
    let missed = req.missed_assigned_at.as_ref().and_then(|at| {
        checks.check(
            salesplan_proto::time::time_of(at)
                .ok_or_else(|| ApiError::invalid("missed_assigned_at", "not a valid time")),
        )
    });
    checks.finish()?;
    Ok(Some((note, missed)))
}

/// A history row as the API gives it.
pub(super) fn history_entry(row: crate::store::HistoryRow) -> pb::HistoryEntry {
    pb::HistoryEntry {
        id: row.id,
        at: Some(convert::timestamp(row.at)),
        actor_id: row.actor_id,
        action: history_action(&row.action) as i32,
        from: row.from.unwrap_or_default(),
        to: row.to.unwrap_or_default(),
        loss_reason_id: row.loss_reason_id.map(|id| id.to_string()),
        status: match row.status.as_deref() {
            Some("open") => pb::DealStatus::Open,
            Some("won") => pb::DealStatus::Won,
            Some("lost") => pb::DealStatus::Lost,
            _ => pb::DealStatus::Unspecified,
        } as i32,
        note: row.note.unwrap_or_default(),
    }
}

fn history_action(action: &str) -> pb::HistoryAction {
    match action {
        "created" => pb::HistoryAction::Created,
        "moved" => pb::HistoryAction::Moved,
        "assigned" => pb::HistoryAction::Assigned,
        "transferred" => pb::HistoryAction::Transferred,
        "closed" => pb::HistoryAction::Closed,
        "reopened" => pb::HistoryAction::Reopened,
        "edited" => pb::HistoryAction::Edited,
        "erased" => pb::HistoryAction::Erased,
        "accepted" => pb::HistoryAction::Accepted,
        _ => pb::HistoryAction::Unspecified,
    }
}

/// Whether the new deal goes to someone other than its creator: to another manager, or to
/// whoever the distributor picks.
fn gives_away(actor: &Actor, deal: &NewDeal) -> bool {
    deal.wait_for_manager
        || deal
            .manager_id
            .as_deref()
            .is_some_and(|m| m != actor.user_id)
}

/// `accepted_at_plan_version` and `lead_received_at` are the platform's intake's word (a
/// lead it accepted before the plan was archived, or before its person was erased); from
/// anyone else they are ignored, so no client opens an archived plan by claiming it. Its
/// manager, given, is the distributor's assignment (under the plan's response deadline).
fn intake_only(actor: &salesplan_platform::Actor, mut deal: NewDeal) -> NewDeal {
    deal.by_distributor = actor.has(Permission::PlatformIntake);
    if !deal.by_distributor {
        deal.accepted_at_plan_version = None;
        deal.lead_received_at = None;
    }
    deal
}

/// The deal a create answers with: the one just created, or one a repeat of its key found,
/// whole to a caller who may read it (or whose deal it is); else its id alone, so a key
/// (an intake id a funnel can work out) is no way around `deals:read`.
fn shown_to(actor: &Actor, deal: &Deal, created: bool) -> pb::Deal {
    if created
        || actor.has(Permission::DealsRead)
        || deal.manager_id.as_deref() == Some(actor.user_id.as_str())
    {
        deal.into()
    } else {
        pb::Deal {
            id: deal.id.to_string(),
            ..Default::default()
        }
    }
}

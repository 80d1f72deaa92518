//! ReportService: reports answered from the read model (read by `store::reports`).

use std::{collections::HashMap, sync::Arc, time::Duration};

use salesplan_platform::{
    AllChecks, ApiError, Checks, Permission, auth,
    consistency::Wanted,
    every,
    ids::parse_id,
    limits::{AccountLimiter, ClassLimit},
    validate,
};
use salesplan_proto::v1::{self as pb, report_service_server::ReportService};
use sqlx::PgPool;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

mod freshness;

use crate::{
    domain::{
        period::{Period, Scope},
        progress::Horizons,
        report::{self, GroupBy, Key, percent},
    },
    store::{self, reports},
};

#[derive(Clone)]
pub struct Reports {
    pool: PgPool,
    limiter: Arc<AccountLimiter>,
    /// deal-service's horizons, and how long a report given a consistency token waits for
    /// the read model to include it.
    horizons: Arc<Horizons>,
    wait: Duration,
}

impl Reports {
    pub fn new(
        pool: PgPool,
        (limit, metrics): (ClassLimit, &salesplan_platform::metrics::Metrics),
        (horizons, wait): (Arc<Horizons>, Duration),
    ) -> Self {
        Self {
            pool,
            limiter: AccountLimiter::new("reports", limit, metrics),
            horizons,
            wait,
        }
    }

    /// Waits until the read model includes the request's token (if any): what the answer
    /// then reflects.
    async fn fresh_enough(
        &self,
        account_id: &str,
        wanted: Option<Wanted>,
    ) -> Result<pb::Freshness, ApiError> {
        Ok(freshness::to_proto(
            freshness::at_least(&self.pool, &self.horizons, account_id, wanted, self.wait).await?,
        ))
    }

    async fn pipeline_summary(
        &self,
        account_id: &str,
        plan_id: Option<Uuid>,
        as_of: pb::Freshness,
    ) -> Result<pb::PipelineSummaryResponse, ApiError> {
        let (stages, managers) =
            store::reports::pipeline_summary(&self.pool, account_id, plan_id).await?;
        let stages = stages
            .into_iter()
            .map(stage_total)
            .collect::<Result<Vec<_>, ApiError>>()?;
        let managers = managers
            .into_iter()
            .map(|m| pb::ManagerTotal {
                plan_id: m.plan_id.to_string(),
                manager_id: m.manager_id,
                open: m.open,
                won: m.won,
                lost: m.lost,
                waiting: m.waiting,
            })
            .collect();
        let total_deals = stages.iter().map(|s| s.deals).sum();
        Ok(pb::PipelineSummaryResponse {
            stages,
            managers,
            total_deals,
            as_of: Some(as_of),
        })
    }
}

/// A stage's total on the wire: the exact sum as text, and capped at the int64 range.
fn stage_total(total: reports::StageTotal) -> Result<pb::StageTotal, ApiError> {
    let exact = total.amount_minor;
    let amount: i128 = exact
        .parse()
        .map_err(|_| ApiError::internal(format!("sum {exact:?} is not an integer")))?;
    Ok(pb::StageTotal {
        plan_id: total.plan_id.to_string(),
        stage_id: total.stage_id.to_string(),
        deals: total.deals,
        amount_minor: i64::try_from(amount).unwrap_or(i64::MAX),
        currency: total.currency,
        exact_amount_minor: exact,
    })
}

fn time_of(
    field: &str,
    ts: Option<prost_types::Timestamp>,
) -> Result<Option<OffsetDateTime>, ApiError> {
    ts.map(|ts| {
        salesplan_proto::time::time_of(&ts).ok_or_else(|| ApiError::invalid(field, "out of range"))
    })
    .transpose()
}

fn period_of(range: Option<pb::TimeRange>) -> Result<(Period, Option<pb::TimeRange>), ApiError> {
    let Some(range) = range else {
        return Ok((Period::default(), None));
    };
    let period = Period {
        from: time_of("period.from", range.from)?,
        to: time_of("period.to", range.to)?,
    };
    if let (Some(from), Some(to)) = (period.from, period.to)
        && from > to
    {
        return Err(ApiError::invalid("period.to", "is before from"));
    }
    Ok((period, Some(range)))
}

fn plan_ids(ids: &[String]) -> Result<Vec<Uuid>, ApiError> {
    every(
        ids.iter()
            .enumerate()
            .map(|(i, id)| parse_id(&format!("plan_ids[{i}]"), id)),
    )
}

/// Names and the base of every click-through filter of one report.
struct Context {
    plans: HashMap<Uuid, String>,
    reasons: HashMap<Uuid, (String, bool)>,
    period: Option<pb::TimeRange>,
}

impl Context {
    fn key_name(&self, key: &Key) -> (String, String) {
        match key {
            Key::Plan(id) => (
                id.to_string(),
                self.plans
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| id.to_string()),
            ),
            Key::Manager(Some(m)) => (m.clone(), m.clone()),
            Key::Manager(None) => (String::new(), "(unassigned)".into()),
            Key::All => (String::new(), "Total".into()),
        }
    }

    /// The lost deals of a row (inside `parent`, for nested rows).
    fn filter(&self, keys: &[&Key], scope: &pb::DealFilter) -> pb::DealFilter {
        let mut filter = pb::DealFilter {
            statuses: vec![pb::DealStatus::Lost as i32],
            closed: self.period,
            ..scope.clone()
        };
        for key in keys {
            match key {
                Key::Plan(id) => filter.plan_id = id.to_string(),
                Key::Manager(Some(m)) => {
                    filter.manager_ids = vec![m.clone()];
                    filter.unassigned = false;
                }
                Key::Manager(None) => {
                    filter.manager_ids = Vec::new();
                    filter.unassigned = true;
                }
                Key::All => {}
            }
        }
        filter
    }

    fn row(&self, row: &report::Row, parents: &[&Key], scope: &pb::DealFilter) -> pb::ReportRow {
        let (key, name) = self.key_name(&row.key);
        let mut keys = parents.to_vec();
        keys.push(&row.key);
        let lost_filter = self.filter(&keys, scope);
        let reasons: Vec<pb::ReasonLine> = row
            .reasons
            .iter()
            .map(|(reason, count)| {
                let (id, name, archived, filter) = match reason {
                    Some(id) => {
                        let (name, archived) = self
                            .reasons
                            .get(id)
                            .cloned()
                            .unwrap_or_else(|| (id.to_string(), false));
                        let filter = pb::DealFilter {
                            loss_reason_ids: vec![id.to_string()],
                            ..lost_filter.clone()
                        };
                        (id.to_string(), name, archived, filter)
                    }
                    None => {
                        let filter = pb::DealFilter {
                            without_loss_reason: true,
                            ..lost_filter.clone()
                        };
                        (String::new(), "No reason".to_owned(), false, filter)
                    }
                };
                pb::ReasonLine {
                    reason_id: id,
                    name,
                    archived,
                    count: *count,
                    percent_of_lost: percent(*count, row.lost),
                    filter: Some(filter),
                }
            })
            .collect();
        let chart = pb::ChartSeries {
            labels: reasons.iter().map(|r| r.name.clone()).collect(),
            values: reasons.iter().map(|r| r.count).collect(),
        };
        pb::ReportRow {
            key,
            name,
            won: row.won,
            lost: row.lost,
            won_percent: percent(row.won, row.closed()),
            lost_percent: percent(row.lost, row.closed()),
            reasons,
            lost_filter: Some(lost_filter),
            details: row
                .details
                .iter()
                .map(|d| self.row(d, &keys, scope))
                .collect(),
            chart: Some(chart),
        }
    }
}

impl Reports {
    async fn loss_reasons(
        &self,
        account_id: &str,
        request: pb::LossReasonsRequest,
    ) -> Result<pb::LossReasonsResponse, ApiError> {
        let mut checks = Checks::new();
        let by = checks.check(match pb::ReportGrouping::try_from(request.group_by) {
            Ok(pb::ReportGrouping::Plan) => Ok(GroupBy::Plan),
            Ok(pb::ReportGrouping::Manager) => Ok(GroupBy::Manager),
            _ => Err(ApiError::invalid("group_by", "must be PLAN or MANAGER")),
        });
        let period = checks.check(period_of(request.period));
        let scope =
            Scope {
                plans: checks.take(plan_ids(&request.plan_ids)),
                managers: checks.take(every(
                    request.manager_ids.iter().enumerate().map(|(i, m)| {
                        validate::required_text(&format!("manager_ids[{i}]"), m, 128)
                    }),
                )),
            };
        let wanted = checks.check(Wanted::parse(
            "min_consistency_token",
            &request.min_consistency_token,
        ));
        checks.finish()?;
        let (Some(by), Some((period, range)), Some(wanted)) = (by, period, wanted) else {
            return Err(ApiError::internal("a checked field is missing"));
        };
        let as_of = self.fresh_enough(account_id, wanted).await?;
        let (cells, plans, reasons) = tokio::try_join!(
            reports::closed_cells(&self.pool, account_id, period, &scope),
            reports::plan_names(&self.pool, account_id),
            reports::reason_names(&self.pool, account_id),
        )?;
        let (rows, totals) = report::build(&cells, by, request.with_details);
        let context = Context {
            plans,
            reasons,
            period: range,
        };
        // The request's own filters, as far as one DealFilter can say them.
        let scope_filter = pb::DealFilter {
            plan_id: match scope.plans.as_slice() {
                [one] => one.to_string(),
                _ => String::new(),
            },
            manager_ids: scope.managers.clone(),
            ..Default::default()
        };
        let mut totals = context.row(&totals, &[], &scope_filter);
        if scope.plans.len() > 1 {
            // Several plans cannot be said in one filter: no click-through for the totals.
            totals.lost_filter = None;
            for reason in &mut totals.reasons {
                reason.filter = None;
            }
        }
        Ok(pb::LossReasonsResponse {
            rows: rows
                .iter()
                .map(|r| context.row(r, &[], &scope_filter))
                .collect(),
            totals: Some(totals),
            as_of: Some(as_of),
        })
    }

    async fn stage_losses(
        &self,
        account_id: &str,
        request: pb::StageLossesRequest,
    ) -> Result<pb::StageLossesResponse, ApiError> {
        let ((period, _), plans_filter, wanted) = (
            period_of(request.period),
            plan_ids(&request.plan_ids),
            Wanted::parse("min_consistency_token", &request.min_consistency_token),
        )
            .all()?;
        let as_of = self.fresh_enough(account_id, wanted).await?;
        let (losses, stages, names) = tokio::try_join!(
            reports::stage_losses(&self.pool, account_id, period, &plans_filter),
            reports::stages(&self.pool, account_id),
            reports::plan_names(&self.pool, account_id),
        )?;
        let mut per_plan: std::collections::BTreeMap<Uuid, Vec<(Option<Uuid>, i64)>> =
            Default::default();
        for (plan, stage, lost) in losses {
            per_plan.entry(plan).or_default().push((stage, lost));
        }
        let plans = per_plan
            .into_iter()
            .map(|(plan_id, counts)| {
                let total: i64 = counts.iter().map(|(_, n)| n).sum();
                let mut lines: Vec<(bool, i32, pb::StageLoss)> = counts
                    .into_iter()
                    .map(|(stage, lost)| {
                        let known = stage.and_then(|id| {
                            stages.iter().find(|(p, s, ..)| *p == plan_id && *s == id)
                        });
                        let (name, position, deleted) = match known {
                            Some((_, _, name, position, deleted)) => {
                                (name.clone(), *position, *deleted)
                            }
                            None => ("(unknown stage)".to_owned(), i32::MAX, true),
                        };
                        (
                            deleted,
                            position,
                            pb::StageLoss {
                                stage_id: stage.map(|s| s.to_string()).unwrap_or_default(),
                                name,
                                deleted,
                                lost,
                                percent_of_lost: percent(lost, total),
                            },
                        )
                    })
                    .collect();
                lines.sort_by_key(|(deleted, position, _)| (*deleted, *position));
                pb::PlanStageLosses {
                    plan_id: plan_id.to_string(),
                    name: names
                        .get(&plan_id)
                        .cloned()
                        .unwrap_or_else(|| plan_id.to_string()),
                    lost: total,
                    stages: lines.into_iter().map(|(_, _, line)| line).collect(),
                }
            })
            .collect();
        Ok(pb::StageLossesResponse {
            plans,
            as_of: Some(as_of),
        })
    }
}

impl Reports {
    async fn response_times(
        &self,
        account_id: &str,
        request: pb::ResponseTimesRequest,
    ) -> Result<pb::ResponseTimesResponse, ApiError> {
        let ((period, _), plans, managers, wanted) =
            (
                period_of(request.period),
                plan_ids(&request.plan_ids),
                every(
                    request.manager_ids.iter().enumerate().map(|(i, m)| {
                        validate::required_text(&format!("manager_ids[{i}]"), m, 128)
                    }),
                ),
                Wanted::parse("min_consistency_token", &request.min_consistency_token),
            )
                .all()?;
        let as_of = self.fresh_enough(account_id, wanted).await?;
        let (rows, names) = tokio::try_join!(
            async {
                store::responses::report(&self.pool, account_id, period, &plans, &managers)
                    .await
                    .map_err(store::StoreError::from)
            },
            reports::plan_names(&self.pool, account_id),
        )?;
        let rows = rows
            .into_iter()
            .map(|r| pb::ResponseTimeRow {
                plan_name: names
                    .get(&r.plan_id)
                    .cloned()
                    .unwrap_or_else(|| r.plan_id.to_string()),
                manager_id: r.manager_id,
                plan_id: r.plan_id.to_string(),
                assigned: r.assigned,
                accepted: r.accepted,
                median_seconds: r.median_seconds,
                p90_seconds: r.p90_seconds,
                deadlines_missed: r.missed,
            })
            .collect();
        Ok(pb::ResponseTimesResponse {
            rows,
            as_of: Some(as_of),
        })
    }
}

#[tonic::async_trait]
impl ReportService for Reports {
    async fn response_times(
        &self,
        request: Request<pb::ResponseTimesRequest>,
    ) -> Result<Response<pb::ResponseTimesResponse>, Status> {
        let actor = auth::reader(&request, Permission::ReportsRead)?;
        let _permit = self.limiter.admit(&actor.account_id)?;
        let report = Reports::response_times(self, &actor.account_id, request.into_inner()).await?;
        Ok(Response::new(report))
    }

    async fn loss_reasons(
        &self,
        request: Request<pb::LossReasonsRequest>,
    ) -> Result<Response<pb::LossReasonsResponse>, Status> {
        let actor = auth::reader(&request, Permission::ReportsRead)?;
        let _permit = self.limiter.admit(&actor.account_id)?;
        let report = Reports::loss_reasons(self, &actor.account_id, request.into_inner()).await?;
        Ok(Response::new(report))
    }

    async fn stage_losses(
        &self,
        request: Request<pb::StageLossesRequest>,
    ) -> Result<Response<pb::StageLossesResponse>, Status> {
        let actor = auth::reader(&request, Permission::ReportsRead)?;
        let _permit = self.limiter.admit(&actor.account_id)?;
        let report = Reports::stage_losses(self, &actor.account_id, request.into_inner()).await?;
        Ok(Response::new(report))
    }

    async fn pipeline_summary(
        &self,
        request: Request<pb::PipelineSummaryRequest>,
    ) -> Result<Response<pb::PipelineSummaryResponse>, Status> {
        let actor = auth::reader(&request, Permission::ReportsRead)?;
        let _permit = self.limiter.admit(&actor.account_id)?;
        let req = request.get_ref();
        let (plan_id, wanted) = (
            req.plan_id
                .as_deref()
                .map(|p| parse_id("plan_id", p))
                .transpose(),
            Wanted::parse("min_consistency_token", &req.min_consistency_token),
        )
            .all()?;
        let as_of = self.fresh_enough(&actor.account_id, wanted).await?;
        let summary = Reports::pipeline_summary(self, &actor.account_id, plan_id, as_of).await?;
        Ok(Response::new(summary))
    }
}

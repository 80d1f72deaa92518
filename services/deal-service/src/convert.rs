//! Proto ↔ domain at the edge. Converting a request validates it: errors are born here,
//! each naming the field (nested fields as `contact.email`).

use std::collections::HashMap;

use salesplan_platform::{
    ApiError, Checks,
    error::AllChecks as _,
    ids::parse_id,
    validate::{self, ContactInput},
};
use salesplan_proto::v1 as pb;

use crate::domain::{
    Money, MoneySum,
    deal::{Deal, DealEdit, DealStatus, NewDeal},
    manager::Manager,
    plan::{
        self, Distribution, MAX_REASSIGNMENTS, MAX_RESPONSE_SECONDS, Plan, PlanDraft, Response,
        Stage, StageKind, Strategy, Terms,
    },
    query::{self, DealQuery, Search, Sort, SortField, TimeRange},
};

/// An idempotency key's length at most, in characters.
pub const MAX_KEY_CHARS: usize = 200;

pub use salesplan_proto::time::{time_of, timestamp};

pub fn money_from(field: &str, money: Option<pb::Money>) -> Result<Option<Money>, ApiError> {
    money
        .map(|m| {
            let (amount_minor, currency) = validate::money(field, m.amount_minor, &m.currency)?;
            Ok(Money {
                amount_minor,
                currency,
            })
        })
        .transpose()
}

fn money_to(money: &Money) -> pb::Money {
    pb::Money {
        amount_minor: money.amount_minor,
        currency: money.currency.clone(),
    }
}

pub fn manager_id(field: &str, value: &str) -> Result<String, ApiError> {
    validate::required_text(field, value, 128)
}

/// A manager's availability as the API shows it, with whether they are available `now`.
pub fn availability_to(manager: &Manager, now: time::OffsetDateTime) -> pb::ManagerAvailability {
    let availability = &manager.availability;
    let away = availability.away_at(now);
    pb::ManagerAvailability {
        manager_id: manager.manager_id.clone(),
        schedule: Some(availability.schedule.to_proto()),
        paused: availability.paused,
        version: manager.version,
        updated_at: manager.updated_at.map(timestamp),
        available_now: away.is_none(),
        unavailable_because: away.map(|a| a.as_str().to_owned()).unwrap_or_default(),
        available_from: away
            .and_then(|_| availability.available_from(now))
            .map(timestamp),
        sequence: manager.sequence,
    }
}

pub fn distribution_from(d: Option<pb::Distribution>) -> Result<Distribution, ApiError> {
    use pb::distribution::{Mode, Strategy as S};
    let d = d.ok_or_else(|| ApiError::invalid("distribution", "required"))?;
    match Mode::try_from(d.mode) {
        Ok(Mode::Auto) => {
            let mut checks = Checks::new();
            let strategy = checks.check(match S::try_from(d.strategy) {
                Ok(S::Random) => Ok(Strategy::Random),
                Ok(S::RoundRobin) => Ok(Strategy::RoundRobin),
                Ok(S::LeastOpenDeals) => Ok(Strategy::LeastOpenDeals),
                _ => Err(ApiError::invalid(
                    "distribution.strategy",
                    "AUTO needs RANDOM, ROUND_ROBIN or LEAST_OPEN_DEALS",
                )),
            });
            if d.keep_related_when_unavailable && !d.prefer_related {
                checks.note(ApiError::invalid(
                    "distribution.keep_related_when_unavailable",
                    "needs prefer_related",
                ));
            }
            let response = checks.check(response_from(&d));
            checks.finish()?;
            Ok(Distribution::Auto {
                prefer_related: d.prefer_related,
                keep_related: d.keep_related_when_unavailable,
                strategy: strategy.unwrap_or(Strategy::RoundRobin),
                response: response.flatten(),
            })
        }
        Ok(Mode::Manual) => {
            // Settings only AUTO has are refused, not dropped: the caller meant something.
            let mut checks = Checks::new();
            let why = "a response deadline needs AUTO distribution (nobody reassigns by hand)";
            if d.response_deadline_seconds != 0 {
                checks.note(ApiError::invalid(
                    "distribution.response_deadline_seconds",
                    why,
                ));
            }
            if d.max_reassignments != 0 {
                checks.note(ApiError::invalid("distribution.max_reassignments", why));
            }
            if d.keep_related_when_unavailable {
                checks.note(ApiError::invalid(
                    "distribution.keep_related_when_unavailable",
                    "needs AUTO distribution with prefer_related",
                ));
            }
            checks.finish().map(|()| Distribution::Manual)
        }
        _ => Err(ApiError::invalid(
            "distribution.mode",
            "must be MANUAL or AUTO",
        )),
    }
}

/// The response deadline an AUTO distribution asks for: none at 0 seconds.
fn response_from(d: &pb::Distribution) -> Result<Option<Response>, ApiError> {
    let (seconds, reassignments) = (d.response_deadline_seconds, d.max_reassignments);
    let mut checks = Checks::new();
    if seconds > MAX_RESPONSE_SECONDS {
        checks.note(ApiError::invalid(
            "distribution.response_deadline_seconds",
            format!("at most {MAX_RESPONSE_SECONDS} (a week)"),
        ));
    }
    if reassignments > MAX_REASSIGNMENTS || (seconds == 0 && reassignments > 0) {
        checks.note(ApiError::invalid(
            "distribution.max_reassignments",
            format!("0 to {MAX_REASSIGNMENTS}, and only with a response deadline"),
        ));
    }
    checks.finish()?;
    Ok((seconds > 0).then_some(Response {
        seconds,
        max_reassignments: reassignments,
    }))
}

fn distribution_to(d: Distribution) -> pb::Distribution {
    use pb::distribution::{Mode, Strategy as S};
    match d {
        Distribution::Manual => pb::Distribution {
            mode: Mode::Manual as i32,
            prefer_related: false,
            keep_related_when_unavailable: false,
            strategy: S::Unspecified as i32,
            response_deadline_seconds: 0,
            max_reassignments: 0,
        },
        Distribution::Auto {
            prefer_related,
            keep_related,
            strategy,
            response,
        } => pb::Distribution {
            mode: Mode::Auto as i32,
            prefer_related,
            keep_related_when_unavailable: keep_related,
            response_deadline_seconds: response.map_or(0, |r| r.seconds),
            max_reassignments: response.map_or(0, |r| r.max_reassignments),
            strategy: match strategy {
                Strategy::Random => S::Random,
                Strategy::RoundRobin => S::RoundRobin,
                Strategy::LeastOpenDeals => S::LeastOpenDeals,
            } as i32,
        },
    }
}

/// A plan's managers with their terms, from `manager_ids` (the default terms) or `members`
/// (a weight of 0 is 1, a limit of 0 none): not both, at most [`plan::MAX_MANAGERS`], each
/// once; every violation at once, named by where it is in the request.
pub fn members_from(
    manager_ids: &[String],
    members: &[pb::PlanMember],
) -> Result<Vec<(String, Terms)>, ApiError> {
    if !manager_ids.is_empty() && !members.is_empty() {
        return Err(ApiError::invalid(
            "members",
            "give manager_ids or members, not both",
        ));
    }
    let (list, entries): (&str, Vec<_>) = if members.is_empty() {
        let entries = manager_ids.iter().enumerate().map(|(i, m)| {
            let field = format!("manager_ids[{i}]");
            manager_id(&field, m).map(|m| (field, m, Terms::default()))
        });
        ("manager_ids", entries.collect())
    } else {
        let entries = members.iter().enumerate().map(|(i, m)| member_from(i, m));
        ("members", entries.collect())
    };
    let mut checks = Checks::new();
    if entries.len() > plan::MAX_MANAGERS {
        checks.note(ApiError::invalid(
            list,
            format!("at most {} managers", plan::MAX_MANAGERS),
        ));
    }
    let mut first_at: HashMap<String, String> = HashMap::new();
    let mut managers = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some((field, manager, terms)) = checks.check(entry) else {
            continue;
        };
        match first_at.get(&manager) {
            Some(first) => checks.note(ApiError::invalid(
                field,
                format!("{manager} is listed twice (also {first})"),
            )),
            None => {
                first_at.insert(manager.clone(), field);
                managers.push((manager, terms));
            }
        }
    }
    checks.finish()?;
    Ok(managers)
}

/// Member `i` of a request: the field its manager id is at, the id and its terms.
fn member_from(i: usize, member: &pb::PlanMember) -> Result<(String, String, Terms), ApiError> {
    let weight = match member.weight {
        0 => Ok(1),
        w if (1..=plan::MAX_WEIGHT as i32).contains(&w) => Ok(w as u32),
        _ => Err(ApiError::invalid(
            format!("members[{i}].weight"),
            format!("1 to {}", plan::MAX_WEIGHT),
        )),
    };
    let max_open_deals = match member.max_open_deals {
        0 => Ok(None),
        n if (1..=plan::MAX_OPEN_DEALS_LIMIT as i32).contains(&n) => Ok(Some(n as u32)),
        _ => Err(ApiError::invalid(
            format!("members[{i}].max_open_deals"),
            format!("0 (no limit) or 1 to {}", plan::MAX_OPEN_DEALS_LIMIT),
        )),
    };
    let field = format!("members[{i}].manager_id");
    let (manager, weight, max_open_deals) = (
        manager_id(&field, &member.manager_id),
        weight,
        max_open_deals,
    )
        .all()?;
    let terms = Terms {
        weight,
        max_open_deals,
    };
    Ok((field, manager, terms))
}

impl TryFrom<pb::CreatePlanRequest> for PlanDraft {
    type Error = ApiError;

    /// Every field violation at once.
    fn try_from(req: pb::CreatePlanRequest) -> Result<Self, ApiError> {
        let mut checks = Checks::new();
        let average_amount = checks.check(
            money_from("average_amount", req.average_amount)
                .and_then(|m| m.ok_or_else(|| ApiError::invalid("average_amount", "required"))),
        );
        let members = checks.take(members_from(&req.manager_ids, &req.members));
        let name = checks.take(validate::required_text(
            "name",
            &req.name,
            plan::MAX_NAME_CHARS,
        ));
        let chat_label = checks.take(validate::required_text(
            "chat_label",
            &req.chat_label,
            plan::MAX_LABEL_CHARS,
        ));
        let distribution = checks.check(distribution_from(req.distribution));
        checks.finish()?;
        let (Some(average_amount), Some(distribution)) = (average_amount, distribution) else {
            return Err(ApiError::internal("a checked field is missing"));
        };
        let (managers, terms) = members.into_iter().unzip();
        let draft = PlanDraft {
            name,
            average_amount,
            chat_label,
            distribution,
            managers,
            terms,
        };
        draft.check()?;
        Ok(draft)
    }
}

fn stage_kind_to(kind: StageKind) -> pb::StageKind {
    match kind {
        StageKind::Open => pb::StageKind::Open,
        StageKind::Won => pb::StageKind::Won,
        StageKind::Lost => pb::StageKind::Lost,
    }
}

fn stage_to(stage: &Stage) -> pb::Stage {
    pb::Stage {
        id: stage.id.to_string(),
        name: stage.name.clone(),
        color: stage.color.clone(),
        kind: stage_kind_to(stage.kind) as i32,
        position: stage.position,
    }
}

impl From<&Plan> for pb::Plan {
    fn from(plan: &Plan) -> Self {
        pb::Plan {
            id: plan.id.to_string(),
            name: plan.name.clone(),
            average_amount: Some(money_to(&plan.average_amount)),
            chat_label: plan.chat_label.clone(),
            distribution: Some(distribution_to(plan.distribution)),
            manager_ids: plan.managers.clone(),
            manager_weights: plan.terms.iter().map(|t| t.weight as i32).collect(),
            manager_max_open_deals: plan
                .terms
                .iter()
                .map(|t| t.max_open_deals.unwrap_or(0) as i32)
                .collect(),
            stages: plan.stages.iter().map(stage_to).collect(),
            archived: plan.archived,
            version: plan.version,
            created_at: Some(timestamp(plan.created_at)),
            updated_at: Some(timestamp(plan.updated_at)),
            loss_reasons: Some(pb::LossReasonSettings {
                require_reason: plan.require_reason,
                reasons: plan
                    .loss_reasons
                    .iter()
                    .map(|r| pb::LossReason {
                        id: r.id.to_string(),
                        name: r.name.clone(),
                        archived: r.archived,
                    })
                    .collect(),
            }),
        }
    }
}

impl TryFrom<pb::CreateDealRequest> for NewDeal {
    type Error = ApiError;

    /// Every field violation at once.
    fn try_from(req: pb::CreateDealRequest) -> Result<Self, ApiError> {
        let mut checks = Checks::new();
        let deal = NewDeal {
            plan_id: checks.take(parse_id("plan_id", &req.plan_id)),
            stage_id: checks.take(
                req.stage_id
                    .as_deref()
                    .map(|s| parse_id("stage_id", s))
                    .transpose(),
            ),
            contact: checks.take(contact_from("contact", req.contact)),
            title: checks.take(title(&req.title)),
            amount: checks.take(money_from("amount", req.amount)),
            manager_id: checks.take(
                req.manager_id
                    .as_deref()
                    .map(|m| manager_id("manager_id", m))
                    .transpose(),
            ),
            idempotency_key: checks.take(validate::required_text(
                "idempotency_key",
                &req.idempotency_key,
                MAX_KEY_CHARS,
            )),
            accepted_at_plan_version: req.accepted_at_plan_version,
            lead_received_at: req
                .lead_received_at
                .as_ref()
                .and_then(salesplan_proto::time::time_of),
            trace_parent: req
                .trace_parent
                .as_deref()
                .and_then(salesplan_platform::telemetry::valid_traceparent),
            wait_for_manager: req.wait_for_manager,
            by_distributor: false,
        };
        if req.wait_for_manager && req.manager_id.is_some() {
            checks.take::<()>(Err(ApiError::invalid(
                "wait_for_manager",
                "a deal with a manager_id waits for nobody",
            )));
        }
        checks.finish()?;
        Ok(deal)
    }
}

pub fn contact_from(field: &str, contact: Option<pb::Contact>) -> Result<ContactInput, ApiError> {
    let contact = contact.ok_or_else(|| ApiError::invalid(field, "required"))?;
    ContactInput::from(contact)
        .validated()
        .map_err(|e| e.within(field))
}

pub fn title(value: &str) -> Result<String, ApiError> {
    validate::text("title", value, 300)
}

/// A stage name: 1 to 50 characters.
pub fn stage_name(value: &str) -> Result<String, ApiError> {
    validate::required_text("name", value, 50)
}

/// `#rrggbb`, lower-cased; empty means the default colour.
pub fn color(value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(crate::domain::stages::DEFAULT_COLOR.to_owned());
    }
    let hex = value.strip_prefix('#').unwrap_or("");
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid("color", "must be #rrggbb"));
    }
    Ok(value.to_lowercase())
}

pub fn expected_version(value: i64) -> Result<i64, ApiError> {
    if value < 1 {
        return Err(ApiError::invalid(
            "expected_version",
            "required: the version of the deal you last read",
        ));
    }
    Ok(value)
}

/// 0 means "whatever version the deal is at" (AcceptDeal: a manager needs no read
/// permission to take on their deal, so they may not have read it).
pub fn any_or_expected_version(value: i64) -> Result<Option<i64>, ApiError> {
    match value {
        0 => Ok(None),
        v => expected_version(v).map(Some),
    }
}

pub fn optional_id(field: &str, value: Option<&str>) -> Result<Option<uuid::Uuid>, ApiError> {
    value.map(|v| parse_id(field, v)).transpose()
}

pub fn ids(field: &str, values: &[String]) -> Result<Vec<uuid::Uuid>, ApiError> {
    salesplan_platform::every(
        values
            .iter()
            .enumerate()
            .map(|(i, v)| parse_id(&format!("{field}[{i}]"), v)),
    )
}

pub fn optional_manager(field: &str, value: Option<&str>) -> Result<Option<String>, ApiError> {
    value.map(|m| manager_id(field, m)).transpose()
}

impl TryFrom<pb::UpdateDealRequest> for DealEdit {
    type Error = ApiError;

    fn try_from(req: pb::UpdateDealRequest) -> Result<Self, ApiError> {
        let edit = DealEdit {
            title: req
                .title
                .as_deref()
                .map(|t| validate::required_text("title", t, 300))
                .transpose()?,
            amount: money_from("amount", req.amount)?,
            contact: req
                .contact
                .map(|c| contact_from("contact", Some(c)))
                .transpose()?,
        };
        Ok(edit)
    }
}

fn range_from(field: &str, range: Option<pb::TimeRange>) -> Result<TimeRange, ApiError> {
    let Some(range) = range else {
        return Ok(TimeRange::default());
    };
    let at = |end: &str, ts: Option<prost_types::Timestamp>| {
        ts.map(|ts| {
            time_of(&ts).ok_or_else(|| ApiError::invalid(format!("{field}.{end}"), "out of range"))
        })
        .transpose()
    };
    let range = TimeRange {
        from: at("from", range.from)?,
        to: at("to", range.to)?,
    };
    if let (Some(from), Some(to)) = (range.from, range.to)
        && from > to
    {
        return Err(ApiError::invalid(format!("{field}.to"), "is before from"));
    }
    Ok(range)
}

fn status_from(field: &str, value: i32) -> Result<DealStatus, ApiError> {
    match pb::DealStatus::try_from(value) {
        Ok(pb::DealStatus::Open) => Ok(DealStatus::Open),
        Ok(pb::DealStatus::Won) => Ok(DealStatus::Won),
        Ok(pb::DealStatus::Lost) => Ok(DealStatus::Lost),
        _ => Err(ApiError::invalid(field, "must be OPEN, WON or LOST")),
    }
}

/// The filter of a list, board or bulk request. Field names are prefixed with `filter.`.
/// A filter as a query; every field violation at once.
pub fn query_from(filter: Option<pb::DealFilter>) -> Result<DealQuery, ApiError> {
    let f = filter.unwrap_or_default();
    let mut checks = Checks::new();
    let search = validate::text("search", &f.search, 200)
        .and_then(|text| Search::new(&text).map_err(ApiError::from));
    let query = DealQuery {
        plan_id: checks.take(
            (!f.plan_id.is_empty())
                .then(|| parse_id("plan_id", &f.plan_id))
                .transpose(),
        ),
        stage_ids: checks.take(ids("stage_ids", &f.stage_ids)),
        managers: checks.take(
            f.manager_ids
                .iter()
                .map(|m| manager_id("manager_ids", m))
                .collect::<Result<_, _>>(),
        ),
        unassigned: f.unassigned,
        statuses: checks.take(
            f.statuses
                .iter()
                .map(|s| status_from("statuses", *s))
                .collect::<Result<_, _>>(),
        ),
        loss_reason_ids: checks.take(ids("loss_reason_ids", &f.loss_reason_ids)),
        without_loss_reason: f.without_loss_reason,
        created: checks.take(range_from("created", f.created)),
        closed: checks.take(range_from("closed", f.closed)),
        search: checks.take(search),
        waiting: f.waiting,
    };
    checks.finish().map_err(|e| e.within("filter"))?;
    Ok(query)
}

pub fn sort_from(sort: Option<pb::DealSort>) -> Result<Sort, ApiError> {
    let Some(sort) = sort else {
        return Ok(Sort::default());
    };
    let field = match pb::DealSortField::try_from(sort.field) {
        Ok(pb::DealSortField::Unspecified | pb::DealSortField::CreatedAt) => SortField::CreatedAt,
        Ok(pb::DealSortField::UpdatedAt) => SortField::UpdatedAt,
        Ok(pb::DealSortField::ClosedAt) => SortField::ClosedAt,
        Ok(pb::DealSortField::Amount) => SortField::Amount,
        Ok(pb::DealSortField::Title) => SortField::Title,
        Err(_) => return Err(ApiError::invalid("sort.field", "unknown sort field")),
    };
    Ok(Sort {
        field,
        ascending: sort.ascending,
    })
}

/// The fingerprint a page token carries: of the filter as the client sent it.
pub fn filter_fingerprint(filter: &Option<pb::DealFilter>) -> u64 {
    use prost::Message as _;
    query::fingerprint(&filter.clone().unwrap_or_default().encode_to_vec())
}

/// Sums as the API shows them: capped at the int64 range, and exact as a decimal.
pub fn money_totals(sums: &[MoneySum]) -> Vec<pb::MoneyTotal> {
    sums.iter()
        .map(|sum| pb::MoneyTotal {
            amount_minor: saturating_i64(sum.amount_minor),
            currency: sum.currency.clone(),
            exact_amount_minor: sum.amount_minor.to_string(),
        })
        .collect()
}

/// `value` within the int64 range: the nearest end when it is beyond.
pub fn saturating_i64(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

pub fn stage_to_proto(stage: &Stage) -> pb::Stage {
    stage_to(stage)
}

fn status_to(status: DealStatus) -> pb::DealStatus {
    match status {
        DealStatus::Open => pb::DealStatus::Open,
        DealStatus::Won => pb::DealStatus::Won,
        DealStatus::Lost => pb::DealStatus::Lost,
    }
}

impl From<&Deal> for pb::Deal {
    fn from(deal: &Deal) -> Self {
        pb::Deal {
            id: deal.id.to_string(),
            plan_id: deal.plan_id.to_string(),
            stage_id: deal.stage_id.to_string(),
            status: status_to(deal.status) as i32,
            manager_id: deal.manager_id.clone(),
            contact: Some(deal.contact.clone().into()),
            title: deal.title.clone(),
            amount: Some(money_to(&deal.amount)),
            loss_reason_id: deal.loss_reason_id.map(|id| id.to_string()),
            stage_before_close_id: deal.stage_before_close_id.map(|id| id.to_string()),
            version: deal.version,
            created_at: Some(timestamp(deal.created_at)),
            updated_at: Some(timestamp(deal.updated_at)),
            closed_at: deal.closed_at.map(timestamp),
            idempotency_key: deal.idempotency_key.clone(),
            waiting_since: deal.waiting_since.map(timestamp),
            accepted_at: deal.accepted_at.map(timestamp),
            escalated_at: deal.escalated_at.map(timestamp),
            assigned_at: deal.assigned_at.map(timestamp),
            response_due_at: deal.response_due_at.map(timestamp),
            accept_seconds: deal.accept_seconds,
            accepted_late: deal.accepted_late,
        }
    }
}

/// The deal as events carry it: no contact, no title (often the contact's name); the
/// contact travels as a keyed key beside it (docs/privacy.md).
pub fn without_personal_data(deal: pb::Deal) -> pb::Deal {
    pb::Deal {
        contact: None,
        title: String::new(),
        ..deal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_request() -> pb::CreatePlanRequest {
        pb::CreatePlanRequest {
            name: "Sales".into(),
            average_amount: Some(pb::Money {
                amount_minor: 10_000,
                currency: "RUB".into(),
            }),
            chat_label: "Продажи2025!".into(),
            distribution: Some(pb::Distribution {
                mode: pb::distribution::Mode::Auto as i32,
                prefer_related: true,
                keep_related_when_unavailable: false,
                response_deadline_seconds: 0,
                max_reassignments: 0,
                strategy: pb::distribution::Strategy::LeastOpenDeals as i32,
            }),
            manager_ids: vec!["m1".into(), "m2".into()],
            members: vec![],
        }
    }

    #[test]
    fn members_come_with_terms_and_every_violation_at_once() {
        let member = |id: &str, weight, max_open_deals| pb::PlanMember {
            manager_id: id.into(),
            weight,
            max_open_deals,
        };
        let got = members_from(&[], &[member("a", 0, 0), member("b", 3, 100_000)]).unwrap();
        let terms = |weight, max_open_deals| Terms {
            weight,
            max_open_deals,
        };
        assert_eq!(
            got,
            [
                ("a".to_owned(), terms(1, None)),
                ("b".to_owned(), terms(3, Some(100_000)))
            ]
        );
        let err = members_from(
            &[],
            &[
                member("", 101, 0),
                member("b", -1, -1),
                member("c", 100, 100_001),
            ],
        )
        .unwrap_err();
        let fields: Vec<&str> = err.violations().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "members[0].manager_id",
                "members[0].weight",
                "members[1].weight",
                "members[1].max_open_deals",
                "members[2].max_open_deals"
            ]
        );
        let both = members_from(&["a".into()], &[member("a", 2, 0)]).unwrap_err();
        assert_eq!(both.field(), Some("members"));
        // A manager twice is named where it is, beside the other violations.
        let err = members_from(
            &[],
            &[member("a", 1, 0), member("b", -1, 0), member("a", 2, 0)],
        )
        .unwrap_err();
        let found: Vec<(&str, &str)> = err
            .violations()
            .iter()
            .map(|v| (v.field.as_str(), v.reason.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("members[1].weight", "1 to 100"),
                (
                    "members[2].manager_id",
                    "a is listed twice (also members[0].manager_id)"
                )
            ]
        );
        let too_many: Vec<String> = (0..=plan::MAX_MANAGERS).map(|i| format!("m{i}")).collect();
        let err = members_from(&too_many, &[]).unwrap_err();
        assert_eq!(err.field(), Some("manager_ids"));
    }

    #[test]
    fn a_distribution_reports_every_violation_at_once() {
        let fields = |d: pb::Distribution| -> Vec<String> {
            let err = distribution_from(Some(d)).unwrap_err();
            err.violations().iter().map(|v| v.field.clone()).collect()
        };
        let auto = pb::Distribution {
            mode: pb::distribution::Mode::Auto as i32,
            strategy: 0,
            keep_related_when_unavailable: true,
            response_deadline_seconds: 1_000_000,
            max_reassignments: 11,
            ..Default::default()
        };
        assert_eq!(
            fields(auto),
            [
                "distribution.strategy",
                "distribution.keep_related_when_unavailable",
                "distribution.response_deadline_seconds",
                "distribution.max_reassignments"
            ]
        );
        let manual = pb::Distribution {
            mode: pb::distribution::Mode::Manual as i32,
            keep_related_when_unavailable: true,
            response_deadline_seconds: 60,
            ..Default::default()
        };
        assert_eq!(
            fields(manual),
            [
                "distribution.response_deadline_seconds",
                "distribution.keep_related_when_unavailable"
            ]
        );
    }

    #[test]
    fn a_twelve_character_label_is_accepted_and_thirteen_refused() {
        let draft = PlanDraft::try_from(plan_request()).unwrap();
        assert_eq!(draft.chat_label, "Продажи2025!");
        assert_eq!(
            draft.distribution,
            Distribution::Auto {
                prefer_related: true,
                keep_related: false,
                strategy: Strategy::LeastOpenDeals,
                response: None,
            }
        );

        let mut req = plan_request();
        req.chat_label = "Продажи2025!!".into();
        let err = PlanDraft::try_from(req).unwrap_err();
        assert_eq!(err.field(), Some("chat_label"));
    }

    #[test]
    fn plan_fields_are_required_and_named() {
        type Mutation = fn(&mut pb::CreatePlanRequest);
        let cases: Vec<(Mutation, &str)> = vec![
            (|r| r.name = "  ".into(), "name"),
            (|r| r.name = "x".repeat(101), "name"),
            (|r| r.average_amount = None, "average_amount"),
            (
                |r| r.average_amount.as_mut().unwrap().amount_minor = -5,
                "average_amount.amount_minor",
            ),
            (|r| r.distribution = None, "distribution"),
            (
                |r| r.distribution.as_mut().unwrap().mode = 0,
                "distribution.mode",
            ),
            (
                |r| r.distribution.as_mut().unwrap().strategy = 99,
                "distribution.strategy",
            ),
            (
                |r| r.manager_ids = vec!["m1".into(), "m1".into()],
                "manager_ids[1]",
            ),
            (|r| r.manager_ids = vec!["".into()], "manager_ids[0]"),
            (
                |r| {
                    r.members = vec![pb::PlanMember {
                        manager_id: "m3".into(),
                        weight: 1,
                        max_open_deals: 0,
                    }]
                },
                "members",
            ),
        ];
        for (mutate, field) in cases {
            let mut req = plan_request();
            mutate(&mut req);
            let err = PlanDraft::try_from(req).unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
    }

    use proptest::prelude::{Just, any, prop_assert, prop_assert_eq, prop_oneof, proptest};

    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        prop_oneof![
            ".*",
            "[a-z]{0,400}",
            Just("😀 مرحبا".to_owned()),
            Just("%_\\'".to_owned())
        ]
    }

    proptest! {
        #[test]
        fn plan_requests_convert_or_name_a_field(
            name in text(), label in text(), amount in any::<i64>(), currency in text(),
            mode in any::<i32>(), strategy in any::<i32>(), managers in proptest::collection::vec(text(), 0..4),
        ) {
            let request = pb::CreatePlanRequest {
                name, chat_label: label,
                average_amount: Some(pb::Money { amount_minor: amount, currency }),
                distribution: Some(pb::Distribution { mode, strategy, ..Default::default() }),
                manager_ids: managers,
                members: vec![],
            };
            match PlanDraft::try_from(request) {
                Ok(draft) => prop_assert!(draft.average_amount.amount_minor >= 0 && draft.chat_label.chars().count() <= 12),
                Err(err) => prop_assert!(err.field().is_some(), "{err}"),
            }
        }

        #[test]
        fn deal_requests_and_filters_convert_or_name_a_field(
            plan in text(), key in text(), title in text(), email in text(), amount in any::<i64>(),
            statuses in proptest::collection::vec(any::<i32>(), 0..3), search in text(),
            sort_field in any::<i32>(), page in any::<i32>(),
        ) {
            let request = pb::CreateDealRequest {
                plan_id: plan.clone(), idempotency_key: key, title,
                contact: Some(pb::Contact { email, external_id: "x".into(), ..Default::default() }),
                amount: Some(pb::Money { amount_minor: amount, currency: "USD".into() }),
                ..Default::default()
            };
            if let Err(err) = NewDeal::try_from(request) {
                prop_assert!(err.field().is_some(), "{err}");
            }
            let filter = pb::DealFilter { plan_id: plan, statuses, search, ..Default::default() };
            if let Err(err) = query_from(Some(filter)) {
                prop_assert!(err.field().is_some_and(|f| f.starts_with("filter.")), "{err}");
            }
            if let Err(err) = sort_from(Some(pb::DealSort { field: sort_field, ascending: true })) {
                prop_assert_eq!(err.field(), Some("sort.field"));
            }
            prop_assert!(crate::domain::query::page_size(page) <= crate::domain::query::MAX_PAGE_SIZE);
        }
    }

    #[test]
    fn deal_contact_errors_are_nested() {
        let req = pb::CreateDealRequest {
            plan_id: uuid::Uuid::new_v4().to_string(),
            contact: Some(pb::Contact {
                email: "not-an-email".into(),
                ..Default::default()
            }),
            idempotency_key: "k".into(),
            ..Default::default()
        };
        let err = NewDeal::try_from(req).unwrap_err();
        assert_eq!(err.field(), Some("contact.email"));
    }

    /// Every plan event carries the whole plan: at every cap, with the widest characters,
    /// it still fits the broker's default 1 MiB max payload with room for its headers.
    #[test]
    fn a_plan_at_every_cap_fits_one_broker_message() {
        use prost::Message as _;
        let wide = |n: usize| "𝔸".repeat(n);
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let mut plan = PlanDraft {
            name: wide(plan::MAX_NAME_CHARS),
            average_amount: Money {
                amount_minor: salesplan_platform::validate::MAX_AMOUNT_MINOR,
                currency: "USD".into(),
            },
            chat_label: wide(plan::MAX_LABEL_CHARS),
            distribution: Distribution::Manual,
            managers: (0..plan::MAX_MANAGERS)
                .map(|i| format!("{i:04}{}", wide(124)))
                .collect(),
            terms: vec![
                Terms {
                    weight: plan::MAX_WEIGHT,
                    max_open_deals: Some(plan::MAX_OPEN_DEALS_LIMIT),
                };
                plan::MAX_MANAGERS
            ],
        }
        .into_plan(
            "a".repeat(64).as_str(),
            uuid::Uuid::new_v4(),
            now,
            uuid::Uuid::new_v4,
        );
        while plan.stages.len() < crate::domain::stages::MAX_STAGES {
            let name = format!("{:02}{}", plan.stages.len(), wide(48));
            plan.add_stage(uuid::Uuid::new_v4(), name, "#ffffff".into(), None)
                .unwrap();
        }
        plan.loss_reasons = (0..plan::MAX_REASONS)
            .map(|i| crate::domain::plan::LossReason {
                id: uuid::Uuid::new_v4(),
                name: format!("{i:03}{}", wide(97)),
                archived: i >= plan::MAX_ACTIVE_REASONS,
                used: true,
            })
            .collect();
        let event = pb::PlanEvent {
            event_id: uuid::Uuid::new_v4().to_string(),
            account_id: plan.account_id.clone(),
            occurred_at: Some(timestamp(now)),
            kind: pb::plan_event::Kind::Updated as i32,
            actor_id: "x".repeat(128),
            plan: Some((&plan).into()),
        };
        let bytes = event.encoded_len();
        assert!(bytes < 1024 * 1024 - 64 * 1024, "{bytes} bytes");
    }
}

//! Deals: what a new deal looks like, from the plan and the caller's input.

use salesplan_platform::validate::ContactInput;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    DomainError, Money, Reason,
    plan::{Plan, StageKind},
};

salesplan_platform::named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum DealStatus {
        Open => "open",
        Won => "won",
        Lost => "lost",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deal {
    pub id: Uuid,
    pub account_id: String,
    pub plan_id: Uuid,
    pub stage_id: Uuid,
    pub status: DealStatus,
    pub manager_id: Option<String>,
    pub contact: ContactInput,
    pub title: String,
    pub amount: Money,
    pub loss_reason_id: Option<Uuid>,
    pub stage_before_close_id: Option<Uuid>,
    pub idempotency_key: String,
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub closed_at: Option<OffsetDateTime>,
    /// Since when the deal waits for the distributor to assign it (open, unassigned, left
    /// to automatic distribution); any assignment or close ends the wait.
    pub waiting_since: Option<OffsetDateTime>,
    /// When the manager accepted the deal (see [`Deal::accepted_by`]); a new manager
    /// clears it.
    pub accepted_at: Option<OffsetDateTime>,
    /// Since when the deal waits for a person (its response deadline missed as often as
    /// its plan reassigns); any assignment or close ends it.
    pub escalated_at: Option<OffsetDateTime>,
    /// When the current manager got the deal.
    pub assigned_at: Option<OffsetDateTime>,
    /// The manager's working time from `assigned_at` to `accepted_at`, in seconds.
    pub accept_seconds: Option<i64>,
    /// The response deadline the current assignment runs under (seconds of the manager's
    /// working time): the plan's, when the distributor made the assignment; none for a
    /// person's, and none once the deal is closed (no deadline runs on a closed deal).
    pub deadline_seconds: Option<i64>,
    /// When that deadline runs out, by the manager's schedule at the assignment (as the
    /// distributor times it; a schedule changed later does not move it).
    pub response_due_at: Option<OffsetDateTime>,
    /// Accepted after `response_due_at` while the plan still has a deadline (the
    /// distributor, down or behind, had not reassigned the deal yet): the manager keeps it,
    /// and the deadline counts as missed.
    pub accepted_late: bool,
}

#[cfg(test)]
impl Deal {
    /// An open deal in `stage`, for tests of what is computed from deals.
    pub fn sample(stage: Uuid, manager: Option<&str>, amount: i64) -> Deal {
        Deal {
            id: Uuid::new_v4(),
            account_id: "acme".into(),
            plan_id: Uuid::nil(),
            stage_id: stage,
            status: DealStatus::Open,
            manager_id: manager.map(Into::into),
            contact: ContactInput::default(),
            title: "t".into(),
            amount: Money {
                amount_minor: amount,
                currency: "EUR".into(),
            },
            loss_reason_id: None,
            stage_before_close_id: None,
            idempotency_key: "k".into(),
            version: 1,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            closed_at: None,
            waiting_since: None,
            accepted_at: None,
            escalated_at: None,
            assigned_at: manager.map(|_| OffsetDateTime::UNIX_EPOCH),
            accept_seconds: None,
            deadline_seconds: None,
            response_due_at: None,
            accepted_late: false,
        }
    }
}

/// A deal a caller asks for, validated field by field but not yet against its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeal {
    pub plan_id: Uuid,
    pub stage_id: Option<Uuid>,
    pub contact: ContactInput,
    pub title: String,
    pub amount: Option<Money>,
    pub manager_id: Option<String>,
    pub idempotency_key: String,
    /// The plan version a lead was accepted at (deals from leads).
    pub accepted_at_plan_version: Option<i64>,
    /// The W3C traceparent of what caused the deal (its lead's trace), which its events
    /// continue: no part of the deal.
    pub trace_parent: Option<String>,
    /// When the listener received the deal's lead (deals from leads): a lead received before
    /// its person was erased becomes a deal without personal data.
    pub lead_received_at: Option<OffsetDateTime>,
    /// Left to the plan's automatic distribution: created waiting (no manager given).
    pub wait_for_manager: bool,
    /// Created by the platform's distributor: a manager given is its assignment, under the
    /// plan's response deadline.
    pub by_distributor: bool,
}

impl NewDeal {
    /// The deal as it is created in `plan`: the first OPEN stage unless one is given, the
    /// plan's average amount unless one is given, the contact's name as the title.
    pub fn into_deal(
        self,
        plan: &Plan,
        id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Deal, DomainError> {
        plan.takes_deal(self.accepted_at_plan_version)?;
        let stage = match self.stage_id {
            Some(stage_id) => plan
                .stage(stage_id)
                .ok_or_else(|| DomainError::invalid("stage_id", "not a stage of this plan"))?,
            None => plan.first_open_stage().ok_or_else(|| {
                DomainError::Precondition(
                    Reason::LastOpenStage,
                    format!("plan {} has no open stage", plan.id),
                )
            })?,
        };
        if stage.kind != StageKind::Open {
            return Err(DomainError::invalid(
                "stage_id",
                "a new deal starts in an open stage; close it with MoveDeal",
            ));
        }
        if self.wait_for_manager && !plan.distributes_automatically() {
            return Err(DomainError::Precondition(
                Reason::ManualDistribution,
                format!(
                    "plan {} distributes by hand: a deal cannot wait for it",
                    plan.id
                ),
            ));
        }
        if let Some(manager) = &self.manager_id
            && !plan.has_manager(manager)
        {
            return Err(DomainError::Precondition(
                Reason::ManagerNotInPlan,
                format!("manager {manager} is not a member of plan {}", plan.id),
            ));
        }
        let title = if self.title.is_empty() {
            self.contact.display_name().to_owned()
        } else {
            self.title
        };
        Ok(Deal {
            id,
            account_id: plan.account_id.clone(),
            plan_id: plan.id,
            stage_id: stage.id,
            status: DealStatus::Open,
            contact: self.contact,
            title,
            amount: self.amount.unwrap_or_else(|| plan.average_amount.clone()),
            loss_reason_id: None,
            stage_before_close_id: None,
            idempotency_key: self.idempotency_key,
            version: 1,
            created_at: now,
            updated_at: now,
            closed_at: None,
            waiting_since: self.wait_for_manager.then_some(now),
            accepted_at: None,
            escalated_at: None,
            assigned_at: self.manager_id.as_ref().map(|_| now),
            accept_seconds: None,
            deadline_seconds: None,
            response_due_at: None,
            accepted_late: false,
            manager_id: self.manager_id,
        }
        .under_deadline(plan, self.by_distributor))
    }
}

/// What a change did to a deal: the history entry and the kind of event it publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created,
    Moved {
        from: Uuid,
        to: Uuid,
    },
    Closed {
        from: Uuid,
        to: Uuid,
        status: DealStatus,
        reason: Option<Uuid>,
    },
    Reopened {
        from: Uuid,
        to: Uuid,
        status: DealStatus,
    },
    Assigned {
        from: Option<String>,
        to: Option<String>,
    },
    Transferred {
        from: Option<String>,
        to: Option<String>,
    },
    /// The distributor took the deal from a manager who did not accept it in time: to the
    /// next manager, or (`to` none) to wait for a person. `note` says why.
    Reassigned {
        from: Option<String>,
        to: Option<String>,
        note: String,
        /// When `from` got the deal: the assignment whose deadline was missed.
        missed_assigned_at: Option<OffsetDateTime>,
    },
    /// The manager accepted the deal (AcceptDeal).
    Accepted,
    Edited {
        fields: Vec<&'static str>,
    },
    /// The contact and title erased (ContactService.EraseContact); `former` is the contact
    /// it had, for the keyed key consumers forget.
    Erased {
        former: ContactInput,
    },
}

/// The fields of a deal an edit may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DealEdit {
    pub title: Option<String>,
    pub amount: Option<Money>,
    pub contact: Option<ContactInput>,
}

impl Deal {
    pub fn is_closed(&self) -> bool {
        self.status != DealStatus::Open
    }

    fn next(&self, now: OffsetDateTime) -> Deal {
        Deal {
            version: self.version + 1,
            updated_at: now,
            ..self.clone()
        }
    }

    /// The deal without its contact and title (an erasure): everything else is kept.
    pub fn erased(&self, now: OffsetDateTime) -> (Deal, Change) {
        let mut deal = self.next(now);
        deal.contact = ContactInput::default();
        deal.title = String::new();
        (
            deal,
            Change::Erased {
                former: self.contact.clone(),
            },
        )
    }

    /// The erasure of a deal created already without its contact (a lead of a person erased
    /// while it was on its way): nothing changes but the version; the change names the
    /// contact the lead had, for consumers to forget.
    pub fn erased_on_arrival(&self, former: ContactInput, now: OffsetDateTime) -> (Deal, Change) {
        (self.next(now), Change::Erased { former })
    }

    /// Whether nothing personal is left to erase.
    pub fn is_erased(&self) -> bool {
        self.contact == ContactInput::default() && self.title.is_empty()
    }

    /// Whether the deal already is where a move to `stage_id` (with `reason`) would put it:
    /// in that stage, and for a closed deal with that reason. A repeated move is then done.
    /// (An open deal with a reason given is not: a reason goes only with LOST, and the
    /// move says so.)
    pub fn is_at(&self, stage_id: Uuid, reason: Option<Uuid>) -> bool {
        self.stage_id == stage_id
            && if self.is_closed() {
                self.loss_reason_id == reason
            } else {
                reason.is_none()
            }
    }

    /// Whether every field `edit` sets already has that value: the edit is then done.
    pub fn has(&self, edit: &DealEdit) -> bool {
        edit.title.as_ref().is_none_or(|t| *t == self.title)
            && edit.amount.as_ref().is_none_or(|a| *a == self.amount)
            && edit.contact.as_ref().is_none_or(|c| *c == self.contact)
    }

    /// Whether the deal already has `manager` (none: unassigned). A repeated assignment is
    /// then done.
    pub fn is_with(&self, manager: Option<&str>) -> bool {
        self.manager_id.as_deref() == manager
    }

    /// The board's drag: to another OPEN stage, or closing as WON or LOST.
    pub fn move_to(
        &self,
        plan: &Plan,
        stage_id: Uuid,
        reason: Option<Uuid>,
        now: OffsetDateTime,
    ) -> Result<(Deal, Change), DomainError> {
        if self.is_closed() {
            return Err(DomainError::Precondition(
                Reason::DealClosed,
                format!(
                    "deal {} is closed ({}): reopen it first",
                    self.id,
                    self.status.as_str()
                ),
            ));
        }
        let stage = plan
            .stage(stage_id)
            .ok_or_else(|| DomainError::invalid("stage_id", "not a stage of the deal's plan"))?;
        if stage.kind != StageKind::Lost && reason.is_some() {
            return Err(DomainError::invalid(
                "loss_reason_id",
                "only a move to the LOST stage takes a reason",
            ));
        }
        let mut deal = self.next(now);
        let from = self.stage_id;
        deal.stage_id = stage.id;
        let change = match stage.kind {
            StageKind::Open => {
                if stage.id == from {
                    return Err(DomainError::Precondition(
                        Reason::NothingToChange,
                        format!("deal {} is already in stage {}", self.id, stage.name),
                    ));
                }
                Change::Moved { from, to: stage.id }
            }
            StageKind::Won | StageKind::Lost => {
                let status = if stage.kind == StageKind::Won {
                    DealStatus::Won
                } else {
                    DealStatus::Lost
                };
                if status == DealStatus::Lost {
                    match reason {
                        Some(id) if plan.active_reason(id).is_none() => {
                            return Err(DomainError::invalid(
                                "loss_reason_id",
                                "not an active reason of this plan",
                            ));
                        }
                        None if plan.require_reason => {
                            return Err(DomainError::LossReasonRequired);
                        }
                        _ => {}
                    }
                }
                deal.status = status;
                deal.closed_at = Some(now);
                deal.waiting_since = None;
                deal.escalated_at = None;
                // No deadline runs on a closed deal, nor after it is reopened.
                deal.deadline_seconds = None;
                deal.response_due_at = None;
                deal.stage_before_close_id = Some(from);
                deal.loss_reason_id = reason;
                Change::Closed {
                    from,
                    to: stage.id,
                    status,
                    reason,
                }
            }
        };
        Ok((deal, change))
    }

    /// The deal after its OPEN stage was deleted: in `to`, the OPEN stage the deletion
    /// moves its deals to.
    pub fn moved_off_deleted_stage(&self, to: Uuid, now: OffsetDateTime) -> (Deal, Change) {
        let mut deal = self.next(now);
        deal.stage_id = to;
        (
            deal,
            Change::Moved {
                from: self.stage_id,
                to,
            },
        )
    }

    /// Back from WON or LOST: LOST returns to the stage it left, WON to the last OPEN stage;
    /// a remembered stage that is gone falls back to the last OPEN stage.
    pub fn reopen(&self, plan: &Plan, now: OffsetDateTime) -> Result<(Deal, Change), DomainError> {
        if !self.is_closed() {
            return Err(DomainError::Precondition(
                Reason::DealOpen,
                format!(
                    "deal {} is open: only WON or LOST deals are reopened",
                    self.id
                ),
            ));
        }
        let last_open = plan.last_open_stage().ok_or_else(|| {
            DomainError::Precondition(Reason::LastOpenStage, "the plan has no OPEN stage".into())
        })?;
        let target = match self.status {
            DealStatus::Lost => self
                .stage_before_close_id
                .and_then(|id| plan.stage(id))
                .filter(|s| s.kind == StageKind::Open)
                .unwrap_or(last_open),
            _ => last_open,
        };
        let mut deal = self.next(now);
        deal.status = DealStatus::Open;
        deal.stage_id = target.id;
        deal.closed_at = None;
        deal.loss_reason_id = None;
        deal.stage_before_close_id = None;
        Ok((
            deal,
            Change::Reopened {
                from: self.stage_id,
                to: target.id,
                status: self.status,
            },
        ))
    }

    /// Sets or removes the manager; a new manager must be a member of the plan.
    pub fn assign(
        &self,
        plan: &Plan,
        manager: Option<String>,
        transfer: bool,
        now: OffsetDateTime,
    ) -> Result<(Deal, Change), DomainError> {
        if let Some(m) = &manager
            && !plan.has_manager(m)
        {
            return Err(DomainError::Precondition(
                Reason::ManagerNotInPlan,
                format!("manager {m} is not a member of plan {}", plan.id),
            ));
        }
        if manager == self.manager_id {
            return Err(DomainError::Precondition(
                Reason::NothingToChange,
                format!("deal {} already has this manager", self.id),
            ));
        }
        let mut deal = self.next(now);
        deal.manager_id = manager.clone();
        // Whoever assigns (or unassigns) a deal decides for it: it waits no more, and a new
        // manager has not accepted it yet.
        deal.waiting_since = None;
        deal.escalated_at = None;
        deal.accepted_at = None;
        deal.accept_seconds = None;
        deal.deadline_seconds = None;
        deal.response_due_at = None;
        deal.accepted_late = false;
        deal.assigned_at = manager.as_ref().map(|_| now);
        let (from, to) = (self.manager_id.clone(), manager);
        let change = if transfer {
            Change::Transferred { from, to }
        } else {
            Change::Assigned { from, to }
        };
        Ok((deal, change))
    }

    /// The distributor's reassignment of a deal its manager did not accept in time: to
    /// `manager`, or (none) to wait for a person; `note` says why (the history keeps it).
    /// `missed`, when given, is the assignment that missed the deadline: the deal must
    /// still be in it, and still under that deadline.
    pub fn reassign(
        &self,
        plan: &Plan,
        (manager, missed): (Option<String>, Option<OffsetDateTime>),
        note: String,
        now: OffsetDateTime,
    ) -> Result<(Deal, Change), DomainError> {
        if self.is_closed() {
            return Err(DomainError::Precondition(
                Reason::DealClosed,
                format!("deal {} is closed: nothing to reassign", self.id),
            ));
        }
        if let Some(at) = missed
            && (self.assigned_at != Some(at) || self.accepted_at.is_some())
        {
            return Err(DomainError::Precondition(
                Reason::AssignmentEnded,
                format!(
                    "deal {} is no longer in the assignment that missed its deadline",
                    self.id
                ),
            ));
        }
        if missed.is_some() && self.deadline_seconds.is_none() {
            return Err(DomainError::Precondition(
                Reason::DeadlineEnded,
                format!(
                    "deal {} runs under no deadline any more: the plan's ended since",
                    self.id
                ),
            ));
        }
        let (deal, _) = self.assign(plan, manager.clone(), false, now)?;
        let mut deal = deal.under_deadline(plan, true);
        if manager.is_none() {
            deal.waiting_since = Some(now);
            deal.escalated_at = Some(now);
        }
        let change = Change::Reassigned {
            from: self.manager_id.clone(),
            to: manager,
            note,
            missed_assigned_at: self.assigned_at,
        };
        Ok((deal, change))
    }

    /// `self`, just assigned, under the response deadline of its assignment: the plan's
    /// when the distributor made it; a person's assignment is their decision, with none.
    pub fn under_deadline(mut self, plan: &Plan, by_distributor: bool) -> Deal {
        self.deadline_seconds = plan
            .response()
            .filter(|_| by_distributor && self.manager_id.is_some())
            .map(|r| i64::from(r.seconds));
        self
    }

    /// Whether the deal waits for a person with no manager: where an escalation puts it.
    pub fn is_escalated(&self) -> bool {
        self.manager_id.is_none() && self.escalated_at.is_some()
    }

    /// Whether the deal's manager accepted it.
    pub fn is_accepted(&self) -> bool {
        self.accepted_at.is_some()
    }

    /// The manager accepts the deal (AcceptDeal): only the deal's own manager, only once.
    pub fn accept(&self, by: &str, now: OffsetDateTime) -> Result<(Deal, Change), DomainError> {
        if self.manager_id.as_deref() != Some(by) {
            return Err(DomainError::NotTheManager);
        }
        if self.is_closed() {
            return Err(DomainError::Precondition(
                Reason::DealClosed,
                format!("deal {} is closed: nothing to accept", self.id),
            ));
        }
        let mut deal = self.next(now);
        deal.accepted_at = Some(now);
        Ok((deal, Change::Accepted))
    }

    /// `self` after a change `actor` made: the deal's manager changing it accepts it (a
    /// manager who moved, edited or closed a deal has taken it on, whether or not they
    /// pressed "accept").
    pub fn accepted_by(mut self, actor: &str) -> Deal {
        if self.accepted_at.is_none() && self.manager_id.as_deref() == Some(actor) {
            self.accepted_at = Some(self.updated_at);
        }
        self
    }

    /// Whether the deal was just accepted and its time to accept is still to be measured
    /// (by the manager's schedule: [`Deal::timed`]).
    pub fn needs_timing(&self) -> bool {
        self.accepted_at.is_some() && self.accept_seconds.is_none() && self.assigned_at.is_some()
    }

    /// Whether the deal was just given under a deadline whose due time is still to be
    /// set (by the manager's schedule: [`Deal::due_by`]).
    pub fn needs_due(&self) -> bool {
        self.deadline_seconds.is_some()
            && self.response_due_at.is_none()
            && self.assigned_at.is_some()
    }

    /// `self` with its deadline's due time by the manager's `schedule` now.
    pub fn due_by(mut self, schedule: &salesplan_platform::schedule::Schedule) -> Deal {
        if let (Some(seconds), Some(from), None) = (
            self.deadline_seconds,
            self.assigned_at,
            self.response_due_at,
        ) {
            let seconds = u32::try_from(seconds).unwrap_or(u32::MAX);
            self.response_due_at = Some(schedule.deadline(from, seconds));
        }
        self
    }

    /// `self` with its time to accept: the manager's working time by `schedule` from when
    /// they got the deal to when they accepted it; and whether that was past its due time
    /// (a deadline the plan ended since has none: [`Plan::ends_deadlines_of`]).
    pub fn timed(mut self, schedule: &salesplan_platform::schedule::Schedule) -> Deal {
        if let (Some(from), Some(to), None) =
            (self.assigned_at, self.accepted_at, self.accept_seconds)
        {
            self.accept_seconds = Some(schedule.working_time(from, to).whole_seconds());
            self.accepted_late = self.response_due_at.is_some_and(|due| to > due);
        }
        self
    }

    pub fn edit(&self, edit: DealEdit, now: OffsetDateTime) -> Result<(Deal, Change), DomainError> {
        let mut deal = self.next(now);
        let mut fields = Vec::new();
        if let Some(title) = edit.title
            && title != self.title
        {
            deal.title = title;
            fields.push("title");
        }
        if let Some(amount) = edit.amount
            && amount != self.amount
        {
            deal.amount = amount;
            fields.push("amount");
        }
        if let Some(contact) = edit.contact
            && contact != self.contact
        {
            deal.contact = contact;
            fields.push("contact");
        }
        if fields.is_empty() {
            return Err(DomainError::Precondition(
                Reason::NothingToChange,
                "nothing to change".into(),
            ));
        }
        Ok((deal, Change::Edited { fields }))
    }
}

/// Who may change a deal: holders of `deals:edit_all` any deal, everyone else the deals
/// assigned to them — and may take an unassigned deal for themselves.
pub fn may_change(user_id: &str, edit_all: bool, deal: &Deal) -> bool {
    edit_all || deal.manager_id.as_deref() == Some(user_id)
}

pub fn may_assign(user_id: &str, edit_all: bool, deal: &Deal, to: Option<&str>) -> bool {
    edit_all || (deal.manager_id.is_none() && to == Some(user_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::{Distribution, PlanDraft};

    fn plan() -> Plan {
        PlanDraft {
            name: "Sales".into(),
            average_amount: Money {
                amount_minor: 5_000,
                currency: "EUR".into(),
            },
            chat_label: "S".into(),
            distribution: Distribution::Manual,
            managers: vec!["m1".into()],
            terms: vec![],
        }
        .into_plan(
            "acme",
            Uuid::new_v4(),
            OffsetDateTime::UNIX_EPOCH,
            Uuid::new_v4,
        )
    }

    fn new_deal(plan: &Plan) -> NewDeal {
        NewDeal {
            plan_id: plan.id,
            stage_id: None,
            contact: ContactInput {
                name: "Ann".into(),
                email: "ann@example.com".into(),
                ..Default::default()
            },
            title: String::new(),
            amount: None,
            manager_id: None,
            idempotency_key: "k1".into(),
            accepted_at_plan_version: None,
            trace_parent: None,
            lead_received_at: None,
            wait_for_manager: false,
            by_distributor: false,
        }
    }

    #[test]
    fn a_deal_waits_only_for_an_automatic_plan_until_assigned_or_closed() {
        let mut plan = plan();
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1);
        let waiting = NewDeal {
            wait_for_manager: true,
            ..new_deal(&plan)
        };
        let refused = waiting.clone().into_deal(&plan, Uuid::new_v4(), now);
        assert!(
            matches!(
                refused,
                Err(DomainError::Precondition(Reason::ManualDistribution, _))
            ),
            "a plan that distributes by hand has no queue: {refused:?}"
        );
        plan.distribution = Distribution::Auto {
            prefer_related: false,
            keep_related: false,
            strategy: crate::domain::plan::Strategy::RoundRobin,
            response: None,
        };
        plan.managers = vec!["m1".into()];
        let deal = waiting.into_deal(&plan, Uuid::new_v4(), now).unwrap();
        assert_eq!(
            (deal.waiting_since, deal.manager_id.as_deref()),
            (Some(now), None)
        );
        let (assigned, _) = deal.assign(&plan, Some("m1".into()), false, now).unwrap();
        assert_eq!(assigned.waiting_since, None, "an assignment ends the wait");
        let won = stage_of(&plan, StageKind::Won);
        let (closed, _) = deal.move_to(&plan, won, None, now).unwrap();
        assert_eq!(closed.waiting_since, None, "a close ends the wait");
    }

    #[test]
    fn defaults_come_from_the_plan_and_contact() {
        let plan = plan();
        let deal = new_deal(&plan)
            .into_deal(&plan, Uuid::new_v4(), OffsetDateTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(deal.stage_id, plan.stages[0].id);
        assert_eq!(deal.amount, plan.average_amount);
        assert_eq!(deal.title, "Ann");
        assert_eq!(deal.status, DealStatus::Open);
        assert_eq!(deal.version, 1);
    }

    #[test]
    fn a_new_deal_can_start_in_any_open_stage_but_not_a_closed_one() {
        let plan = plan();
        let mut input = new_deal(&plan);
        input.stage_id = Some(plan.stages[1].id);
        let deal = input
            .clone()
            .into_deal(&plan, Uuid::new_v4(), OffsetDateTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(deal.stage_id, plan.stages[1].id);

        input.stage_id = Some(plan.stages[2].id);
        let err = input
            .into_deal(&plan, Uuid::new_v4(), OffsetDateTime::UNIX_EPOCH)
            .unwrap_err();
        assert!(matches!(err, DomainError::Invalid { field, .. } if field == "stage_id"));
    }

    /// The first stage of `plan` of `kind`.
    fn stage_of(plan: &Plan, kind: StageKind) -> Uuid {
        plan.stages.iter().find(|s| s.kind == kind).unwrap().id
    }

    fn deal_in(plan: &Plan) -> Deal {
        new_deal(plan)
            .into_deal(plan, Uuid::new_v4(), OffsetDateTime::UNIX_EPOCH)
            .unwrap()
    }

    #[test]
    fn only_the_manager_accepts_and_a_new_manager_or_an_escalation_starts_over() {
        let mut plan = plan();
        plan.managers = vec!["m1".into(), "m2".into(), "m3".into()];
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1);
        let later = now + time::Duration::minutes(1);
        let (deal, _) = deal_in(&plan)
            .assign(&plan, Some("m1".into()), false, now)
            .unwrap();
        // Given by the distributor, under a deadline.
        let deal = Deal {
            deadline_seconds: Some(60),
            ..deal
        };
        assert!(matches!(
            deal.accept("m2", now),
            Err(DomainError::NotTheManager)
        ));
        let (accepted, change) = deal.accept("m1", now).unwrap();
        assert_eq!(
            (accepted.accepted_at, change),
            (Some(now), Change::Accepted)
        );
        // Any change by the manager accepts; by someone else, it does not.
        let (edited, _) = deal
            .edit(
                DealEdit {
                    title: Some("new".into()),
                    ..Default::default()
                },
                now,
            )
            .unwrap();
        assert_eq!(edited.clone().accepted_by("boss").accepted_at, None);
        assert_eq!(edited.accepted_by("m1").accepted_at, Some(now));
        // The distributor's reassignment names the assignment that missed its deadline:
        // refused once the deal is accepted or assigned anew, whatever its version.
        let missed = deal.assigned_at;
        let late = |d: &Deal| d.reassign(&plan, (Some("m2".into()), missed), "missed".into(), now);
        assert!(matches!(
            late(&accepted),
            Err(DomainError::Precondition(Reason::AssignmentEnded, _))
        ));
        let (given, _) = deal.assign(&plan, Some("m3".into()), false, later).unwrap();
        assert!(matches!(
            late(&given),
            Err(DomainError::Precondition(Reason::AssignmentEnded, _))
        ));
        let (retitled, _) = deal
            .edit(
                DealEdit {
                    title: Some("by someone else".into()),
                    ..Default::default()
                },
                later,
            )
            .unwrap();
        let (reassigned, _) = late(&retitled).expect("still the missed assignment");
        assert_eq!(reassigned.manager_id.as_deref(), Some("m2"));
        // A new manager has not accepted it.
        let (moved_on, change) = accepted
            .reassign(&plan, (Some("m2".into()), None), "missed".into(), now)
            .unwrap();
        assert_eq!(moved_on.accepted_at, None);
        assert_eq!(
            change,
            Change::Reassigned {
                from: Some("m1".into()),
                to: Some("m2".into()),
                note: "missed".into(),
                missed_assigned_at: Some(now),
            }
        );
        // Escalated: unassigned, waiting for a person, until someone assigns or closes it.
        let (escalated, _) = moved_on
            .reassign(&plan, (None, None), "again".into(), now)
            .unwrap();
        assert!(escalated.is_escalated());
        assert_eq!(escalated.waiting_since, Some(now));
        let (taken, _) = escalated
            .assign(&plan, Some("m1".into()), false, now)
            .unwrap();
        assert_eq!((taken.escalated_at, taken.waiting_since), (None, None));
    }

    #[test]
    fn the_time_to_accept_is_working_time() {
        use salesplan_platform::schedule::{Hours, Schedule};
        use time::macros::datetime;
        let mut plan = plan();
        plan.managers = vec!["m1".into()];
        let mut schedule = Schedule {
            time_zone: "Europe/Berlin".into(),
            ..Schedule::default()
        };
        for day in schedule.week.iter_mut().take(5) {
            day.push(Hours {
                start: 9 * 60,
                end: 17 * 60,
            });
        }
        // Given Friday 16:30 Berlin time, accepted Monday 9:30: an hour of work.
        let (deal, _) = deal_in(&plan)
            .assign(
                &plan,
                Some("m1".into()),
                false,
                datetime!(2026-12-04 15:30 UTC),
            )
            .unwrap();
        assert!(!deal.needs_timing());
        let (accepted, _) = deal.accept("m1", datetime!(2026-12-07 08:30 UTC)).unwrap();
        assert!(accepted.needs_timing());
        let timed = accepted.timed(&schedule);
        assert_eq!(timed.accept_seconds, Some(3_600));
        assert!(!timed.needs_timing());
    }

    #[test]
    fn only_the_distributors_assignments_run_under_the_deadline_and_late_is_past_it() {
        use salesplan_platform::schedule::Schedule;
        let mut plan = plan();
        plan.managers = vec!["m1".into(), "m2".into()];
        plan.distribution = Distribution::Auto {
            prefer_related: false,
            keep_related: false,
            strategy: crate::domain::plan::Strategy::RoundRobin,
            response: Some(crate::domain::plan::Response {
                seconds: 60,
                max_reassignments: 1,
            }),
        };
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1);
        let around_the_clock = Schedule::default();
        let at = |ms: i64| now + time::Duration::milliseconds(ms);
        // Given (due by the schedule at the assignment), accepted at `ms`.
        let accepted_at = |deal: &Deal, ms: i64| {
            let deal = deal.clone().due_by(&around_the_clock);
            let (accepted, _) = deal.accept("m1", at(ms)).unwrap();
            accepted.timed(&around_the_clock)
        };
        // A lead the distributor created with its manager: under the plan's deadline.
        let lead = NewDeal {
            manager_id: Some("m1".into()),
            by_distributor: true,
            ..new_deal(&plan)
        }
        .into_deal(&plan, Uuid::new_v4(), now)
        .unwrap();
        assert_eq!((lead.deadline_seconds, lead.needs_due()), (Some(60), true));
        assert_eq!(
            lead.clone().due_by(&around_the_clock).response_due_at,
            Some(at(60_000))
        );
        assert!(!accepted_at(&lead, 60_000).accepted_late, "at the deadline");
        let late = accepted_at(&lead, 60_001);
        assert_eq!(
            (late.accepted_late, late.accept_seconds),
            (true, Some(60)),
            "a millisecond past it is late, though whole seconds read 60"
        );
        // A deadline the plan ended since (the store clears the due time): not missed, and
        // the distributor's reassignment for it is refused.
        let ended = Deal {
            deadline_seconds: None,
            response_due_at: None,
            ..lead.clone()
        };
        assert!(!accepted_at(&ended, 60_001).accepted_late);
        let missed = (Some("m2".to_owned()), lead.assigned_at);
        assert!(matches!(
            ended.reassign(&plan, missed.clone(), "missed".into(), at(61_000)),
            Err(DomainError::Precondition(Reason::DeadlineEnded, _))
        ));
        assert!(
            lead.reassign(&plan, missed, "missed".into(), at(61_000))
                .is_ok()
        );
        // The due time is the one at the assignment: a schedule given later (Mondays only;
        // this is a Thursday) does not move it, though it measures the time to accept.
        let mut off_today = Schedule::default();
        off_today.week[0].push(salesplan_platform::schedule::Hours {
            start: 9 * 60,
            end: 17 * 60,
        });
        let (accepted, _) = lead
            .clone()
            .due_by(&around_the_clock)
            .accept("m1", at(90_000))
            .unwrap();
        let later = accepted.timed(&off_today);
        assert_eq!((later.accepted_late, later.accept_seconds), (true, Some(0)));
        // A person's assignment of a deal that ran under a deadline: none any more.
        let given = lead.clone().due_by(&around_the_clock);
        let (given, _) = given.assign(&plan, Some("m2".into()), false, now).unwrap();
        let given = given.under_deadline(&plan, false);
        assert_eq!(
            (given.deadline_seconds, given.response_due_at),
            (None, None)
        );
        // Closed before the deadline and reopened: no deadline runs any more.
        let won = stage_of(&plan, StageKind::Won);
        let (closed, _) = lead
            .clone()
            .due_by(&around_the_clock)
            .move_to(&plan, won, None, at(1_000))
            .unwrap();
        assert_eq!(
            (closed.deadline_seconds, closed.response_due_at),
            (None, None)
        );
        let (reopened, _) = closed.reopen(&plan, at(2_000)).unwrap();
        assert!(!accepted_at(&reopened, 600_000).accepted_late);
        // The distributor's placement and reassignment run under it; an escalation (no
        // manager) has none.
        let placed = deal_in(&plan)
            .assign(&plan, Some("m1".into()), false, now)
            .unwrap()
            .0
            .under_deadline(&plan, true);
        assert!(accepted_at(&placed, 61_000).accepted_late);
        let (moved_on, _) = lead
            .reassign(&plan, (Some("m2".into()), None), "missed".into(), now)
            .unwrap();
        assert_eq!(moved_on.deadline_seconds, Some(60));
        let (escalated, _) = moved_on
            .reassign(&plan, (None, None), "again".into(), now)
            .unwrap();
        assert_eq!(escalated.deadline_seconds, None);
        // Created by a person with a manager: no deadline.
        let by_person = NewDeal {
            manager_id: Some("m1".into()),
            ..new_deal(&plan)
        }
        .into_deal(&plan, Uuid::new_v4(), now)
        .unwrap();
        assert_eq!(by_person.deadline_seconds, None);
    }

    fn with_reasons(mut plan: Plan, require: bool) -> (Plan, Uuid) {
        plan.set_loss_reasons(require, vec![(None, "Too expensive".into())], Uuid::new_v4)
            .unwrap();
        let id = plan.loss_reasons[0].id;
        (plan, id)
    }

    #[test]
    fn lost_needs_an_active_reason_when_the_plan_requires_one() {
        let (plan, reason) = with_reasons(plan(), true);
        let lost = plan.stages[3].id;
        let deal = deal_in(&plan);
        let err = deal
            .move_to(&plan, lost, None, OffsetDateTime::UNIX_EPOCH)
            .unwrap_err();
        assert_eq!(err, DomainError::LossReasonRequired);
        let err = deal
            .move_to(
                &plan,
                lost,
                Some(Uuid::new_v4()),
                OffsetDateTime::UNIX_EPOCH,
            )
            .unwrap_err();
        assert!(matches!(err, DomainError::Invalid { .. }));
        let (closed, change) = deal
            .move_to(&plan, lost, Some(reason), OffsetDateTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(closed.status, DealStatus::Lost);
        assert_eq!(closed.loss_reason_id, Some(reason));
        assert_eq!(closed.stage_before_close_id, Some(deal.stage_id));
        assert_eq!(closed.version, deal.version + 1);
        assert!(matches!(
            change,
            Change::Closed {
                status: DealStatus::Lost,
                ..
            }
        ));

        // Archived reasons cannot be chosen any more.
        let mut archived = plan.clone();
        archived
            .set_loss_reasons(false, vec![], Uuid::new_v4)
            .unwrap();
        assert!(
            deal.move_to(&archived, lost, Some(reason), OffsetDateTime::UNIX_EPOCH)
                .is_err()
        );
        assert!(
            deal.move_to(&archived, lost, None, OffsetDateTime::UNIX_EPOCH)
                .is_ok()
        );
    }

    #[test]
    fn closed_deals_do_not_move_until_reopened() {
        let plan = plan();
        let won = plan.stages[2].id;
        let (closed, _) = deal_in(&plan)
            .move_to(&plan, won, None, OffsetDateTime::UNIX_EPOCH)
            .unwrap();
        let err = closed
            .move_to(&plan, plan.stages[0].id, None, OffsetDateTime::UNIX_EPOCH)
            .unwrap_err();
        assert!(matches!(err, DomainError::Precondition(..)));
    }

    #[test]
    fn reopen_from_lost_returns_to_the_stage_it_left_and_from_won_to_the_last_open() {
        let plan = plan();
        let (first, last_open, won, lost) = (
            plan.stages[0].id,
            plan.stages[1].id,
            plan.stages[2].id,
            plan.stages[3].id,
        );
        let deal = deal_in(&plan);
        assert_eq!(deal.stage_id, first);

        let (lost_deal, _) = deal
            .move_to(&plan, lost, None, OffsetDateTime::UNIX_EPOCH)
            .unwrap();
        let (reopened, change) = lost_deal.reopen(&plan, OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(reopened.stage_id, first);
        assert_eq!(reopened.status, DealStatus::Open);
        assert_eq!((reopened.closed_at, reopened.loss_reason_id), (None, None));
        assert_eq!(
            change,
            Change::Reopened {
                from: lost,
                to: first,
                status: DealStatus::Lost
            }
        );

        let (won_deal, _) = deal
            .move_to(&plan, won, None, OffsetDateTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(
            won_deal
                .reopen(&plan, OffsetDateTime::UNIX_EPOCH)
                .unwrap()
                .0
                .stage_id,
            last_open
        );

        // The remembered stage was deleted: the last OPEN stage.
        let mut changed = plan.clone();
        changed.delete_stage(first, false, None).unwrap();
        assert_eq!(
            lost_deal
                .reopen(&changed, OffsetDateTime::UNIX_EPOCH)
                .unwrap()
                .0
                .stage_id,
            last_open
        );

        assert!(matches!(
            deal.reopen(&plan, OffsetDateTime::UNIX_EPOCH),
            Err(DomainError::Precondition(..))
        ));
    }

    #[test]
    fn only_owners_or_edit_all_change_a_deal() {
        let plan = plan();
        let mut deal = deal_in(&plan);
        deal.manager_id = Some("m1".into());
        assert!(may_change("m1", false, &deal));
        assert!(!may_change("m2", false, &deal));
        assert!(may_change("m2", true, &deal));
        assert!(!may_assign("m1", false, &deal, Some("m2")));
        deal.manager_id = None;
        assert!(
            may_assign("m2", false, &deal, Some("m2")),
            "taking an unassigned deal"
        );
        assert!(!may_assign("m2", false, &deal, Some("m3")));
    }

    proptest::proptest! {
        #[test]
        fn reopen_always_lands_on_an_open_stage(
            close_from in 0usize..4,
            lose in proptest::bool::ANY,
            deletions in proptest::collection::vec(0usize..6, 0..5),
            additions in 0usize..3,
        ) {
            let mut plan = plan();
            for i in 0..additions {
                plan.add_stage(Uuid::new_v4(), format!("extra {i}"), "#000000".into(), Some(i)).unwrap();
            }
            let open: Vec<Uuid> = plan.stages.iter().filter(|s| s.kind == StageKind::Open).map(|s| s.id).collect();
            let mut deal = deal_in(&plan);
            deal.stage_id = open[close_from % open.len()];
            let target = if lose { plan.stage_of_kind(StageKind::Lost).unwrap().id } else { plan.stage_of_kind(StageKind::Won).unwrap().id };
            let (closed, _) = deal.move_to(&plan, target, None, OffsetDateTime::UNIX_EPOCH).unwrap();
            for d in deletions {
                let id = plan.stages[d % plan.stages.len()].id;
                let _ = plan.delete_stage(id, false, None);
            }
            let (reopened, _) = closed.reopen(&plan, OffsetDateTime::UNIX_EPOCH).unwrap();
            let stage = plan.stage(reopened.stage_id).unwrap();
            proptest::prop_assert_eq!(stage.kind, StageKind::Open);
        }
    }

    #[test]
    fn the_manager_must_be_a_member() {
        let plan = plan();
        let mut input = new_deal(&plan);
        input.manager_id = Some("stranger".into());
        let err = input
            .into_deal(&plan, Uuid::new_v4(), OffsetDateTime::UNIX_EPOCH)
            .unwrap_err();
        assert!(matches!(err, DomainError::Precondition(..)));
    }
}

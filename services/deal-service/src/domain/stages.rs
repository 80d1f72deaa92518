//! Editing a plan's stages. Whatever the edit, the board keeps its shape: at least one
//! OPEN stage, then exactly one WON and one LOST stage, positions 0, 1, 2, … in order.

use uuid::Uuid;

use super::{
    DomainError, Reason,
    plan::{Plan, Stage, StageKind},
};

pub const MAX_STAGES: usize = 50;
pub const DEFAULT_COLOR: &str = "#9e9e9e";

/// OPEN stages in their order, then WON, then LOST; positions renumbered.
fn normalise(stages: Vec<Stage>) -> Vec<Stage> {
    let rank = |s: &Stage| match s.kind {
        StageKind::Open => 0,
        StageKind::Won => 1,
        StageKind::Lost => 2,
    };
    let mut stages = stages;
    // Stable: OPEN stages keep the order they were given in.
    stages.sort_by_key(rank);
    for (position, stage) in stages.iter_mut().enumerate() {
        stage.position = position as i32;
    }
    stages
}

/// Whether `stages` has the board's shape (used by tests and as a guard before saving).
pub fn well_formed(stages: &[Stage]) -> bool {
    let kinds: Vec<StageKind> = stages.iter().map(|s| s.kind).collect();
    let open = kinds.iter().take_while(|k| **k == StageKind::Open).count();
    open >= 1
        && kinds[open..] == [StageKind::Won, StageKind::Lost]
        && stages
            .iter()
            .enumerate()
            .all(|(i, s)| s.position == i as i32)
}

impl Plan {
    /// Adds an OPEN stage at `position` among the OPEN stages (past the end: last).
    pub fn add_stage(
        &mut self,
        id: Uuid,
        name: String,
        color: String,
        position: Option<usize>,
    ) -> Result<(), DomainError> {
        if self.stages.len() >= MAX_STAGES {
            return Err(DomainError::Precondition(
                Reason::StageCapReached,
                format!("a plan has at most {MAX_STAGES} stages"),
            ));
        }
        self.check_unique_name(&name, None)?;
        let open = self.open_count();
        let at = position.unwrap_or(open).min(open);
        let stage = Stage {
            id,
            name,
            color,
            kind: StageKind::Open,
            position: 0,
        };
        let mut stages = std::mem::take(&mut self.stages);
        stages.insert(at, stage);
        self.stages = normalise(stages);
        Ok(())
    }

    pub fn update_stage(
        &mut self,
        id: Uuid,
        name: Option<String>,
        color: Option<String>,
    ) -> Result<(), DomainError> {
        if let Some(name) = &name {
            self.check_unique_name(name, Some(id))?;
        }
        let stage = self
            .stages
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| DomainError::invalid("stage_id", "not a stage of this plan"))?;
        if let Some(name) = name {
            stage.name = name;
        }
        if let Some(color) = color {
            stage.color = color;
        }
        Ok(())
    }

    /// `order`: every OPEN stage id, once, in the new order.
    pub fn reorder_stages(&mut self, order: &[Uuid]) -> Result<(), DomainError> {
        let open: Vec<&Stage> = self
            .stages
            .iter()
            .filter(|s| s.kind == StageKind::Open)
            .collect();
        let mut sorted_given = order.to_vec();
        sorted_given.sort();
        sorted_given.dedup();
        let mut sorted_open: Vec<Uuid> = open.iter().map(|s| s.id).collect();
        sorted_open.sort();
        if sorted_given.len() != order.len() || sorted_given != sorted_open {
            return Err(DomainError::invalid(
                "open_stage_ids",
                "must list every OPEN stage of the plan exactly once (WON and LOST stay last)",
            ));
        }
        let mut stages: Vec<Stage> = order
            .iter()
            .filter_map(|id| self.stages.iter().find(|s| s.id == *id).cloned())
            .collect();
        stages.extend(
            self.stages
                .iter()
                .filter(|s| s.kind != StageKind::Open)
                .cloned(),
        );
        self.stages = normalise(stages);
        Ok(())
    }

    /// Removes stage `id`. `holds_deals` says whether deals are in it; they then need a
    /// `target` (another OPEN stage), which is returned for the caller to move them.
    pub fn delete_stage(
        &mut self,
        id: Uuid,
        holds_deals: bool,
        target: Option<Uuid>,
    ) -> Result<Option<Uuid>, DomainError> {
        let stage = self
            .stage(id)
            .ok_or_else(|| DomainError::invalid("stage_id", "not a stage of this plan"))?;
        if stage.kind != StageKind::Open {
            return Err(DomainError::Precondition(
                Reason::ProtectedStage,
                "the WON and LOST stages cannot be deleted".into(),
            ));
        }
        if self.open_count() == 1 {
            return Err(DomainError::Precondition(
                Reason::LastOpenStage,
                "a plan keeps at least one OPEN stage".into(),
            ));
        }
        let target = match target {
            Some(target) => {
                let t = self.stage(target).ok_or_else(|| {
                    DomainError::invalid("target_stage_id", "not a stage of this plan")
                })?;
                if t.kind != StageKind::Open || t.id == id {
                    return Err(DomainError::invalid(
                        "target_stage_id",
                        "must be another OPEN stage of the plan",
                    ));
                }
                Some(target)
            }
            None if holds_deals => {
                return Err(DomainError::Precondition(
                    Reason::StageHoldsDeals,
                    "the stage holds deals: give target_stage_id to move them to".into(),
                ));
            }
            None => None,
        };
        let stages = std::mem::take(&mut self.stages)
            .into_iter()
            .filter(|s| s.id != id)
            .collect();
        self.stages = normalise(stages);
        Ok(target.filter(|_| holds_deals))
    }

    fn open_count(&self) -> usize {
        self.stages
            .iter()
            .filter(|s| s.kind == StageKind::Open)
            .count()
    }

    fn check_unique_name(&self, name: &str, except: Option<Uuid>) -> Result<(), DomainError> {
        let taken = self
            .stages
            .iter()
            .any(|s| Some(s.id) != except && s.name.to_lowercase() == name.to_lowercase());
        if taken {
            return Err(DomainError::invalid("name", "another stage has this name"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Money,
        plan::{Distribution, PlanDraft},
    };
    use proptest::prelude::*;
    use time::OffsetDateTime;

    pub fn plan() -> Plan {
        PlanDraft {
            name: "P".into(),
            average_amount: Money {
                amount_minor: 0,
                currency: "USD".into(),
            },
            chat_label: "P".into(),
            distribution: Distribution::Manual,
            managers: vec![],
            terms: vec![],
        }
        .into_plan(
            "acme",
            Uuid::new_v4(),
            OffsetDateTime::UNIX_EPOCH,
            Uuid::new_v4,
        )
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.stages.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn stages_are_added_among_the_open_ones() {
        let mut p = plan();
        p.add_stage(
            Uuid::new_v4(),
            "Qualified".into(),
            "#000000".into(),
            Some(1),
        )
        .unwrap();
        p.add_stage(
            Uuid::new_v4(),
            "Proposal".into(),
            "#000000".into(),
            Some(99),
        )
        .unwrap();
        assert_eq!(
            names(&p),
            ["New", "Qualified", "In progress", "Proposal", "Won", "Lost"]
        );
        assert!(well_formed(&p.stages));
        let err = p
            .add_stage(Uuid::new_v4(), "new".into(), "#000000".into(), None)
            .unwrap_err();
        assert!(matches!(err, DomainError::Invalid { field, .. } if field == "name"));
    }

    #[test]
    fn reorder_takes_every_open_stage_once() {
        let mut p = plan();
        let (new, progress) = (p.stages[0].id, p.stages[1].id);
        p.reorder_stages(&[progress, new]).unwrap();
        assert_eq!(names(&p), ["In progress", "New", "Won", "Lost"]);
        assert!(p.reorder_stages(&[progress]).is_err());
        assert!(p.reorder_stages(&[progress, progress]).is_err());
        let won = p.stages[2].id;
        assert!(p.reorder_stages(&[progress, new, won]).is_err());
    }

    #[test]
    fn deleting_needs_a_target_while_deals_are_there() {
        let mut p = plan();
        let (new, progress, won) = (p.stages[0].id, p.stages[1].id, p.stages[2].id);
        assert!(matches!(
            p.clone().delete_stage(new, true, None),
            Err(DomainError::Precondition(..))
        ));
        assert!(matches!(
            p.clone().delete_stage(won, false, None),
            Err(DomainError::Precondition(..))
        ));
        assert!(p.clone().delete_stage(new, true, Some(won)).is_err());
        assert_eq!(
            p.delete_stage(new, true, Some(progress)).unwrap(),
            Some(progress)
        );
        assert_eq!(names(&p), ["In progress", "Won", "Lost"]);
        assert!(matches!(
            p.delete_stage(progress, false, None),
            Err(DomainError::Precondition(..))
        ));
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Add(usize),
        Reorder(u64),
        Delete(usize),
        Rename(usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (0usize..10).prop_map(Edit::Add),
            any::<u64>().prop_map(Edit::Reorder),
            (0usize..10).prop_map(Edit::Delete),
            (0usize..10).prop_map(Edit::Rename),
        ]
    }

    proptest! {
        #[test]
        fn any_sequence_of_edits_keeps_won_and_lost_last(edits in proptest::collection::vec(edit(), 0..40)) {
            let mut p = plan();
            for (n, e) in edits.into_iter().enumerate() {
                let pick = |i: usize| p.stages[i % p.stages.len()].id;
                let _ = match e {
                    Edit::Add(at) => p.add_stage(Uuid::new_v4(), format!("s{n}"), DEFAULT_COLOR.into(), Some(at)),
                    Edit::Reorder(seed) => {
                        let mut open: Vec<Uuid> = p.stages.iter().filter(|s| s.kind == StageKind::Open).map(|s| s.id).collect();
                        let len = open.len();
                        open.rotate_left((seed as usize) % len);
                        p.reorder_stages(&open)
                    }
                    Edit::Delete(i) => { let id = pick(i); p.delete_stage(id, n % 2 == 0, Some(pick(0))).map(|_| ()) }
                    Edit::Rename(i) => { let id = pick(i); p.update_stage(id, Some(format!("r{n}")), None) }
                };
                prop_assert!(well_formed(&p.stages), "{:?}", p.stages);
            }
        }
    }
}

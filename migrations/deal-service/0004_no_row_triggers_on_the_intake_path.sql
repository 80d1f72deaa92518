-- Foreign keys run a lookup (and take a KEY SHARE lock) per inserted row: three per new
-- deal (its plan, its stage, its history row's deal) — about 15 % of the intake's cost
-- with the deal rows alone (docs/performance.md). The application already holds what they
-- would check, so they go:
--  * a deal's plan and stage come from the plan it loaded and share-locked in the same
--    transaction; a stage is deleted only under the plan's update lock, after its deals
--    moved (delete_stage), and plans are archived, never deleted;
--  * a history row is written in the transaction that inserted or changed its deal, and
--    deals are never deleted.
-- Ids stay uuids; `just chaos` and the deal-service tests check the deals against plans.
ALTER TABLE deals DROP CONSTRAINT deals_plan_id_fkey;
ALTER TABLE deals DROP CONSTRAINT deals_stage_id_fkey;
ALTER TABLE deal_history DROP CONSTRAINT deal_history_deal_id_fkey;

-- Deal ids arrive in events: every lookup of one is scoped by its account too.
ALTER TABLE deal_view ADD COLUMN account_id text NOT NULL DEFAULT '';
UPDATE deal_view v SET account_id = p.account_id FROM plans p WHERE p.plan_id = v.plan_id;
ALTER TABLE deal_view ALTER COLUMN account_id DROP DEFAULT;
-- Assignments are found by (account, intake id) and listed per account.
CREATE INDEX assignments_by_account_deal ON assignments (account_id, deal_id) WHERE deal_id IS NOT NULL;
DROP INDEX assignments_by_deal;

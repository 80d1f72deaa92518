-- Read your writes for intake answers: an accepted lead's token names its
-- intake id, which is the idempotency key of the deal it becomes. A report given the
-- token waits until the deal is in the read model. Deals created before this migration
-- have none (no token ever named them); a rebuild fills them in.
ALTER TABLE deals ADD COLUMN intake_id uuid;
CREATE INDEX deals_by_intake ON deals (intake_id, account_id) WHERE intake_id IS NOT NULL;

-- A plan's deadline removed, or the plan archived, ends the deadlines running in it (issue
-- 20): the plan change clears the due times of its deals given under one and not accepted.
-- Those are few beside the plan's deals, so they are found by their own small index, not
-- by a scan of every deal of the plan.
CREATE INDEX deals_under_deadline ON deals (account_id, plan_id)
    WHERE deadline_seconds IS NOT NULL AND accepted_at IS NULL;

-- Response deadlines (issue 20). A plan's deadline (seconds of the manager's working time,
-- 0: none) and how many times a deal not accepted in time is reassigned before it waits for
-- a person; existing plans get none. A deal's acceptance by its manager, and its escalation
-- (waiting for a person); existing deals are neither (no deadline ran for them). Adding
-- nullable columns rewrites no row.
ALTER TABLE plans ADD COLUMN response_seconds integer NOT NULL DEFAULT 0,
    ADD COLUMN max_reassignments integer NOT NULL DEFAULT 0;
-- When the current manager got the deal, and the working time (seconds, by their schedule)
-- they took to accept it: what ReportService.ResponseTimes reports. Existing deals have
-- neither (their assignments were never timed).
ALTER TABLE deals ADD COLUMN accepted_at timestamptz, ADD COLUMN escalated_at timestamptz,
    ADD COLUMN assigned_at timestamptz, ADD COLUMN accept_seconds bigint;

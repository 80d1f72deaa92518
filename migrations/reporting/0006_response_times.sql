-- Response times (issue 20): one row per time a deal got a manager (the deal and when), with
-- when and how fast (the manager's working time, measured by deal-service) they accepted it,
-- and whether the distributor took it from them after a missed response deadline.
-- ReportService.ResponseTimes reads it by the time of assignment. Existing deals have no
-- rows: their assignments were never timed.
CREATE TABLE assignments (
    deal_id        uuid        NOT NULL,
    assigned_at    timestamptz NOT NULL,
    account_id     text        NOT NULL,
    plan_id        uuid        NOT NULL,
    manager_id     text        NOT NULL,
    accepted_at    timestamptz,
    accept_seconds bigint,
    missed         boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (deal_id, assigned_at)
);
CREATE INDEX assignments_by_time ON assignments (account_id, assigned_at);

-- distributor: its own copy of each plan's settings (fed by plan events) and every
-- assignment decision it made, keyed by the intake event, so a redelivered lead gets the
-- same decision and the round-robin cursor moves exactly once per lead.

CREATE TABLE plans (
    plan_id         uuid PRIMARY KEY,
    account_id      text        NOT NULL,
    -- The plan version of the last applied event: older events change nothing.
    version         bigint      NOT NULL,
    mode            text        NOT NULL CHECK (mode IN ('manual', 'auto')),
    prefer_related  boolean     NOT NULL,
    strategy        text        NOT NULL CHECK (strategy IN ('random', 'round_robin', 'least_open_deals')),
    -- In round-robin order.
    managers        text[]      NOT NULL,
    archived        boolean     NOT NULL,
    -- Leads assigned by the strategy so far: the next round-robin position.
    rr_cursor       bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE assignments (
    intake_id   uuid PRIMARY KEY,
    account_id  text        NOT NULL,
    plan_id     uuid        NOT NULL,
    manager_id  text,
    -- Why this manager (or none), for people and for ExplainAssignment.
    reason      text        NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assignments_by_plan ON assignments (plan_id, decided_at);

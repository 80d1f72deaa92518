-- Names for reports (from plan events) and kept totals of closed deals, so the loss-reasons
-- report sums a few rows instead of scanning every deal.

CREATE TABLE plans (
    plan_id     uuid PRIMARY KEY,
    account_id  text   NOT NULL,
    name        text   NOT NULL,
    version     bigint NOT NULL
);

CREATE TABLE stages (
    stage_id  uuid PRIMARY KEY,
    plan_id   uuid    NOT NULL,
    name      text    NOT NULL,
    position  integer NOT NULL,
    -- Gone from the plan; still names the deals lost from it.
    deleted   boolean NOT NULL DEFAULT false
);

CREATE TABLE reasons (
    reason_id  uuid PRIMARY KEY,
    plan_id    uuid    NOT NULL,
    name       text    NOT NULL,
    archived   boolean NOT NULL
);

-- Closed deals per plan, manager ('' = none), status and reason (nil uuid = none): all time,
-- and per UTC day of closing (for periods).
CREATE TABLE closed_totals (
    account_id  text   NOT NULL,
    plan_id     uuid   NOT NULL,
    manager_id  text   NOT NULL,
    status      text   NOT NULL CHECK (status IN ('won', 'lost')),
    reason_id   uuid   NOT NULL,
    deals       bigint NOT NULL,
    PRIMARY KEY (account_id, plan_id, manager_id, status, reason_id)
);

CREATE TABLE closed_daily (
    account_id  text   NOT NULL,
    day         date   NOT NULL,
    plan_id     uuid   NOT NULL,
    manager_id  text   NOT NULL,
    status      text   NOT NULL CHECK (status IN ('won', 'lost')),
    reason_id   uuid   NOT NULL,
    deals       bigint NOT NULL,
    PRIMARY KEY (account_id, day, plan_id, manager_id, status, reason_id)
);

-- The partial days at the edges of a period are counted from the deals themselves.
CREATE INDEX deals_closed ON deals (account_id, closed_at) WHERE status IN ('won', 'lost');

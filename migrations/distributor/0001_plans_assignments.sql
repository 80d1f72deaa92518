-- distributor: its own copy of each plan's settings (fed by plan events), every
-- assignment decision it made (keyed by the intake event, so a redelivered lead gets the
-- same decision and the turn moves exactly once per lead), open deals per manager and
-- plan, and the manager each contact last had.

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
    -- Who took the last turn, and where they stood then.
    rr_last         text,
    rr_last_index   bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE assignments (
    intake_id    uuid PRIMARY KEY,
    account_id   text        NOT NULL,
    plan_id      uuid        NOT NULL,
    manager_id   text,
    reason       text        NOT NULL,
    -- The whole decision (salesplan.v1.Assignment), for ExplainAssignment.
    explanation  bytea       NOT NULL,
    deal_id      uuid,
    decided_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assignments_by_deal ON assignments (deal_id) WHERE deal_id IS NOT NULL;

-- Open deals per manager and plan: raised by each decision, then kept exact by deal events.
CREATE TABLE open_deals (
    plan_id     uuid   NOT NULL,
    manager_id  text   NOT NULL,
    open        bigint NOT NULL,
    PRIMARY KEY (plan_id, manager_id)
);

-- What the distributor last knew of each deal, to turn events into count changes.
CREATE TABLE deal_view (
    deal_id     uuid PRIMARY KEY,
    plan_id     uuid    NOT NULL,
    manager_id  text,
    open        boolean NOT NULL,
    version     bigint  NOT NULL
);

-- The manager of each contact's most recent deal in the account (prefer_related).
CREATE TABLE contact_managers (
    account_id   text        NOT NULL,
    contact_key  text        NOT NULL,
    manager_id   text        NOT NULL,
    deal_created timestamptz NOT NULL,
    PRIMARY KEY (account_id, contact_key)
);

-- reporting: a read model of deals built from deal events. Each row holds the newest
-- version seen; an older or repeated event changes nothing.

CREATE TABLE deals (
    deal_id                uuid PRIMARY KEY,
    account_id             text        NOT NULL,
    plan_id                uuid        NOT NULL,
    stage_id               uuid        NOT NULL,
    manager_id             text,
    status                 text        NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    amount_minor           bigint      NOT NULL,
    currency               text        NOT NULL,
    loss_reason_id         uuid,
    stage_before_close_id  uuid,
    closed_at              timestamptz,
    version                bigint      NOT NULL,
    updated_at             timestamptz NOT NULL
);
CREATE INDEX deals_by_plan ON deals (account_id, plan_id, stage_id);
CREATE INDEX deals_by_manager ON deals (account_id, manager_id, plan_id);

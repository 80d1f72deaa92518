-- deal-service: the system of record for plans, stages, deals and their history.
-- Every table carries the account; every query filters on it.

CREATE TABLE plans (
    id                    uuid PRIMARY KEY,
    account_id            text        NOT NULL,
    name                  text        NOT NULL,
    average_amount_minor  bigint      NOT NULL CHECK (average_amount_minor >= 0),
    currency              text        NOT NULL,
    chat_label            text        NOT NULL,
    distribution_mode     text        NOT NULL CHECK (distribution_mode IN ('manual', 'auto')),
    prefer_related        boolean     NOT NULL DEFAULT false,
    strategy              text        NOT NULL CHECK (strategy IN ('random', 'round_robin', 'least_open_deals')),
    archived              boolean     NOT NULL DEFAULT false,
    version               bigint      NOT NULL,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL
);
CREATE INDEX plans_by_account ON plans (account_id, created_at);

-- Managers of a plan, in the order they were added (round-robin order).
CREATE TABLE plan_managers (
    plan_id     uuid    NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    manager_id  text    NOT NULL,
    position    integer NOT NULL,
    PRIMARY KEY (plan_id, manager_id)
);

CREATE TABLE stages (
    id        uuid    PRIMARY KEY,
    plan_id   uuid    NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    name      text    NOT NULL,
    color     text    NOT NULL,
    kind      text    NOT NULL CHECK (kind IN ('open', 'won', 'lost')),
    position  integer NOT NULL
);
CREATE INDEX stages_by_plan ON stages (plan_id, position);

CREATE TABLE deals (
    id                     uuid PRIMARY KEY,
    account_id             text        NOT NULL,
    plan_id                uuid        NOT NULL REFERENCES plans (id),
    stage_id               uuid        NOT NULL REFERENCES stages (id),
    status                 text        NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    manager_id             text,
    contact_external_id    text        NOT NULL DEFAULT '',
    contact_name           text        NOT NULL DEFAULT '',
    contact_email          text        NOT NULL DEFAULT '',
    contact_phone          text        NOT NULL DEFAULT '',
    -- Digits only: phone search ignores how the number was written.
    contact_phone_digits   text        NOT NULL DEFAULT '',
    title                  text        NOT NULL,
    amount_minor           bigint      NOT NULL CHECK (amount_minor >= 0),
    currency               text        NOT NULL,
    loss_reason_id         uuid,
    stage_before_close_id  uuid,
    idempotency_key        text        NOT NULL,
    version                bigint      NOT NULL,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    closed_at              timestamptz
);
-- The same key never makes a second deal, however late the retry comes.
CREATE UNIQUE INDEX deals_idempotency ON deals (account_id, idempotency_key);
CREATE INDEX deals_by_plan_stage ON deals (account_id, plan_id, stage_id, created_at DESC, id);
CREATE INDEX deals_by_manager ON deals (account_id, plan_id, manager_id, stage_id);
CREATE INDEX deals_by_contact ON deals (account_id, contact_external_id, created_at DESC)
    WHERE contact_external_id <> '';

-- The action log: who did what to a deal, and when.
CREATE TABLE deal_history (
    id          bigserial   PRIMARY KEY,
    account_id  text        NOT NULL,
    deal_id     uuid        NOT NULL REFERENCES deals (id),
    at          timestamptz NOT NULL,
    actor_id    text        NOT NULL,
    action      text        NOT NULL,
    from_value  text,
    to_value    text,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX deal_history_by_deal ON deal_history (deal_id, id);

-- Transactional outbox: written in the same transaction as the change, published to
-- JetStream in id order by the relay, then deleted.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    subject     text        NOT NULL,
    message_id  text        NOT NULL,
    payload     bytea       NOT NULL,
    -- W3C trace context of the change, so the trace continues through the relay.
    headers     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

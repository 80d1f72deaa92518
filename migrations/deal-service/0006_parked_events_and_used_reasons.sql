-- Events the broker refused (too large, …): the relay parks them here with the reason and
-- moves on, so one event never holds back every account's. Listed and replayed through
-- OutboxService (salesplanctl outbox).
CREATE TABLE outbox_parked (
    -- The event's outbox id when it was parked.
    id          bigint      PRIMARY KEY,
    account_id  text        NOT NULL,
    subject     text        NOT NULL,
    message_id  text        NOT NULL,
    payload     bytea       NOT NULL,
    headers     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    reason      text        NOT NULL
);
CREATE INDEX outbox_parked_by_account ON outbox_parked (account_id, id);

-- A reason some deal was ever closed with. Reasons left out of SetLossReasons are archived
-- when used (old deals and reports still name them) and deleted when never used, so a plan
-- (and its events) cannot pile up archived reasons without bound.
ALTER TABLE loss_reasons ADD COLUMN used boolean NOT NULL DEFAULT false;
UPDATE loss_reasons SET used = true
WHERE id IN (SELECT loss_reason_id FROM deals WHERE loss_reason_id IS NOT NULL
             UNION SELECT loss_reason_id FROM deal_history WHERE loss_reason_id IS NOT NULL);

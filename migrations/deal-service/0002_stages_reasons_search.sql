-- Loss reasons, richer history, and the indexes of the list and board views.

ALTER TABLE plans ADD COLUMN require_reason boolean NOT NULL DEFAULT false;

CREATE TABLE loss_reasons (
    id        uuid    PRIMARY KEY,
    plan_id   uuid    NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    name      text    NOT NULL,
    archived  boolean NOT NULL DEFAULT false,
    position  integer NOT NULL
);
CREATE INDEX loss_reasons_by_plan ON loss_reasons (plan_id, position);

ALTER TABLE deal_history
    ADD COLUMN loss_reason_id uuid,
    ADD COLUMN status text;

-- Substring search over title, contact name, e-mail and phone digits (pg_trgm).
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;
ALTER TABLE deals ADD COLUMN search_text text GENERATED ALWAYS AS (
    lower(title) || ' ' || lower(contact_name) || ' ' || contact_email || ' ' || contact_phone_digits
) STORED;
CREATE INDEX deals_search ON deals USING gin (search_text gin_trgm_ops);

-- Board columns per manager: counts and sums from the index alone, and each column's
-- first cards in order.
DROP INDEX deals_by_manager;
CREATE INDEX deals_by_manager ON deals (account_id, plan_id, manager_id, stage_id, created_at DESC, id)
    INCLUDE (amount_minor, currency);
CREATE INDEX deals_by_stage_totals ON deals (account_id, plan_id, stage_id)
    INCLUDE (amount_minor, currency);
-- The list view's default order, per plan and across plans.
CREATE INDEX deals_by_plan_created ON deals (account_id, plan_id, created_at DESC, id);
CREATE INDEX deals_by_account_created ON deals (account_id, created_at DESC, id);
CREATE INDEX deals_by_manager_all_plans ON deals (account_id, manager_id, created_at DESC, id);
CREATE INDEX deals_by_closed ON deals (account_id, plan_id, closed_at) WHERE closed_at IS NOT NULL;

-- Capacity and the waiting queue (issue 20).
-- Each member's limit of open deals, in the order of `managers` (0: none; empty: none).
ALTER TABLE plans ADD COLUMN caps integer[] NOT NULL DEFAULT '{}';
-- When the sweep last drained the plan's queue: the sweep takes plans in that order.
ALTER TABLE plans ADD COLUMN queue_swept_at timestamptz;
-- Since when a deal waits for a manager (as its events say); the plan's queue, oldest first.
ALTER TABLE deal_view ADD COLUMN waiting_since timestamptz;
CREATE INDEX deal_view_waiting ON deal_view (plan_id, waiting_since, deal_id)
    WHERE waiting_since IS NOT NULL;
-- Assignments of waiting deals decided here and not yet made in deal-service: each is
-- AssignDeal at the deal's `version` (so a deal that changed meanwhile is not assigned
-- over). Written with the decision, in the plan's locked transaction; a relay makes them,
-- leasing each until `next_attempt` (another replica takes it after that). The decision's
-- explanation replaces the deal's in `assignments` once the order is made.
CREATE TABLE assignment_orders (
    deal_id       uuid PRIMARY KEY,
    account_id    text        NOT NULL,
    plan_id       uuid        NOT NULL,
    version       bigint      NOT NULL,
    manager_id    text        NOT NULL,
    -- Restored in the view if deal-service refuses the order.
    waiting_since timestamptz NOT NULL,
    -- The key of the deal's decision in `assignments` (its lead, or the deal itself).
    decision_key  uuid        NOT NULL,
    reason        text        NOT NULL,
    explanation   bytea       NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    next_attempt  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assignment_orders_due ON assignment_orders (next_attempt);

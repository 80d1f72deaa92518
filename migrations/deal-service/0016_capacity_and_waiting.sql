-- Capacity and the waiting queue (issue 20): a member's optional limit of open deals in
-- the plan, and when a deal started waiting for the distributor to assign it (unassigned,
-- open, left to automatic distribution; cleared by any assignment or close).
ALTER TABLE plan_managers
    ADD COLUMN max_open_deals integer CHECK (max_open_deals BETWEEN 1 AND 100000);
ALTER TABLE deals ADD COLUMN waiting_since timestamptz;
-- The queue of a plan, oldest first (ListDeals/GetBoard `waiting`); small by nature.
CREATE INDEX deals_waiting ON deals (account_id, plan_id, waiting_since, id)
    WHERE waiting_since IS NOT NULL;

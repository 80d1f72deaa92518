-- A plan member's weight (issue 20): ROUND_ROBIN shares leads in proportion to it,
-- LEAST_OPEN_DEALS divides open deals by it.
ALTER TABLE plan_managers
    ADD COLUMN weight integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 100);

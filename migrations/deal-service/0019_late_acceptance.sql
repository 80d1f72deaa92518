-- A late acceptance (issue 20). The response deadline a deal's current assignment runs under
-- (seconds of the manager's working time; set when the distributor assigns in a plan with a
-- deadline, cleared by any other assignment), and whether the manager accepted after it:
-- known even when the distributor, down or behind, never reassigned the deal. Existing deals
-- have neither. A nullable column and a constant default rewrite no row.
ALTER TABLE deals ADD COLUMN deadline_seconds bigint,
    ADD COLUMN accepted_late boolean NOT NULL DEFAULT false;

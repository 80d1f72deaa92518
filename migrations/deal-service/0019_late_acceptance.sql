-- A late acceptance (issue 20). The response deadline a deal's current assignment runs under
-- (seconds of the manager's working time; set when the distributor assigns in a plan with a
-- deadline, cleared by any other assignment and by a close), when it runs out by the
-- manager's schedule at the assignment, and whether the manager accepted after it: known
-- even when the distributor, down or behind, never reassigned the deal. Existing deals have
-- none. Nullable columns and a constant default rewrite no row.
ALTER TABLE deals ADD COLUMN deadline_seconds bigint,
    ADD COLUMN response_due_at timestamptz,
    ADD COLUMN accepted_late boolean NOT NULL DEFAULT false;

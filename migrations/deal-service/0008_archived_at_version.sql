-- The version a plan was archived at: a lead the listener accepted at an earlier version
-- still becomes a deal (its 202 was a promise); NULL while the plan takes leads.
ALTER TABLE plans ADD COLUMN archived_version bigint;
UPDATE plans SET archived_version = version WHERE archived;

-- The assignment each deal is in (when its manager got it) and whether they accepted it,
-- as of the newest event applied: a deadline whose starting event arrives after a newer
-- event of the same deal (replicas, redeliveries) still starts, and only while the deal
-- is still in that assignment, unaccepted and open.
ALTER TABLE deal_view ADD COLUMN assigned_at timestamptz;
ALTER TABLE deal_view ADD COLUMN accepted boolean NOT NULL DEFAULT false;

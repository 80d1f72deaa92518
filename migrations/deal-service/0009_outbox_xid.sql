-- The transaction that wrote each event: the relay knows whether the horizon it publishes
-- (issue 15, read your writes) covers everything it has published, and polls again soon
-- when it does not.
ALTER TABLE outbox ADD COLUMN xid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);

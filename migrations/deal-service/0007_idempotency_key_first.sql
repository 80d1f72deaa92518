-- The idempotency lookup probes by key and checks the account after (store/deals.rs): the
-- unique index leads with the key, so it is the only index that serves the probe, whatever
-- the statistics say of a new account. Still unique per (account, key).
CREATE UNIQUE INDEX deals_idempotency_by_key ON deals (idempotency_key, account_id);
DROP INDEX deals_idempotency;
ALTER INDEX deals_idempotency_by_key RENAME TO deals_idempotency;

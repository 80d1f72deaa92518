-- Intake ids are derived from the account, but an event on the bus names its own: a
-- decision or rejection is one account's, keyed by (account, intake id), so an event of
-- another account with the same intake id can neither take nor block it.
ALTER TABLE assignments DROP CONSTRAINT assignments_pkey;
ALTER TABLE assignments ADD PRIMARY KEY (account_id, intake_id);
ALTER TABLE intake_rejections DROP CONSTRAINT intake_rejections_pkey;
ALTER TABLE intake_rejections ADD PRIMARY KEY (account_id, intake_id);

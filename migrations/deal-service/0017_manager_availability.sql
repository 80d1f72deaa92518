-- Manager availability (issue 20): each manager's schedule (time zone, weekly hours, days
-- off; the JSON of salesplan_platform::schedule::Schedule) and pause switch, account-wide.
-- A manager without a row works around the clock.
CREATE TABLE manager_availability (
    account_id text NOT NULL,
    manager_id text NOT NULL,
    schedule jsonb NOT NULL,
    paused boolean NOT NULL,
    version bigint NOT NULL,
    -- The account's order of availability changes (manager_sequences): this row's last.
    seq bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (account_id, manager_id)
);
-- Each account's count of availability changes; its row lock orders one account's changes
-- (their commits follow their numbers, which the distributor's freshness check relies on).
CREATE TABLE manager_sequences (
    account_id text PRIMARY KEY,
    seq bigint NOT NULL
);
-- With prefer_related: the related manager keeps the deal even while unavailable.
ALTER TABLE plans ADD COLUMN keep_related boolean NOT NULL DEFAULT false;

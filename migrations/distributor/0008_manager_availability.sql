-- Manager availability (issue 20): the distributor's copy of each manager's schedule and
-- pause switch (from deal-service's manager events), read with every decision of a plan
-- whose members have one. A manager without a row works around the clock.
CREATE TABLE manager_availability (
    account_id text   NOT NULL,
    manager_id text   NOT NULL,
    schedule   jsonb  NOT NULL,
    paused     boolean NOT NULL,
    version    bigint NOT NULL,
    seq        bigint NOT NULL,
    PRIMARY KEY (account_id, manager_id)
);
-- With prefer_related: the related manager keeps the lead even while unavailable.
ALTER TABLE plans ADD COLUMN keep_related boolean NOT NULL DEFAULT false;

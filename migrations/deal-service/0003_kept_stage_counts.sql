-- Kept counts per (plan, stage, manager, currency): the board's and the list's totals read
-- these few rows instead of aggregating every deal of the plan (205 ms at 1,000,000 deals
-- without a manager filter). Every deal change adds its deltas in its own transaction.
-- An unassigned deal's manager is ''.
CREATE TABLE stage_counts (
    account_id    text   NOT NULL,
    plan_id       uuid   NOT NULL,
    stage_id      uuid   NOT NULL,
    manager_id    text   NOT NULL,
    currency      text   NOT NULL,
    deals         bigint NOT NULL,
    amount_minor  bigint NOT NULL,
    PRIMARY KEY (account_id, plan_id, stage_id, manager_id, currency)
);

INSERT INTO stage_counts (account_id, plan_id, stage_id, manager_id, currency, deals, amount_minor)
SELECT account_id, plan_id, stage_id, coalesce(manager_id, ''), currency, count(*), sum(amount_minor)
FROM deals
GROUP BY 1, 2, 3, 4, 5;

-- Totals came from this index alone; the kept counts replace it, and each new deal
-- writes one index fewer.
DROP INDEX deals_by_stage_totals;

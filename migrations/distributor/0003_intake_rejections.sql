-- Leads that were accepted but refused on their own when their deal was created (plan
-- archived, data refused by deal-service, manager no longer a member): listed to their
-- account (ListIntakeRejections) instead of dead-lettered. No contact data: the intake id
-- (answered at intake) and the run or job identify the lead.
CREATE TABLE intake_rejections (
    intake_id    uuid        PRIMARY KEY,
    account_id   text        NOT NULL,
    plan_id      uuid        NOT NULL,
    source       text        NOT NULL,
    tunnel_id    text        NOT NULL,
    block_id     text        NOT NULL,
    run_id       text        NOT NULL,
    code         text        NOT NULL,
    reason       text        NOT NULL,
    rejected_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX intake_rejections_by_account ON intake_rejections (account_id, rejected_at DESC, intake_id DESC);

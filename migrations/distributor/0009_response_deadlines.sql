-- Response deadlines (issue 20). The plan's deadline (seconds of working time; 0: none) and
-- how many times a deal not accepted in time is reassigned before it waits for a person.
ALTER TABLE plans ADD COLUMN response_seconds integer NOT NULL DEFAULT 0,
    ADD COLUMN max_reassignments integer NOT NULL DEFAULT 0;
-- One running deadline per deal the distributor assigned and its manager has not accepted:
-- started by the deal event of the assignment, kept at the deal's newest `version` by its
-- later events (a change by someone else), deleted by acceptance, a close or a person's
-- reassignment. Due at `due_at`; a worker leases it until `next_attempt` (another replica
-- takes it after that, if this one died with it in hand) and reassigns the deal with
-- AssignDeal at `version`, so a deal is reassigned once per deadline whoever makes it.
-- The decision is kept with the version it was made for: a retry makes the same one.
-- Every write of a holder names its lease (`leased_by`).
CREATE TABLE response_timers (
    deal_id          uuid PRIMARY KEY,
    account_id       text        NOT NULL,
    plan_id          uuid        NOT NULL,
    manager_id       text        NOT NULL,
    version          bigint      NOT NULL,
    assigned_at      timestamptz NOT NULL,
    due_at           timestamptz NOT NULL,
    next_attempt     timestamptz NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    -- Who holds it (a lease's token): a holder that outlived its lease writes nothing.
    leased_by        uuid,
    decided_version  bigint,
    decided_manager  text,
    decided_note     text,
    decided_record   bytea,
    -- The key of the deal's decision in `assignments` (its lead's, or the deal's id).
    decided_key      uuid
);
CREATE INDEX response_timers_due ON response_timers (next_attempt);
-- The deadlines each deal missed, oldest first: the chain a reassignment explains, and the
-- count the plan's `max_reassignments` is checked against.
CREATE TABLE response_misses (
    deal_id     uuid        NOT NULL,
    account_id  text        NOT NULL,
    manager_id  text        NOT NULL,
    assigned_at timestamptz NOT NULL,
    due_at      timestamptz NOT NULL,
    PRIMARY KEY (deal_id, assigned_at)
);

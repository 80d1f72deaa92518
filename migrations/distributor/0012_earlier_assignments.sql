-- A deal's earlier decisions (ExplainAssignment's `earlier`): a reassignment, a queue
-- placement or an escalation replaces the deal's row in `assignments`, and the decision it
-- replaces — the lead's first one with all its candidates, say — moves here. A trigger,
-- not each writer: three statements replace decisions (a queue order, a deadline's
-- reassignment, a late start's record) and none may forget it.
CREATE TABLE earlier_assignments (
    id           bigserial   PRIMARY KEY,
    account_id   text        NOT NULL,
    deal_id      uuid        NOT NULL,
    decided_at   timestamptz NOT NULL,
    -- The whole decision (salesplan.v1.Assignment), as `assignments.explanation`.
    explanation  bytea       NOT NULL
);
CREATE INDEX earlier_assignments_by_deal ON earlier_assignments (account_id, deal_id, id);

-- Keeps the newest 20 earlier decisions of a deal: reassignments are at most 10 and each
-- placement from the queue follows a person's or a deadline's change, so 20 holds a deal's
-- whole story but for a deal sent back to the queue by hand many times, and a deal's
-- rows stay bounded whatever its callers do.
CREATE FUNCTION keep_earlier_assignment() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    deal uuid := COALESCE(OLD.deal_id, NEW.deal_id);
BEGIN
    -- A lead's decision is linked to its deal when the deal's event arrives, which may be
    -- after the deal was placed again: the deal is the new row's then.
    IF deal IS NOT NULL AND OLD.explanation IS DISTINCT FROM NEW.explanation THEN
        INSERT INTO earlier_assignments (account_id, deal_id, decided_at, explanation)
        VALUES (OLD.account_id, deal, OLD.decided_at, OLD.explanation);
        DELETE FROM earlier_assignments
        WHERE account_id = OLD.account_id AND deal_id = deal
          AND id <= (SELECT id FROM earlier_assignments
                     WHERE account_id = OLD.account_id AND deal_id = deal
                     ORDER BY id DESC OFFSET 20 LIMIT 1);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER assignments_keep_earlier BEFORE UPDATE OF explanation ON assignments
    FOR EACH ROW EXECUTE FUNCTION keep_earlier_assignment();

-- Weighted turns (issue 20): each member's weight, in the order of `managers` (empty:
-- every weight 1), and the credits of smooth weighted round robin with the mark of the
-- members and weights they were counted for (other members or weights: start from zero).
ALTER TABLE plans
    ADD COLUMN weights       integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN rr_credits    bigint[]  NOT NULL DEFAULT '{}',
    ADD COLUMN rr_credits_of bigint    NOT NULL DEFAULT 0,
    -- Among members with as much credit, the first in turn from this position.
    ADD COLUMN rr_credits_start bigint NOT NULL DEFAULT 0;

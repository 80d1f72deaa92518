-- How far the read model is (issue 15, read your writes): per consumer, every message of
-- its stream up to `applied_through` is applied. deal-service's horizons say up to which
-- positions the writes below a consistency token are.
CREATE TABLE consumer_progress (
    consumer        text        PRIMARY KEY,
    applied_through bigint      NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now()
);

-- Messages applied beyond a gap (one retried, the rest went on), until the gap is filled.
CREATE TABLE consumer_ahead (
    consumer text   NOT NULL,
    seq      bigint NOT NULL,
    PRIMARY KEY (consumer, seq)
);

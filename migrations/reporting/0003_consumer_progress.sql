-- How far the read model is (issue 15, read your writes). Per consumer: every message of
-- its stream up to `applied_through` is applied, and `horizon` is the newest of deal-service's
-- horizons among them: every write whose consistency token is below it is in the model.
CREATE TABLE consumer_progress (
    consumer        text        PRIMARY KEY,
    applied_through bigint      NOT NULL,
    horizon         bigint      NOT NULL DEFAULT 0,
    published_at    timestamptz,
    applied_at      timestamptz NOT NULL DEFAULT now()
);

-- Messages applied beyond a gap (one retried, the rest went on), until the gap is filled.
CREATE TABLE consumer_ahead (
    consumer     text        NOT NULL,
    seq          bigint      NOT NULL,
    horizon      bigint,
    published_at timestamptz,
    PRIMARY KEY (consumer, seq)
);

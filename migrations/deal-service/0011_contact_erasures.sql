-- Receipts of ContactService.EraseContact, one per account and request: keyed by a keyed
-- hash of what was asked (never the values themselves), so a repeat answers with the same
-- receipt and nothing here names the person.
CREATE TABLE contact_erasures (
    account_id   text        NOT NULL,
    identity_key text        NOT NULL,
    receipt_id   uuid        NOT NULL,
    first_at     timestamptz NOT NULL,
    deals        bigint      NOT NULL,
    PRIMARY KEY (account_id, identity_key)
);

-- What an erasure remembers of the person: the keyed key of each identifier (platform id,
-- e-mail, phone digits) of the erased deals and of the request, and when. A lead received
-- before that time and decided after becomes a deal without personal data; nothing here
-- can be turned back into the identifiers (docs/privacy.md).
CREATE TABLE erased_contacts (
    account_id  text        NOT NULL,
    contact_key text        NOT NULL,
    erased_at   timestamptz NOT NULL,
    PRIMARY KEY (account_id, contact_key)
);

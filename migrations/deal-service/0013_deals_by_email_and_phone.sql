-- An erasure looks a person up by e-mail or phone in one account, holding the account's
-- erasure lock (its leads' deals wait): by index, not by reading every deal of the account.
CREATE INDEX deals_by_email ON deals (account_id, contact_email) WHERE contact_email <> '';
CREATE INDEX deals_by_phone ON deals (account_id, contact_phone_digits)
    WHERE contact_phone_digits <> '';

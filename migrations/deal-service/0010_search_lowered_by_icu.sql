-- lower() follows the database's LC_CTYPE: under C (CloudNativePG's default) it leaves
-- Cyrillic, Greek and every other non-ASCII letter as it is, so "анна" did not find
-- "Анна". The search text is lowered with ICU's root locale instead, whatever the database
-- was created with; deal-service lowers search terms the same way (Rust's Unicode
-- lower-casing). A rewrite of the table and its trigram index, once.
DROP INDEX deals_search;
ALTER TABLE deals DROP COLUMN search_text;
ALTER TABLE deals ADD COLUMN search_text text GENERATED ALWAYS AS (
    lower(title COLLATE "und-x-icu") || ' ' || lower(contact_name COLLATE "und-x-icu") || ' '
        || contact_email || ' ' || contact_phone_digits
) STORED;
CREATE INDEX deals_search ON deals USING gin (search_text gin_trgm_ops);

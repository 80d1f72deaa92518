-- A receipt remembers what its erasure found: the keyed keys of every identifier the
-- person was known by and the ids of their deals, recorded before the deals are erased. A
-- repeat after a failure finishes the same work (the deals no longer name the person, so
-- it could not find them again) and counts every deal of the receipt once.
ALTER TABLE contact_erasures
    ADD COLUMN known    text[] NOT NULL DEFAULT '{}',
    ADD COLUMN deal_ids uuid[] NOT NULL DEFAULT '{}';

-- Contact keys kept in plain form (before keys were keyed, or written by a replica of that
-- version during a rolling upgrade): found by index, so the distributor can look for them
-- every few minutes at no cost once there are none.
CREATE INDEX contact_managers_plain ON contact_managers (account_id)
    WHERE contact_key NOT LIKE 'k1:%';

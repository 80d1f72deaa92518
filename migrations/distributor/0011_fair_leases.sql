-- A lease finds the accounts with leased work by a skip scan and takes each one's oldest
-- due rows by a range of this index: its cost does not grow with one account's backlog.
CREATE INDEX response_timers_account_due ON response_timers (account_id, next_attempt);
CREATE INDEX assignment_orders_account_due ON assignment_orders (account_id, next_attempt);
-- Nothing else reads by the due time alone; left in place, the planner walked it in due
-- order looking for one account's rows past every row of another.
DROP INDEX response_timers_due;
DROP INDEX assignment_orders_due;

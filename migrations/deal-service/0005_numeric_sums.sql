-- Kept sums are numeric: amounts are at most 10^15 minor units each, so a bigint sum
-- overflowed at 9,224 such deals in one cell and every board of the plan failed.
ALTER TABLE stage_counts ALTER COLUMN amount_minor TYPE numeric;

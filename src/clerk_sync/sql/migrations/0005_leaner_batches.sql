-- clerk-sync schema, version 5: the same writes, with less work per batch.
--
-- Measured with bench/run.py: PostgreSQL's CPU per delivery was dominated by fixed costs per
-- batch and by helpers the planner could not inline. The helpers and the batch function that
-- came with this version live in sql/repeatable/; here is what changed in the tables.

-- Keep stored payloads in the inbox row, compressed, rather than in a TOAST table of their own
-- (one more heap and index insert per delivery); PostgreSQL still moves a payload out of line
-- when the row could not fit in a page otherwise.
alter table clerk_sync.inbox alter column payload set storage main;

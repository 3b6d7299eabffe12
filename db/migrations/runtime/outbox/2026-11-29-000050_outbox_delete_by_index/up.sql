-- The trigger's `DELETE FROM outbox WHERE id = NEW.id` must find the row
-- through the primary key. Right after a vacuum has truncated the (empty)
-- table, the planner prefers a sequential scan of its one page, and the
-- plan the session caches for the trigger keeps it while the table fills
-- with dead rows again until the next vacuum: every event then read the
-- whole table (hundreds of pages in the order database at 200 orders/s).
-- An index scan costs the same on an empty table and stays cheap after.
ALTER FUNCTION outbox_delete_published() SET enable_seqscan = off;

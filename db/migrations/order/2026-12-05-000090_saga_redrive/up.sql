-- Saga re-drive (services/order/src/redrive.rs, docs/saga.md): an order
-- that has not moved for a while has its requests written to the outbox
-- again, under the event ids they were first announced with.
ALTER TABLE orders
    -- The ids of this order's OrderCreated and OrderCancellationRequested
    -- (NULL for orders placed before this migration: re-driven under a new id).
    ADD COLUMN placed_event_id uuid,
    ADD COLUMN cancellation_event_id uuid,
    -- Re-drives since the order last moved (they count only while
    -- redriven_at is later than updated_at: any saga write resets them).
    ADD COLUMN redrive_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN redriven_at timestamptz;

-- The orders a saga is still working on: few at any time, whatever the
-- size of the table. The predicate is the one the re-driver queries with.
CREATE INDEX orders_in_flight ON orders (updated_at)
    WHERE status IN ('PENDING', 'PAID')
       OR (status = 'DELIVERY_SCHEDULED' AND cancellation_requested_at IS NOT NULL);

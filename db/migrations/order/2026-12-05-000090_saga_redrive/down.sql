DROP INDEX orders_in_flight;
ALTER TABLE orders
    DROP COLUMN placed_event_id,
    DROP COLUMN cancellation_event_id,
    DROP COLUMN redrive_attempts,
    DROP COLUMN redriven_at;

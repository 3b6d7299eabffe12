-- The event ids this service answered an order with, so that it can answer
-- a repeated request (a saga re-drive, docs/saga.md) with the same events
-- under the same ids: the booking's DeliveryScheduled or DeliveryFailed, and
-- the release's DeliveryCancelled. NULL for deliveries made before this
-- migration (announced again under a new id).
ALTER TABLE deliveries
    ADD COLUMN outcome_event_id uuid,
    ADD COLUMN cancel_event_id uuid;

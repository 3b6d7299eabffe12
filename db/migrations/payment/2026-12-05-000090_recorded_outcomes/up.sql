-- The event ids this service answered an order with, so that it can answer
-- a repeated request (a saga re-drive, docs/saga.md) with the same events
-- under the same ids: the charge's PaymentConfirmed or PaymentFailed, and
-- the refund's PaymentRefunded. NULL for payments made before this
-- migration (announced again under a new id).
ALTER TABLE payments
    ADD COLUMN outcome_event_id uuid,
    ADD COLUMN refund_event_id uuid;

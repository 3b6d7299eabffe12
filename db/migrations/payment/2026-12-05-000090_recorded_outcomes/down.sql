ALTER TABLE payments DROP COLUMN outcome_event_id, DROP COLUMN refund_event_id;

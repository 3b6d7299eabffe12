ALTER TABLE deliveries DROP COLUMN outcome_event_id, DROP COLUMN cancel_event_id;

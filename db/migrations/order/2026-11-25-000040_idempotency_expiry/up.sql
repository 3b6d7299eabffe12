-- Idempotency keys are kept for `idempotency.retention` (24 h by default);
-- the service deletes older ones periodically, by creation time.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

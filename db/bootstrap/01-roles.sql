-- The relay's login: it may open replication connections and connect to
-- the service databases, nothing else (no table access, no DDL). Its slots
-- stream the outbox publications, which the databases' owner creates.
-- Idempotent: run on every `cargo xtask up` and by the compose PostgreSQL
-- container on first start (psql, as the superuser).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'commerce_relay') THEN
        CREATE ROLE commerce_relay WITH LOGIN REPLICATION PASSWORD 'commerce_relay';
    END IF;
END
$$;
-- Local dev password; a deployment sets its own (ALTER ROLE ... PASSWORD).

-- Roles of the native dev stack (`cargo xtask up` runs every *.sql here, in
-- order, as the superuser, on each start: keep it idempotent). Compose's
-- docker-init.sh gives each service a role of its own; a developer's
-- machine keeps one for the four:
--   commerce      the services: owns the four databases and, through the
--                 migrations, their tables and the outbox publications;
--   outbox_relay  the relay: REPLICATION, CONNECT and CREATE (its own schema
--                 outbox_relay, the marker of its slots), no table access.
-- The passwords are the compose defaults; the native cluster trusts
-- 127.0.0.1 connections anyway (it listens nowhere else).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'commerce') THEN
        CREATE ROLE commerce LOGIN PASSWORD 'commerce';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outbox_relay') THEN
        CREATE ROLE outbox_relay LOGIN REPLICATION PASSWORD 'relay';
    END IF;
END
$$;

-- The databases of this server, owned by `commerce`; only the services and
-- the relay may connect. `cargo xtask up` sets :databases to their
-- comma-separated names (all four, or one per server with
-- --postgres-per-service). Idempotent.
SELECT format('CREATE DATABASE %I OWNER commerce', name)
FROM unnest(string_to_array(:'databases', ',')) AS name
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = name)
\gexec

-- The relay may also create a schema of its own (outbox_relay, for the
-- marker of the slots it created: outbox-relay/src/slots.rs).
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', name),
       format('GRANT CONNECT ON DATABASE %I TO commerce, outbox_relay', name),
       format('GRANT CREATE ON DATABASE %I TO outbox_relay', name)
FROM unnest(string_to_array(:'databases', ',')) AS name
\gexec

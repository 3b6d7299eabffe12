-- One database per service, owned by `commerce`; only the services and the
-- relay may connect. Idempotent.
SELECT format('CREATE DATABASE %I OWNER commerce', name)
FROM unnest(ARRAY['commerce_gateway', 'commerce_order', 'commerce_payment', 'commerce_delivery']) AS name
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = name)
\gexec

REVOKE ALL ON DATABASE commerce_gateway, commerce_order, commerce_payment, commerce_delivery
    FROM PUBLIC;
GRANT CONNECT ON DATABASE commerce_gateway, commerce_order, commerce_payment, commerce_delivery
    TO commerce, outbox_relay;

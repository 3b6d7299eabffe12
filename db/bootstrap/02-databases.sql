-- One database per service (no service reads another's). Idempotent.
-- In the native dev stack the services connect as the superuser `postgres`
-- (trust on 127.0.0.1 only) and own their tables through their migrations.
SELECT format('CREATE DATABASE %I', name)
FROM unnest(ARRAY['commerce_gateway', 'commerce_order', 'commerce_payment', 'commerce_delivery']) AS name
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = name)
\gexec

GRANT CONNECT ON DATABASE commerce_gateway, commerce_order, commerce_payment, commerce_delivery
    TO commerce_relay;

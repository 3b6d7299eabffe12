#!/usr/bin/env bash
# First start of the compose PostgreSQL: one role per service, owning only
# its own database (and, through its migrations, its tables and the outbox
# publication), and the relay's role. Passwords come from the container's
# environment. The relay's role gets REPLICATION, CONNECT and CREATE (for
# its own schema outbox_relay, where it marks the slots it created; no
# access to the services' tables): the publications are created by the
# services' migrations (db/migrations/runtime/outbox). Nobody else may
# connect to a database.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v gateway_password="$GATEWAY_DB_PASSWORD" \
    -v order_password="$ORDER_DB_PASSWORD" \
    -v payment_password="$PAYMENT_DB_PASSWORD" \
    -v delivery_password="$DELIVERY_DB_PASSWORD" \
    -v relay_password="$RELAY_DB_PASSWORD" <<'SQL'
CREATE ROLE commerce_gateway LOGIN PASSWORD :'gateway_password';
CREATE ROLE commerce_order LOGIN PASSWORD :'order_password';
CREATE ROLE commerce_payment LOGIN PASSWORD :'payment_password';
CREATE ROLE commerce_delivery LOGIN PASSWORD :'delivery_password';
CREATE ROLE outbox_relay LOGIN REPLICATION PASSWORD :'relay_password';
CREATE DATABASE commerce_gateway OWNER commerce_gateway;
CREATE DATABASE commerce_order OWNER commerce_order;
CREATE DATABASE commerce_payment OWNER commerce_payment;
CREATE DATABASE commerce_delivery OWNER commerce_delivery;
SQL

# Each database's role has the same name as the database.
for db in commerce_gateway commerce_order commerce_payment commerce_delivery; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$db" <<SQL
REVOKE ALL ON DATABASE $db FROM PUBLIC;
GRANT CONNECT ON DATABASE $db TO $db, outbox_relay;
GRANT CREATE ON DATABASE $db TO outbox_relay;
SQL
done

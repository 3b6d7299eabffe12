#!/usr/bin/env bash
# First start of the compose PostgreSQL: the services' role and databases and
# the relay's role. Passwords come from the container's environment.
# The relay's role gets REPLICATION and CONNECT only: the publications are
# created by the services' own migrations (db/migrations/*/..._outbox).
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v service_password="$SERVICE_DB_PASSWORD" \
    -v relay_password="$RELAY_DB_PASSWORD" <<'SQL'
CREATE ROLE commerce LOGIN PASSWORD :'service_password';
CREATE ROLE outbox_relay LOGIN REPLICATION PASSWORD :'relay_password';
CREATE DATABASE commerce_gateway OWNER commerce;
CREATE DATABASE commerce_order OWNER commerce;
CREATE DATABASE commerce_payment OWNER commerce;
CREATE DATABASE commerce_delivery OWNER commerce;
SQL

for db in commerce_gateway commerce_order commerce_payment commerce_delivery; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$db" <<SQL
REVOKE ALL ON DATABASE $db FROM PUBLIC;
GRANT CONNECT ON DATABASE $db TO commerce, outbox_relay;
SQL
done

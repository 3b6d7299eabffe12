-- Outgoing events, written in the same transaction as the change they
-- announce and deleted again in it: the relay reads the INSERT from the WAL
-- through the publication below, so this table stays empty.
CREATE TABLE outbox (
    id              uuid        PRIMARY KEY,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    trace_id        text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    payload         jsonb       NOT NULL
);

-- What the relay streams: inserts into the outbox, nothing else. Created
-- here, by the table's owner, so the relay's role needs only REPLICATION.
CREATE PUBLICATION outbox_relay FOR TABLE outbox WITH (publish = 'insert');

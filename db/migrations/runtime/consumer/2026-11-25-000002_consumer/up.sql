-- Tables of the Kafka consumer runtime (commerce_common::consumer), in every
-- consuming service's database (commerce_common::db::Runtime).

-- Where each (consumer group, topic, partition) continues: always the offset
-- after the last record of a completely handled fetch (a batch boundary).
-- Advanced in the same transaction as the effects of the records.
CREATE TABLE consumer_offsets (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    next_offset     bigint      NOT NULL DEFAULT 0 CHECK (next_offset >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Which instance works on which partition. A lease is valid while
-- expires_at lies in the future; an expired one may be taken by anyone.
CREATE TABLE partition_leases (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    owner           text,
    expires_at      timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Running instances (heartbeats), so partitions are split evenly.
CREATE TABLE consumer_members (
    consumer_group  text        NOT NULL,
    instance_id     text        NOT NULL,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (consumer_group, instance_id)
);

-- Event ids already handled: a repeat (the relay is at-least-once) is
-- skipped. Purged after a retention period.
CREATE TABLE inbox (
    consumer_group  text        NOT NULL,
    event_id        uuid        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    record_offset   bigint      NOT NULL,
    handled_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);
CREATE INDEX inbox_handled_at ON inbox (handled_at);

-- Records that can never be handled, kept with the reason instead of
-- blocking their partition.
CREATE TABLE dead_letters (
    id              bigserial   PRIMARY KEY,
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    record_offset   bigint      NOT NULL,
    record_key      bytea,
    record_value    bytea,
    headers         jsonb       NOT NULL DEFAULT '{}',
    event_id        uuid,
    event_type      text,
    reason          text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_created_at ON dead_letters (created_at);

//! The transactional outbox writer. A service calls [`enqueue`] inside the
//! same diesel transaction as its business rows. The row is deleted again in
//! that transaction, by the `outbox_delete_published` trigger of each
//! service's migrations (one statement per event instead of two): the relay
//! reads the insert from the WAL (the publication publishes inserts only), so
//! the table never grows.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::events::{Event, SCHEMA_VERSION};

diesel::table! {
    outbox (id) {
        id -> Uuid,
        aggregate_type -> Text,
        aggregate_id -> Text,
        event_type -> Text,
        schema_version -> Int4,
        trace_id -> Text,
        occurred_at -> Timestamptz,
        payload -> Jsonb,
    }
}

/// Writes `event` to the outbox; returns its event id. Call it inside the
/// transaction that makes the change the event announces.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    event: &Event,
    trace_id: &str,
) -> QueryResult<Uuid> {
    let id = Uuid::now_v7();
    let (event_type, payload) = event.into_parts();
    diesel::insert_into(outbox::table)
        .values((
            outbox::id.eq(id),
            outbox::aggregate_type.eq(event.topic()),
            outbox::aggregate_id.eq(event.aggregate_id().to_string()),
            outbox::event_type.eq(event_type),
            outbox::schema_version.eq(SCHEMA_VERSION),
            outbox::trace_id.eq(trace_id),
            outbox::occurred_at.eq(Utc::now()),
            outbox::payload.eq(payload),
        ))
        .execute(conn)
        .await?;
    Ok(id)
}

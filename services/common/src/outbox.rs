//! The transactional outbox writer. A service calls [`enqueue`] inside the
//! same diesel transaction as its business rows. The row is deleted again in
//! that transaction, by the `outbox_delete_published` trigger of each
//! service's migrations (one statement per event instead of two): the relay
//! reads the insert from the WAL (the publication publishes inserts only), so
//! the table never grows.

use chrono::Utc;
use diesel::{
    pg::Pg,
    prelude::*,
    query_builder::{BoxedSqlQuery, SqlQuery},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::{
    db::Reuse,
    events::{Event, SCHEMA_VERSION},
};

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

/// The outbox row announcing one event. [`enqueue`] inserts it; a statement
/// that also writes the outbox row (the order service's place-order and
/// status-change statements, the payment service's debit) binds it with
/// [`NewRow::bind`].
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = outbox)]
pub struct NewRow<'a> {
    /// The event id.
    pub id: Uuid,
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub event_type: String,
    pub schema_version: i32,
    pub trace_id: &'a str,
    pub occurred_at: chrono::DateTime<Utc>,
    pub payload: serde_json::Value,
}

impl<'a> NewRow<'a> {
    pub fn new(event: &Event, trace_id: &'a str) -> Self {
        let (event_type, payload) = event.into_parts();
        Self {
            id: Uuid::now_v7(),
            aggregate_type: event.topic(),
            aggregate_id: event.aggregate_id().to_string(),
            event_type,
            schema_version: SCHEMA_VERSION,
            trace_id,
            occurred_at: Utc::now(),
            payload,
        }
    }

    /// Appends the row's values to `query` as eight parameters, in the
    /// order `id, aggregate_type, aggregate_id, event_type, schema_version,
    /// trace_id, occurred_at, payload`, for an outbox insert folded into a
    /// larger statement (`INSERT INTO outbox (..) SELECT $n, .. FROM ..`).
    pub fn bind<'q>(
        &'q self,
        query: BoxedSqlQuery<'q, Pg, SqlQuery>,
    ) -> BoxedSqlQuery<'q, Pg, SqlQuery> {
        use diesel::sql_types::{Integer, Jsonb, Text, Timestamptz, Uuid as SqlUuid};
        query
            .bind::<SqlUuid, _>(self.id)
            .bind::<Text, _>(self.aggregate_type)
            .bind::<Text, _>(&self.aggregate_id)
            .bind::<Text, _>(&self.event_type)
            .bind::<Integer, _>(self.schema_version)
            .bind::<Text, _>(self.trace_id)
            .bind::<Timestamptz, _>(self.occurred_at)
            .bind::<Jsonb, _>(&self.payload)
    }
}

/// Writes `event` to the outbox; returns its event id. Call it inside the
/// transaction that makes the change the event announces.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    event: &Event,
    trace_id: &str,
) -> QueryResult<Uuid> {
    let row = NewRow::new(event, trace_id);
    // diesel would parse and plan it anew for every event (it does not
    // cache this insert on its own); its text never varies.
    diesel::insert_into(outbox::table)
        .values(&row)
        .prepared()
        .execute(conn)
        .await?;
    Ok(row.id)
}

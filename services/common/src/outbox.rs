//! The transactional outbox writer. A service calls [`enqueue`] inside the
//! same diesel transaction as its business rows. The row is deleted again in
//! that transaction, by the `outbox_delete_published` trigger of each
//! service's migrations (one statement per event instead of two): the relay
//! reads the insert from the WAL (the publication publishes inserts only), so
//! the table never grows.

use std::sync::LazyLock;

use chrono::Utc;
// The outbox columns, in the order `NewRow::bind` binds them.
use commerce_base::outbox::columns::ALL as COLUMNS;
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
/// status-change statements, the payment service's debit) writes it with
/// [`insert_from`] and [`NewRow::bind`].
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = outbox)]
pub struct NewRow<'a> {
    /// The event id. (The fields are in the order of the outbox columns
    /// that [`insert_from`] names.)
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

    /// The same row under an event id given before: a saga participant
    /// announcing again what it announced once keeps the first event id, so
    /// consumers that saw it skip it and the others act on it.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Appends the row's values to `query` as eight parameters, in the
    /// order of [`insert_from`]'s columns.
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

/// `INSERT INTO outbox (..) SELECT $first, .., $first+7 FROM source`: an
/// outbox insert folded into a larger statement, writing one row per row of
/// `source` (a CTE of that statement) from the parameters that
/// [`NewRow::bind`] appends when `first` is the number of the next one.
pub fn insert_from(source: &str, first: usize) -> String {
    let params: Vec<String> = (first..first + COLUMNS.len())
        .map(|n| format!("${n}"))
        .collect();
    format!(
        "INSERT INTO outbox ({}) SELECT {} FROM {source}",
        COLUMNS.join(", "),
        params.join(", ")
    )
}

/// The SQL type of each outbox column, in [`COLUMNS`]' order.
const COLUMN_TYPES: [&str; 8] = [
    "uuid",
    "text",
    "text",
    "text",
    "int4",
    "text",
    "timestamptz",
    "jsonb",
];

/// `INSERT INTO outbox (..) SELECT .. FROM unnest($first, .., $first+7)`:
/// the rows that [`bind_all`] appends as eight arrays (parameters `first`
/// on), inserted in the order given (the order the relay publishes them
/// in), in one statement, alone or as a CTE of a larger one; only if
/// `condition` (SQL) holds, when there is one.
pub fn insert_all(first: usize, condition: Option<&str>) -> String {
    let arrays: Vec<String> = (first..)
        .zip(COLUMN_TYPES)
        .map(|(n, sql_type)| format!("${n}::{sql_type}[]"))
        .collect();
    let condition = condition.map(|c| format!(" WHERE {c}")).unwrap_or_default();
    format!(
        "INSERT INTO outbox ({columns}) SELECT {columns} \
         FROM unnest({arrays}) WITH ORDINALITY AS a ({columns}, n){condition} ORDER BY n",
        columns = COLUMNS.join(", "),
        arrays = arrays.join(", ")
    )
}

/// Appends `rows` to `query` as the eight arrays of [`insert_all`].
pub fn bind_all<'q>(
    rows: &'q [NewRow<'q>],
    query: BoxedSqlQuery<'q, Pg, SqlQuery>,
) -> BoxedSqlQuery<'q, Pg, SqlQuery> {
    use diesel::sql_types::{Array, Integer, Jsonb, Text, Timestamptz, Uuid as SqlUuid};
    let column = |f: fn(&'q NewRow<'q>) -> &'q str| rows.iter().map(f).collect::<Vec<_>>();
    query
        .bind::<Array<SqlUuid>, _>(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(column(|r| r.aggregate_type))
        .bind::<Array<Text>, _>(column(|r| &r.aggregate_id))
        .bind::<Array<Text>, _>(column(|r| &r.event_type))
        .bind::<Array<Integer>, _>(rows.iter().map(|r| r.schema_version).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(column(|r| r.trace_id))
        .bind::<Array<Timestamptz>, _>(rows.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
        .bind::<Array<Jsonb>, _>(rows.iter().map(|r| &r.payload).collect::<Vec<_>>())
}

/// Writes `event` to the outbox; returns its event id. Call it inside the
/// transaction that makes the change the event announces.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    event: &Event,
    trace_id: &str,
) -> QueryResult<Uuid> {
    let row = NewRow::new(event, trace_id);
    insert(conn, &row).await?;
    Ok(row.id)
}

/// Writes `event` to the outbox again, under `first_id`, the id it was
/// announced with the first time (a saga re-drive repeats a request, a
/// participant its answer: whoever has it skips it by its id); `None` (a
/// row from before those ids were kept): under a new id, which the
/// receiver's facts make harmless. Returns the id written.
pub async fn enqueue_again(
    conn: &mut AsyncPgConnection,
    event: &Event,
    first_id: Option<Uuid>,
    trace_id: &str,
) -> QueryResult<Uuid> {
    let mut row = NewRow::new(event, trace_id);
    if let Some(id) = first_id {
        row = row.with_id(id);
    }
    insert(conn, &row).await?;
    tracing::info!(event_type = %row.event_type, event_id = %row.id,
        aggregate_id = %row.aggregate_id, "event announced again");
    Ok(row.id)
}

/// Writes an outbox row built before (its id chosen by the caller).
pub async fn insert(conn: &mut AsyncPgConnection, row: &NewRow<'_>) -> QueryResult<()> {
    // diesel would parse and plan it anew for every event (it does not
    // cache this insert on its own); its text never varies.
    diesel::insert_into(outbox::table)
        .values(row)
        .prepared()
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes outbox rows built before, in the order given: one statement
/// whatever their number, none for none.
pub async fn insert_rows(conn: &mut AsyncPgConnection, rows: &[NewRow<'_>]) -> QueryResult<()> {
    static INSERT_ALL: LazyLock<String> = LazyLock::new(|| insert_all(1, None));
    match rows {
        [] => Ok(()),
        [row] => insert(conn, row).await,
        rows => {
            bind_all(rows, diesel::sql_query(INSERT_ALL.as_str()).into_boxed())
                .prepared()
                .execute(conn)
                .await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::PaymentFailed;

    #[test]
    fn a_set_insert_takes_one_array_per_column_and_keeps_the_rows_order() {
        assert_eq!(
            insert_all(3, Some("ok")),
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, schema_version, \
             trace_id, occurred_at, payload) \
             SELECT id, aggregate_type, aggregate_id, event_type, schema_version, trace_id, \
             occurred_at, payload \
             FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::int4[], $8::text[], \
             $9::timestamptz[], $10::jsonb[]) \
             WITH ORDINALITY AS a (id, aggregate_type, aggregate_id, event_type, schema_version, \
             trace_id, occurred_at, payload, n) WHERE ok ORDER BY n"
        );
    }

    #[test]
    fn a_folded_insert_names_the_columns_in_the_order_they_are_bound() {
        assert_eq!(
            insert_from("changed", 17),
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, schema_version, \
             trace_id, occurred_at, payload) \
             SELECT $17, $18, $19, $20, $21, $22, $23, $24 FROM changed"
        );
        // The same order as NewRow's fields, which `bind` follows and
        // `enqueue` inserts.
        let event = Event::PaymentFailed(PaymentFailed {
            order_id: Uuid::nil(),
            customer_id: Uuid::nil(),
            amount_cents: 1,
            reason: "INSUFFICIENT_FUNDS".into(),
        });
        let row = NewRow::new(&event, "trace");
        let insert = diesel::debug_query::<Pg, _>(&diesel::insert_into(outbox::table).values(&row))
            .to_string();
        let quoted: Vec<String> = COLUMNS.iter().map(|c| format!("\"{c}\"")).collect();
        assert!(
            insert.starts_with(&format!("INSERT INTO \"outbox\" ({})", quoted.join(", "))),
            "{insert}"
        );
    }
}

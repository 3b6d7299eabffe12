//! The re-driver's reads and writes of orders (see `crate::redrive`).
//!
//! An order is *in flight* while a saga still works on it: PENDING, PAID, or
//! DELIVERY_SCHEDULED with a cancellation requested (the `orders_in_flight`
//! index holds exactly those). Every saga write sets `updated_at`; a
//! re-drive sets `redriven_at` and counts `redrive_attempts`, which count
//! only while `redriven_at` is later than `updated_at`: any move of the
//! order starts the count again.

use chrono::{DateTime, Utc};
use diesel::{
    pg::Pg,
    prelude::*,
    query_builder::{BoxedSqlQuery, SqlQuery},
    sql_types::{BigInt, Integer, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{ItemRow, OrderRow};
use crate::schema::{order_items, orders};

/// An in-flight order with what the re-driver keeps on it.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
#[diesel(table_name = orders)]
pub struct InFlight {
    #[diesel(embed)]
    pub order: OrderRow,
    pub placed_event_id: Option<Uuid>,
    pub cancellation_event_id: Option<Uuid>,
    pub redrive_attempts: i32,
    pub redriven_at: Option<DateTime<Utc>>,
}

/// When an order is re-driven: `after` without a move, then again after
/// twice as long each time (at most `max_backoff`), `max_attempts` times.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub after_ms: i64,
    pub max_backoff_ms: i64,
    pub max_attempts: i32,
}

/// The in-flight predicate of the `orders_in_flight` index, and whether
/// the order moved since its last re-drive.
const IN_FLIGHT: &str = "(status IN ('PENDING', 'PAID') \
     OR (status = 'DELIVERY_SCHEDULED' AND cancellation_requested_at IS NOT NULL))";
const MOVED: &str = "(redriven_at IS NULL OR redriven_at < updated_at)";

/// `$1` after, `$2` max backoff (ms), `$3` max attempts, `$4` now: the
/// moment the order's next re-drive is due has come.
fn due() -> String {
    format!(
        "CASE WHEN {MOVED} THEN updated_at + $1 * interval '1 millisecond' <= $4 \
              ELSE redrive_attempts < $3 \
                   AND redriven_at + least($1 * power(2, redrive_attempts), $2) \
                       * interval '1 millisecond' <= $4 \
         END"
    )
}

/// `$1`-`$4` as in [`due`]: re-drives exhausted, and the last one had its
/// time to work.
fn exhausted() -> String {
    format!(
        "(NOT {MOVED} AND redrive_attempts >= $3 \
          AND redriven_at + least($1 * power(2, redrive_attempts), $2) \
              * interval '1 millisecond' <= $4)"
    )
}

/// `sql` with the schedule and the time bound as `$1`-`$4` (see [`due`]).
fn scheduled(
    sql: String,
    schedule: Schedule,
    now: DateTime<Utc>,
) -> BoxedSqlQuery<'static, Pg, SqlQuery> {
    diesel::sql_query(sql)
        .into_boxed()
        .bind::<BigInt, _>(schedule.after_ms)
        .bind::<BigInt, _>(schedule.max_backoff_ms)
        .bind::<Integer, _>(schedule.max_attempts)
        .bind::<Timestamptz, _>(now)
}

/// Claims up to `limit` in-flight orders whose re-drive is due, counting
/// the attempt, and answers them locked (the caller writes their events in
/// the same transaction). Orders another transaction holds (the saga
/// applying an event, another instance re-driving) are skipped.
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    schedule: Schedule,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<InFlight>> {
    let sql = format!(
        "WITH due AS ( \
             SELECT id FROM orders WHERE {IN_FLIGHT} AND {due} \
             ORDER BY updated_at LIMIT $5 FOR UPDATE SKIP LOCKED) \
         UPDATE orders o SET \
             redrive_attempts = CASE WHEN o.redriven_at IS NULL OR o.redriven_at < o.updated_at \
                                     THEN 1 ELSE o.redrive_attempts + 1 END, \
             redriven_at = $4 \
         FROM due WHERE o.id = due.id \
         RETURNING o.*",
        due = due()
    );
    scheduled(sql, schedule, now)
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await
}

/// The lines of `orders`, in line order.
pub async fn lines(conn: &mut AsyncPgConnection, orders: &[Uuid]) -> QueryResult<Vec<ItemRow>> {
    order_items::table
        .filter(order_items::order_id.eq_any(orders))
        .order((order_items::order_id, order_items::line_no))
        .select(ItemRow::as_select())
        .load(conn)
        .await
}

/// In-flight orders whose re-drives are exhausted, longest stuck first.
pub async fn stuck(
    conn: &mut AsyncPgConnection,
    schedule: Schedule,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<InFlight>> {
    let sql = format!(
        "SELECT * FROM orders WHERE {IN_FLIGHT} AND {exhausted} \
         ORDER BY updated_at LIMIT $5",
        exhausted = exhausted()
    );
    scheduled(sql, schedule, now)
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await
}

#[derive(QueryableByName)]
struct Counts {
    #[diesel(sql_type = BigInt)]
    in_flight: i64,
    #[diesel(sql_type = BigInt)]
    stuck: i64,
}

/// How many orders are in flight, and how many of them are stuck.
pub async fn count(
    conn: &mut AsyncPgConnection,
    schedule: Schedule,
    now: DateTime<Utc>,
) -> QueryResult<(i64, i64)> {
    let sql = format!(
        "SELECT count(*) AS in_flight, count(*) FILTER (WHERE {exhausted}) AS stuck \
         FROM orders WHERE {IN_FLIGHT}",
        exhausted = exhausted()
    );
    let counts: Counts = scheduled(sql, schedule, now).get_result(conn).await?;
    Ok((counts.in_flight, counts.stuck))
}

/// An operator asks for an in-flight order to be re-driven at once, with a
/// fresh count of attempts. Answers false when the order is not in flight.
pub async fn redrive_now(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    schedule: Schedule,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    // No attempt yet, the last one "at the last write": due `after` that
    // write. An order that moved within `after` keeps the usual schedule.
    let updated = diesel::sql_query(format!(
        "UPDATE orders SET redrive_attempts = 0, \
             redriven_at = CASE WHEN updated_at + $2 * interval '1 millisecond' <= $3 \
                                THEN updated_at END \
         WHERE id = $1 AND {IN_FLIGHT}"
    ))
    .bind::<SqlUuid, _>(order_id)
    .bind::<BigInt, _>(schedule.after_ms)
    .bind::<Timestamptz, _>(now)
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

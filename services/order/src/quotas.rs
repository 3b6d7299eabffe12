//! What one customer may place: at most `max_open_orders` orders the saga
//! is still working on, and at most `max_orders_per_interval` new orders
//! within any `placement_interval`. Both are counted from the orders table
//! (every instance of the service sees the same counts; nothing to reset on
//! a restart), under a per-customer lock held until the placement commits,
//! so concurrent requests of one customer cannot all pass the check before
//! any of them stored its order.

use std::{sync::LazyLock, time::Duration};

use commerce_common::db::{Prepared, Reuse};
use diesel::{
    pg::Pg,
    query_builder::{BoxedSqlQuery, SqlQuery},
    result::Error as DieselError,
    sql_types::{BigInt, Integer, Nullable},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::{config::QuotasConfig, domain::OrderStatus};

/// Why a customer may not place an order now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaExceeded {
    /// `limit` orders are PENDING or PAID.
    OpenOrders { limit: u32, retry_after: Duration },
    /// `limit` orders were placed within the last `interval`; the oldest of
    /// them leaves it after `retry_after`.
    Rate {
        limit: u32,
        interval: Duration,
        retry_after: Duration,
    },
}

/// First key of the placement lock (`pg_advisory_xact_lock(int4, int4)`):
/// two-key advisory locks never conflict with the one-key locks the
/// consumer runtime takes.
const PLACEMENT_LOCK_CLASS: i32 = 0x0_0d_e7;

/// The customer's second lock key: the id folded to 32 bits (two customers
/// sharing one only wait for each other).
fn lock_key(customer_id: Uuid) -> i32 {
    let folded = customer_id
        .as_bytes()
        .chunks_exact(4)
        .map(|chunk| u32::from_be_bytes(chunk.try_into().expect("4 bytes")))
        .fold(0, |acc, part| acc ^ part);
    i32::from_ne_bytes(folded.to_ne_bytes())
}

/// The open orders of the customer `$customer` counted up to `$max_open`, and
/// the `$max_per_interval`-th newest order placed within the last `$interval`
/// microseconds (`OFFSET` the limit minus one): each stops at its limit, one
/// index range each (orders_open_by_customer, orders_customer_newest).
/// `{usage}` of the parameters' numbers.
fn usage_sql(customer: usize, max_open: usize, interval: usize, offset: usize) -> String {
    format!(
        "(SELECT count(*) FROM (SELECT 1 FROM orders \
            WHERE customer_id = ${customer} AND status IN ('{pending}', '{paid}') \
            LIMIT ${max_open}) AS open) AS open_orders, \
         (SELECT ceil(extract(epoch FROM \
                   created_at + ${interval}::float8 * interval '1 microsecond' - now()) * 1000)::int8 \
            FROM orders \
            WHERE customer_id = ${customer} \
              AND created_at > now() - ${interval}::float8 * interval '1 microsecond' \
            ORDER BY created_at DESC OFFSET ${offset} LIMIT 1) AS rate_retry_after_ms",
        pending = OrderStatus::Pending.as_str(),
        paid = OrderStatus::Paid.as_str(),
    )
}

/// The customer's usage of both quotas (see [`usage_sql`]).
static COUNT_USAGE: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {}", usage_sql(1, 2, 3, 4)));

/// A condition for the placing statement: both quotas leave room, counted
/// with the statement's snapshot, so it must run after [`lock`] (a later
/// statement of the transaction). Its three parameters are `first` on, in
/// [`bind_limits`]' order; `customer` is the customer id's parameter.
pub fn within_sql(customer: usize, first: usize) -> String {
    format!(
        "(SELECT open_orders < ${first} AND rate_retry_after_ms IS NULL \
          FROM (SELECT {}) AS usage)",
        usage_sql(customer, first, first + 1, first + 2)
    )
}

/// Appends the three limits of [`within_sql`] to `query`.
pub fn bind_limits<'q>(
    quotas: &QuotasConfig,
    query: BoxedSqlQuery<'q, Pg, SqlQuery>,
) -> BoxedSqlQuery<'q, Pg, SqlQuery> {
    let interval_us = i64::try_from(quotas.placement_interval.as_micros()).unwrap_or(i64::MAX);
    query
        .bind::<BigInt, _>(i64::from(quotas.max_open_orders))
        .bind::<BigInt, _>(interval_us)
        .bind::<BigInt, _>(i64::from(quotas.max_orders_per_interval) - 1)
}

#[derive(diesel::QueryableByName)]
struct Usage {
    #[diesel(sql_type = BigInt)]
    open_orders: i64,
    /// Until the oldest of the last `max_orders_per_interval` orders is out
    /// of the interval; NULL when fewer were placed within it.
    #[diesel(sql_type = Nullable<BigInt>)]
    rate_retry_after_ms: Option<i64>,
}

/// The customer's placement lock (`pg_advisory_xact_lock`, held until the
/// transaction ends), as a statement to send ahead of the one that counts:
/// PostgreSQL runs a connection's statements in order and takes the next
/// one's snapshot only once the lock is held, so that statement sees every
/// order committed by whoever held the lock before. Sent together
/// (pipelined), the two are one round trip.
pub fn lock(customer_id: Uuid) -> Prepared<BoxedSqlQuery<'static, Pg, SqlQuery>> {
    diesel::sql_query("SELECT pg_advisory_xact_lock($1, $2)")
        .into_boxed()
        .bind::<Integer, _>(PLACEMENT_LOCK_CLASS)
        .bind::<Integer, _>(lock_key(customer_id))
        .prepared()
}

/// Takes the customer's placement lock and checks both quotas: which one
/// is exceeded, if any. The placing statement checks them itself
/// ([`within_sql`]); this tells a placement that stored nothing why.
pub async fn check(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    quotas: &QuotasConfig,
) -> Result<Option<QuotaExceeded>, DieselError> {
    let count = bind_limits(
        quotas,
        diesel::sql_query(COUNT_USAGE.as_str())
            .into_boxed()
            .bind::<diesel::sql_types::Uuid, _>(customer_id),
    )
    .prepared();
    let shared: &AsyncPgConnection = conn;
    let (mut first, mut second) = (shared, shared);
    let (_, usage): (usize, Usage) = futures::try_join!(
        lock(customer_id).execute(&mut first),
        count.get_result(&mut second)
    )?;
    if usage.open_orders >= i64::from(quotas.max_open_orders) {
        return Ok(Some(QuotaExceeded::OpenOrders {
            limit: quotas.max_open_orders,
            retry_after: quotas.open_orders_retry_after,
        }));
    }
    Ok(usage.rate_retry_after_ms.map(|ms| QuotaExceeded::Rate {
        limit: quotas.max_orders_per_interval,
        interval: quotas.placement_interval,
        retry_after: Duration::from_millis(ms.max(1).unsigned_abs()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_use_the_whole_id() {
        let a = Uuid::parse_str("0193a1b2-0000-7000-8000-000000000001").unwrap();
        let b = Uuid::parse_str("0193a1b2-0000-7000-8000-000000000002").unwrap();
        assert_ne!(lock_key(a), lock_key(b), "ids of one millisecond differ");
    }
}

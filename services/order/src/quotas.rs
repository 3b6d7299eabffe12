//! What one customer may place: at most `max_open_orders` orders the saga
//! is still working on, and at most `max_orders_per_interval` new orders
//! within any `placement_interval`. Both are counted from the orders table
//! (every instance of the service sees the same counts; nothing to reset on
//! a restart), under a per-customer lock held until the placement commits,
//! so concurrent requests of one customer cannot all pass the check before
//! any of them stored its order.

use std::{sync::LazyLock, time::Duration};

use commerce_common::db::Reuse;
use diesel::{
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

/// The customer's open orders (counted up to `$2`) and, when `$4 + 1`
/// orders were placed within the last `$3` microseconds, how long until the
/// oldest of them is out of that interval.
static COUNT_USAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT \
           (SELECT count(*) FROM (SELECT 1 FROM orders \
              WHERE customer_id = $1 AND status IN ('{pending}', '{paid}') LIMIT $2) AS open \
           ) AS open_orders, \
           (SELECT ceil(extract(epoch FROM \
                     created_at + $3::float8 * interval '1 microsecond' - now()) * 1000)::int8 \
              FROM orders \
              WHERE customer_id = $1 AND created_at > now() - $3::float8 * interval '1 microsecond' \
              ORDER BY created_at DESC OFFSET $4 LIMIT 1 \
           ) AS rate_retry_after_ms",
        pending = OrderStatus::Pending.as_str(),
        paid = OrderStatus::Paid.as_str(),
    )
});

#[derive(diesel::QueryableByName)]
struct Usage {
    #[diesel(sql_type = BigInt)]
    open_orders: i64,
    /// Until the oldest of the last `max_orders_per_interval` orders is out
    /// of the interval; NULL when fewer were placed within it.
    #[diesel(sql_type = Nullable<BigInt>)]
    rate_retry_after_ms: Option<i64>,
}

/// Takes the customer's placement lock (until the caller's transaction
/// ends) and checks both quotas. Call it in the transaction that stores the
/// order: the counts then hold until the order is committed.
pub async fn check(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    quotas: &QuotasConfig,
) -> Result<Option<QuotaExceeded>, DieselError> {
    let lock = diesel::sql_query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind::<Integer, _>(PLACEMENT_LOCK_CLASS)
        .bind::<Integer, _>(lock_key(customer_id))
        .prepared();
    // The count is a statement after the lock: PostgreSQL runs the two in
    // order and takes the count's snapshot only once the lock is held, so
    // it sees every order committed by whoever held the lock before. Both go
    // out together (pipelined) and stay prepared on the connection: one
    // round trip. Each count stops at its limit, one index range each
    // (orders_open_by_customer, orders_customer_newest).
    let interval_us = i64::try_from(quotas.placement_interval.as_micros()).unwrap_or(i64::MAX);
    let count = diesel::sql_query(COUNT_USAGE.as_str())
        .bind::<diesel::sql_types::Uuid, _>(customer_id)
        .bind::<BigInt, _>(i64::from(quotas.max_open_orders))
        .bind::<BigInt, _>(interval_us)
        .bind::<BigInt, _>(i64::from(quotas.max_orders_per_interval) - 1)
        .prepared();
    let shared: &AsyncPgConnection = conn;
    let (mut first, mut second) = (shared, shared);
    let (_, usage): (usize, Usage) =
        futures::try_join!(lock.execute(&mut first), count.get_result(&mut second))?;
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

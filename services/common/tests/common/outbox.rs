//! The outbox (one copy of its migrations, applied in every database that
//! publishes events) stays empty at a constant cost per event: the trigger that deletes each row again finds it through the
//! primary key, also in a session that planned its delete right after a
//! vacuum had truncated the table (when a sequential scan looks cheapest and
//! then stays cached while dead rows pile up until the next vacuum).

use commerce_common::{
    config::DatabaseConfig,
    db,
    events::{Event, PaymentFailed},
    outbox,
};
use diesel::{QueryableByName, sql_types::BigInt};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use test_support::fresh_database;
use uuid::Uuid;

#[derive(QueryableByName)]
struct Scans {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = BigInt)]
    idx: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test]
async fn the_outbox_trigger_deletes_through_the_primary_key_even_after_a_vacuum() {
    const EVENTS: i64 = 20;
    let database = fresh_database("outbox").await;
    db::migrate(
        &DatabaseConfig::with_url(&database.url),
        db::Migrations::runtime(db::Runtime::Outbox),
    )
    .await
    .expect("migrations");
    database
        .client()
        .await
        .batch_execute("VACUUM outbox")
        .await
        .unwrap();

    let mut conn = AsyncPgConnection::establish(&database.url).await.unwrap();
    let (scans, left, prepared) = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            for _ in 0..EVENTS {
                let event = Event::PaymentFailed(PaymentFailed {
                    order_id: Uuid::new_v4(),
                    customer_id: Uuid::new_v4(),
                    amount_cents: 1,
                    reason: "INSUFFICIENT_FUNDS".into(),
                });
                outbox::enqueue(conn, &event, "trace").await?;
            }
            // Read before anything else scans the table.
            let scans = diesel::sql_query(
                "SELECT seq_scan AS seq, idx_scan AS idx \
                     FROM pg_stat_xact_user_tables WHERE relname = 'outbox'",
            )
            .get_result::<Scans>(conn)
            .await?;
            let left = diesel::sql_query("SELECT count(*) AS n FROM outbox")
                .get_result::<Count>(conn)
                .await?;
            // The insert stays prepared on the connection (parsed and
            // planned once, not once per event).
            let prepared = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_prepared_statements \
                     WHERE statement LIKE 'INSERT INTO \"outbox\"%'",
            )
            .get_result::<Count>(conn)
            .await?;
            Ok((scans, left.n, prepared.n))
        })
        .await
        .unwrap();
    assert_eq!(left, 0, "the outbox stays empty");
    assert_eq!(prepared, 1, "prepared outbox inserts");
    assert_eq!(
        (scans.seq, scans.idx),
        (0, EVENTS),
        "(sequential, index) scans of the outbox for {EVENTS} events"
    );
}

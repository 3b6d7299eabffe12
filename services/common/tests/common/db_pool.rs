//! The pool against a real PostgreSQL: pooled connections keep working
//! after the runtime that first used them is gone (an HTTP worker's, at
//! shutdown), and statements marked `prepared()` stay prepared.

use commerce_common::{
    config::DatabaseConfig,
    db::{self, Reuse},
};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Integer},
};
use diesel_async::RunQueryDsl;
use test_support::fresh_database;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// diesel prepares a `sql_query` for each execution and closes it after;
/// `prepared()` keeps it on the connection: the second execution is a bind
/// and execute of the statement the first one prepared.
#[tokio::test]
async fn a_statement_marked_prepared_is_prepared_once_per_connection() {
    let database = fresh_database("prepared").await;
    let pool = db::pool(&DatabaseConfig {
        max_connections: 1,
        ..DatabaseConfig::with_url(&database.url)
    })
    .unwrap();
    let mut conn = pool.get().await.unwrap();
    let prepared_like = |marker: &'static str| {
        diesel::sql_query(
            "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE '%' || $1 || '%' \
             AND statement NOT LIKE '%pg_prepared_statements%'",
        )
        .bind::<diesel::sql_types::Text, _>(marker)
    };
    for round in 1..=3 {
        diesel::sql_query("SELECT $1 /* kept */")
            .bind::<Integer, _>(round)
            .prepared()
            .execute(&mut conn)
            .await
            .unwrap();
        diesel::sql_query("SELECT $1 /* dropped */")
            .bind::<Integer, _>(round)
            .execute(&mut conn)
            .await
            .unwrap();
        let kept: Count = prepared_like("/* kept */")
            .get_result(&mut conn)
            .await
            .unwrap();
        let dropped: Count = prepared_like("/* dropped */")
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!((kept.n, dropped.n), (1, 0), "round {round}");
    }
    drop(conn);
    drop(pool);
    drop(database);
}

#[test]
fn a_pooled_connection_outlives_the_runtime_that_first_used_it() {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (database, pool) = main.block_on(async {
        let database = fresh_database("pool").await;
        let pool = db::pool(&DatabaseConfig {
            max_connections: 1,
            ..DatabaseConfig::with_url(&database.url)
        })
        .unwrap();
        (database, pool)
    });
    // Another runtime (like an HTTP worker's) opens the only connection and
    // gives it back; it stops while the main runtime holds the connection
    // (as the consumer does when it releases its leases at shutdown).
    let (used, used_rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn({
        let pool = pool.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut conn = pool.get().await.unwrap();
                diesel::sql_query("SELECT 1")
                    .execute(&mut conn)
                    .await
                    .unwrap();
            });
            used.send(()).unwrap();
            stop_rx.recv().unwrap();
        }
    });
    used_rx.recv().unwrap();
    main.block_on(async {
        let mut conn = pool.get().await.unwrap();
        stop.send(()).unwrap();
        worker.join().unwrap();
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .expect("the pooled connection still works");
    });
    drop(pool);
    main.block_on(async move { drop(database) });
}

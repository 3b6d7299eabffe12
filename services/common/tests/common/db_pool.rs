//! The pool against a real PostgreSQL: pooled connections keep working
//! after the runtime that first used them is gone (an HTTP worker's, at
//! shutdown), statements marked `prepared()` stay prepared and are planned
//! once. And the
//! migrations: a database migrated when every database had its own copy of
//! the runtime's migrations finds nothing to apply, and `/ready` expects the
//! newest version over the runtime's and the service's sets.

use commerce_common::{
    config::DatabaseConfig,
    db::{self, Reuse},
};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Integer},
};
use diesel_async::RunQueryDsl;
use diesel_migrations::embed_migrations;
use test_support::{TestDatabase, fresh_database};

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

#[derive(QueryableByName)]
struct Plans {
    #[diesel(sql_type = BigInt)]
    generic_plans: i64,
    #[diesel(sql_type = BigInt)]
    custom_plans: i64,
}

/// A statement taking an array is planned once per connection, generically,
/// by both pools: by default PostgreSQL would plan it again for every
/// execution (planning was 8% of the order database's CPU at 200 orders a
/// second).
#[tokio::test]
async fn a_statement_taking_an_array_is_planned_once_per_connection() {
    let database = fresh_database("plans").await;
    let config = DatabaseConfig {
        max_connections: 1,
        ..DatabaseConfig::with_url(&database.url)
    };
    for (name, pool) in [
        ("main", db::pool(&config).unwrap()),
        ("worker", db::worker_pool(&config).unwrap()),
    ] {
        let mut conn = pool.get().await.unwrap();
        for round in 1..=8 {
            diesel::sql_query("SELECT count(*) AS n FROM unnest($1::int[]) AS x(v) /* plans */")
                .bind::<diesel::sql_types::Array<Integer>, _>(vec![round; round as usize])
                .prepared()
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let plans: Plans = diesel::sql_query(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements \
             WHERE statement LIKE '%/* plans */%' AND statement NOT LIKE '%pg_prepared_statements%'",
        )
        .get_result(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            (plans.generic_plans, plans.custom_plans),
            (8, 0),
            "{name} pool: executions on a generic plan, and planned for their values"
        );
    }
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

/// Each database's migrations as its service declares them (`startup.rs`).
fn migrations(database: &str) -> db::Migrations {
    use db::{Migrations, Runtime};
    const GATEWAY: Migrations = Migrations::new(
        Runtime::Outbox,
        embed_migrations!("../../db/migrations/gateway"),
    );
    const ORDER: Migrations = Migrations::new(
        Runtime::OutboxAndConsumer,
        embed_migrations!("../../db/migrations/order"),
    );
    const PAYMENT: Migrations = Migrations::new(
        Runtime::OutboxAndConsumer,
        embed_migrations!("../../db/migrations/payment"),
    );
    const DELIVERY: Migrations = Migrations::new(
        Runtime::OutboxAndConsumer,
        embed_migrations!("../../db/migrations/delivery"),
    );
    match database {
        "gateway" => GATEWAY,
        "order" => ORDER,
        "payment" => PAYMENT,
        "delivery" => DELIVERY,
        other => panic!("no such database: {other}"),
    }
}

/// The versions each database had when every one kept its own copy of the
/// outbox and consumer migrations (`db/migrations/<service>/` up to commit
/// 9a9e415): a database migrated then has exactly these rows.
fn versions_before_the_runtime_sets(database: &str) -> &'static [&'static str] {
    match database {
        "gateway" => &[
            "20261125000001",
            "20261125000002",
            "20261125000030",
            "20261129000050",
        ],
        "order" => &[
            "20261125000001",
            "20261125000002",
            "20261125000010",
            "20261125000020",
            "20261125000030",
            "20261125000040",
            "20261129000050",
            "20261129000060",
            "20261204000070",
            "20261205000080",
            "20261205000090",
            "20261205000100",
        ],
        "payment" => &[
            "20261125000001",
            "20261125000002",
            "20261125000010",
            "20261125000030",
            "20261129000040",
            "20261129000050",
            "20261204000070",
            "20261205000090",
        ],
        "delivery" => &[
            "20261125000001",
            "20261125000002",
            "20261125000010",
            "20261125000030",
            "20261129000050",
            "20261204000070",
            "20261205000090",
        ],
        other => panic!("no such database: {other}"),
    }
}

/// `(version, run_on)` of every applied migration, oldest first.
async fn applied(database: &TestDatabase) -> Vec<(String, String)> {
    database
        .client()
        .await
        .query(
            "SELECT version, run_on::text FROM __diesel_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// The runtime's migrations kept their version ids when they moved to one
/// copy in the shared crate: every version a database had before is still
/// one of its migrations (a renamed one would be applied again over the
/// existing tables), migrating again applies nothing, and `/ready` expects
/// the newest version over both sets (the gateway's is a runtime one).
#[tokio::test]
async fn a_database_migrated_before_the_runtime_sets_finds_nothing_to_apply() {
    for name in ["gateway", "order", "payment", "delivery"] {
        let database = fresh_database(&format!("migrations_{name}")).await;
        let config = DatabaseConfig::with_url(&database.url);
        let expected = db::migrate(&config, migrations(name)).await.unwrap();
        let first = applied(&database).await;
        let versions: Vec<&str> = first.iter().map(|(v, _)| v.as_str()).collect();
        for version in versions_before_the_runtime_sets(name) {
            assert!(
                versions.contains(version),
                "{name}: {version} is no longer a migration: {versions:?}"
            );
        }
        assert_eq!(
            Some(expected.as_str()),
            versions.iter().copied().max(),
            "{name}: migrate returns the newest version"
        );

        let again = db::migrate(&config, migrations(name)).await.unwrap();
        assert_eq!(again, expected, "{name}");
        assert_eq!(
            applied(&database).await,
            first,
            "{name}: nothing applied again"
        );

        let pool = db::pool(&config).unwrap();
        assert_eq!(db::ready(&pool, &expected).await, Ok(()), "{name}");
        database
            .client()
            .await
            .batch_execute(&format!(
                "DELETE FROM __diesel_schema_migrations WHERE version = '{expected}'"
            ))
            .await
            .unwrap();
        let pending = db::ready(&pool, &expected).await.unwrap_err();
        assert!(pending.contains("migrations pending"), "{name}: {pending}");
    }
}

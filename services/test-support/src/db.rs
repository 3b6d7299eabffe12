//! Fresh databases, one per test, on the cluster of `TEST_DATABASE_URL`,
//! and waiting for a count in one to reach a value.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use crate::{env::admin_url, wait_until};

/// A database created for one test. It is not dropped afterwards: the
/// throwaway cluster of `cargo xtask test` goes away as a whole.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    /// Superuser URL of this database.
    pub url: String,
}

impl TestDatabase {
    /// A plain tokio-postgres connection to this database.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// A diesel connection to this database, as the services use, that
    /// counts the statements it sends (BEGIN and COMMIT included) and its
    /// round trips.
    pub async fn counted_connection(&self) -> (AsyncPgConnection, Statements) {
        let mut conn = AsyncPgConnection::establish(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.name));
        let statements = Statements::default();
        conn.set_instrumentation(statements.clone());
        (conn, statements)
    }
}

/// Rows the current transaction of `conn` inserted into `table` so far
/// (`pg_stat_xact_user_tables`), deleted since or not: how many outbox rows
/// a handler wrote, which the outbox's trigger deletes at once.
pub async fn inserted_in_transaction(conn: &mut AsyncPgConnection, table: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT n_tup_ins AS n FROM pg_stat_xact_user_tables WHERE relname = $1")
        .bind::<diesel::sql_types::Text, _>(table)
        .get_result::<Inserted>(conn)
        .await
        .unwrap_or_else(|e| panic!("reading the inserts into {table}: {e}"))
        .n
}

/// The statements a [`TestDatabase::counted_connection`] has sent, and in
/// how many round trips: a statement sent while another is still waiting
/// for its answer (pipelined) shares that one's round trip.
#[derive(Debug, Clone, Default)]
pub struct Statements(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    sent: AtomicUsize,
    round_trips: AtomicUsize,
    in_flight: AtomicUsize,
}

impl Statements {
    pub fn sent(&self) -> usize {
        AtomicUsize::load(&self.0.sent, Ordering::Relaxed)
    }

    pub fn round_trips(&self) -> usize {
        AtomicUsize::load(&self.0.round_trips, Ordering::Relaxed)
    }
}

impl Instrumentation for Statements {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartQuery { .. } => {
                self.0.sent.fetch_add(1, Ordering::Relaxed);
                if self.0.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
                    self.0.round_trips.fetch_add(1, Ordering::Relaxed);
                }
            }
            InstrumentationEvent::FinishQuery { .. } => {
                self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// The one bigint `sql` yields; panics naming `sql` when it fails.
pub async fn query_i64(database: &TestDatabase, sql: &str) -> i64 {
    database
        .client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Like [`query_i64`], but `None` while the query fails (tables not migrated yet).
pub async fn try_query_i64(database: &TestDatabase, sql: &str) -> Option<i64> {
    database
        .client()
        .await
        .query_one(sql, &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

/// Waits up to `timeout` until `sql` (one bigint) yields `expected`.
pub async fn wait_for_value(database: &TestDatabase, sql: &str, expected: i64, timeout: Duration) {
    wait_until(timeout, &format!("{sql} = {expected}"), || async {
        (query_i64(database, sql).await == expected).then_some(())
    })
    .await;
}

/// Waits up to `timeout` until `sql` (one bigint) yields at least `minimum`.
pub async fn wait_for_value_at_least(
    database: &TestDatabase,
    sql: &str,
    minimum: i64,
    timeout: Duration,
) {
    wait_until(timeout, &format!("{sql} >= {minimum}"), || async {
        (query_i64(database, sql).await >= minimum).then_some(())
    })
    .await;
}

/// Creates an empty database named `<prefix>_<random>` (migrations are the
/// service's job: it applies them at start-up).
pub async fn fresh_database(prefix: &str) -> TestDatabase {
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let name = format!("{prefix}_{}", Uuid::new_v4().simple());
    let admin = admin_client().await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
    TestDatabase {
        url: database_url(&admin_url(), &name),
        name,
    }
}

/// A connection to the admin database of `TEST_DATABASE_URL`.
pub async fn admin_client() -> Client {
    connect(&admin_url()).await
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at {url}: {e}. Set TEST_DATABASE_URL or run the \
                 tests through `cargo xtask test`, which starts a cluster"
            )
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// `admin` (a `postgres://` URL) with its database name replaced by `name`;
/// user, password, host, port and query parameters are kept.
pub fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut url = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:55999/postgres", "x"),
            "postgres://postgres@127.0.0.1:55999/x"
        );
        assert_eq!(
            database_url("postgres://u:p@h:1/db?sslmode=disable", "y"),
            "postgres://u:p@h:1/y?sslmode=disable"
        );
        assert_eq!(database_url("postgres://h:1", "z"), "postgres://h:1/z");
    }
}

//! Database plumbing shared by the services: the async diesel pool, embedded
//! migrations applied at start-up (the runtime's tables, one copy here, and
//! the service's own), and the readiness probe.

use diesel::{
    ConnectionError, ConnectionResult, QueryResult, QueryableByName,
    dsl::{Limit, Offset},
    migration::{self, Migration, MigrationSource},
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    query_dsl::methods::{LimitDsl, OffsetDsl},
    sql_query,
    sql_types::Text,
};
use diesel_async::{
    AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    async_connection_wrapper::AsyncConnectionWrapper,
    methods::LoadQuery,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, deadpool::Pool,
    },
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures::FutureExt;

use crate::config::DatabaseConfig;

pub type DbPool = Pool<AsyncPgConnection>;

/// The service's main connection pool (the consumer runtime, the service's
/// own tasks, `/ready`). A connection handed back is reused without a test
/// query (`RecyclingMethod::Fast`; the default ran `SELECT 1` on every
/// checkout, a round trip per request and per consumer transaction, about a
/// seventh of all statements under load). A connection that failed is marked
/// broken by diesel-async and dropped; after a database restart each idle
/// connection fails the one request that finds it dead.
///
/// Connections are opened on the runtime that builds the pool (the service's
/// main one), whichever runtime first asks for them: a connection's driver
/// task lives on the runtime it was opened on, and an HTTP worker's runtime
/// stops before the consumer releases its leases at shutdown, which then
/// found its connections closed (and the leases had to expire instead).
pub fn pool(config: &DatabaseConfig) -> anyhow::Result<DbPool> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return worker_pool(config);
    };
    let mut manager_config = ManagerConfig::default();
    manager_config.custom_setup = Box::new(move |url| {
        let opened = runtime.spawn(open(url.to_owned()));
        async move {
            opened.await.unwrap_or_else(|e| {
                Err(ConnectionError::BadConnection(format!(
                    "opening the connection: {e}"
                )))
            })
        }
        .boxed()
    });
    build_pool(config, manager_config)
}

/// An HTTP worker's own pool, built on the worker's thread: its connections
/// are opened on (and their driver tasks live on) the runtime of the worker
/// that uses them, and stop with it. Through the main pool every statement
/// of a request crossed threads twice (the worker woke the main runtime's
/// thread to send it, which woke the worker with the answer): at 200 orders
/// a second the order service's main thread switched 4,700 times a second,
/// 23 times per order.
pub fn worker_pool(config: &DatabaseConfig) -> anyhow::Result<DbPool> {
    let mut manager_config = ManagerConfig::default();
    manager_config.custom_setup = Box::new(|url| open(url.to_owned()).boxed());
    build_pool(config, manager_config)
}

/// How a pooled connection plans its prepared statements: once, generically.
/// By default PostgreSQL plans a prepared statement again for each execution
/// (a custom plan for the values bound) whenever the generic plan's estimate
/// is the higher one, which is the case for every statement taking arrays
/// (`unnest($1)`, `= ANY($1)`: the consumer's claim with its inbox entries,
/// the order placement, the order saga's writes): at 200 orders a second
/// planning was 8% of the order database's backends (`perf`:
/// `pg_plan_queries` under `GetCachedPlan`), 0.2% once plans were generic,
/// and the backends took 8% less CPU (docs/perf.md). The services'
/// statements find their rows through an index on the values they are
/// given, so one plan fits all values; a statement that must match a
/// partial index's predicate writes the predicate's values into its SQL,
/// not as parameters (a generic plan cannot use the index otherwise). A
/// plan still follows the statistics: an `ANALYZE` of its tables has it
/// made again.
const PLAN_ONCE: &str = "SET plan_cache_mode = force_generic_plan";

/// A new connection of the pools, set up ([`PLAN_ONCE`]).
async fn open(url: String) -> ConnectionResult<AsyncPgConnection> {
    let mut conn = <AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url).await?;
    conn.batch_execute(PLAN_ONCE)
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

fn build_pool(
    config: &DatabaseConfig,
    mut manager_config: ManagerConfig<AsyncPgConnection>,
) -> anyhow::Result<DbPool> {
    manager_config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        config.url.expose(),
        manager_config,
    );
    Ok(Pool::builder(manager)
        .max_size(config.max_connections)
        .build()?)
}

/// The outbox (table, publication, the trigger that empties it): every
/// database that publishes events has it.
const OUTBOX: EmbeddedMigrations = embed_migrations!("../../db/migrations/runtime/outbox");
/// The consumer runtime's tables (offsets, leases, inbox, dead letters).
const CONSUMER: EmbeddedMigrations = embed_migrations!("../../db/migrations/runtime/consumer");

/// Which of the runtime's tables a database holds besides the service's own.
/// Their migrations keep the version ids they had when every database had a
/// copy of them, so a database migrated then finds them applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// The outbox: the service publishes events (the gateway).
    Outbox,
    /// The outbox and the consumer tables: the service publishes and consumes.
    OutboxAndConsumer,
}

/// A database's migrations: the runtime's sets it needs and the service's own.
pub struct Migrations {
    runtime: Runtime,
    own: Option<EmbeddedMigrations>,
}

impl Migrations {
    /// `own` is the service's `embed_migrations!` of `db/migrations/<service>`.
    pub const fn new(runtime: Runtime, own: EmbeddedMigrations) -> Self {
        Self {
            runtime,
            own: Some(own),
        }
    }

    /// The runtime's tables alone (the runtime's own tests).
    pub const fn runtime(runtime: Runtime) -> Self {
        Self { runtime, own: None }
    }
}

/// One source for diesel: it applies the pending migrations of all the sets
/// in the order of their versions, as it did when they were one folder, so a
/// fresh database is built in the same order as before (the runtime's first
/// two, the outbox and the consumer tables, are the oldest of every set).
///
/// Two sets may not share a version: diesel knows a migration only by its
/// version, and would take the second for applied once the first is (the
/// gateway's `users` has the consumer tables' version, 20261125000002).
impl MigrationSource<Pg> for Migrations {
    fn migrations(&self) -> migration::Result<Vec<Box<dyn Migration<Pg>>>> {
        let mut all = MigrationSource::<Pg>::migrations(&OUTBOX)?;
        if self.runtime == Runtime::OutboxAndConsumer {
            all.extend(MigrationSource::<Pg>::migrations(&CONSUMER)?);
        }
        if let Some(own) = &self.own {
            all.extend(MigrationSource::<Pg>::migrations(own)?);
        }
        let mut versions = std::collections::HashSet::new();
        for migration in &all {
            let version = migration.name().version().to_string();
            if !versions.insert(version.clone()) {
                return Err(format!(
                    "two migrations have the version {version}: rename the service's \
                     (the runtime's keep theirs)"
                )
                .into());
            }
        }
        Ok(all)
    }
}

/// Applies pending migrations; returns the newest applied version over all
/// the sets, as the database records it, for [`ready`] to compare against.
pub async fn migrate(config: &DatabaseConfig, migrations: Migrations) -> anyhow::Result<String> {
    let url = config.url.expose().to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        use diesel::Connection;
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)?;
        let applied = conn
            .run_pending_migrations(migrations)
            .map_err(|e| anyhow::anyhow!("applying migrations: {e}"))?;
        for version in applied {
            tracing::info!(%version, "migration applied");
        }
        let applied = conn
            .applied_migrations()
            .map_err(|e| anyhow::anyhow!("reading applied migrations: {e}"))?;
        Ok(applied
            .iter()
            .map(|v| v.to_string())
            .max()
            .unwrap_or_default())
    })
    .await?
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

/// One page (1-based, `page_size` rows) of `rows`, and how many rows
/// `count` finds in all: the two statements of every paged list (a
/// customer's orders, payments or deliveries, the catalogue). A page past
/// the last one is empty, with the true total.
pub async fn page<'q, Rows, Count, T>(
    conn: &mut AsyncPgConnection,
    rows: Rows,
    count: Count,
    page: i64,
    page_size: i64,
) -> QueryResult<(Vec<T>, i64)>
where
    Rows: LimitDsl,
    Limit<Rows>: OffsetDsl,
    Offset<Limit<Rows>>: LoadQuery<'q, AsyncPgConnection, T> + 'q,
    Count: LoadQuery<'q, AsyncPgConnection, i64> + 'q,
    T: Send,
{
    let total = count.get_result(conn).await?;
    let offset = (page - 1).saturating_mul(page_size);
    let rows = rows.limit(page_size).offset(offset).load(conn).await?;
    Ok((rows, total))
}

/// Ready when the database answers and the newest embedded migration is applied.
pub async fn ready(pool: &DbPool, expected_version: &str) -> Result<(), String> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| format!("database unreachable: {e}"))?;
    let rows: Vec<Version> =
        sql_query("SELECT coalesce(max(version), '') AS version FROM __diesel_schema_migrations")
            .load(&mut conn)
            .await
            .map_err(|e| format!("database query failed: {e}"))?;
    let applied = rows
        .into_iter()
        .next()
        .map(|v| v.version)
        .unwrap_or_default();
    if applied.as_str() < expected_version {
        return Err(format!(
            "migrations pending: applied {applied}, expected {expected_version}"
        ));
    }
    Ok(())
}

/// A statement whose SQL text is one of a few fixed strings, marked so that
/// the connection keeps it prepared ([`Reuse::prepared`]).
///
/// diesel prepares `sql_query`, `UPDATE` and multi-row `INSERT` statements
/// anew on every execution, because in general their text can vary without
/// bound; diesel-async then pays a round trip to prepare (parse, plan), a
/// second to execute and a `Close` afterwards. For the statements of the
/// hot paths (the consumer's offset and inbox writes, the saga's updates)
/// that overhead was a large part of the database's CPU per event (see
/// docs/perf.md, "Fewer round trips per event"). Their text does not
/// vary (or only among a handful of shapes), so each connection can keep
/// them prepared, keyed by their SQL like any cached statement.
#[derive(Debug, Clone, Copy)]
pub struct Prepared<Q>(Q);

/// [`Prepared`] for any query: `diesel::update(..).set(..).prepared()`.
pub trait Reuse: Sized {
    /// Keeps this statement prepared on the connection. Only for queries
    /// whose SQL text takes a small, fixed number of forms (never one built
    /// from data), since every distinct text stays cached per connection.
    fn prepared(self) -> Prepared<Self> {
        Prepared(self)
    }
}

impl<Q> Reuse for Q {}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

/// No static id: the statement cache keys it by its SQL text.
impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

/// The reads of a participant's records of orders (the payment service's
/// payments, the delivery service's deliveries), one row per order, written
/// once for both tables: `by_order` finds an order's record whoever's it
/// is (what a repeated request is answered from), `$one` the record of one
/// of a customer's orders (another customer's is not found), `$page` a
/// page of the customer's records, newest first, with their total count.
/// `$table` needs the columns `id`, `order_id`, `customer_id` and
/// `created_at`, and `$row` a `customer_id` field.
#[macro_export]
macro_rules! order_records {
    ($table:ident, $row:ty, one: $one:ident, page: $page:ident) => {
        /// The record of an order, whoever's it is.
        pub async fn by_order(
            conn: &mut ::diesel_async::AsyncPgConnection,
            order_id: ::uuid::Uuid,
        ) -> ::diesel::QueryResult<Option<$row>> {
            use ::diesel::prelude::*;
            use ::diesel_async::RunQueryDsl;
            $table::table
                .filter($table::order_id.eq(order_id))
                .select(<$row>::as_select())
                .first(conn)
                .await
                .optional()
        }

        /// The record of one of the customer's orders.
        pub async fn $one(
            conn: &mut ::diesel_async::AsyncPgConnection,
            customer_id: ::uuid::Uuid,
            order_id: ::uuid::Uuid,
        ) -> ::diesel::QueryResult<Option<$row>> {
            let found = by_order(conn, order_id).await?;
            Ok(found.filter(|row| row.customer_id == customer_id))
        }

        /// A page of the customer's records, newest first, and their total
        /// count.
        pub async fn $page(
            conn: &mut ::diesel_async::AsyncPgConnection,
            customer_id: ::uuid::Uuid,
            page: i64,
            page_size: i64,
        ) -> ::diesel::QueryResult<(Vec<$row>, i64)> {
            use ::diesel::prelude::*;
            let mine = $table::table.filter($table::customer_id.eq(customer_id));
            let newest_first = mine
                .order(($table::created_at.desc(), $table::id.desc()))
                .select(<$row>::as_select());
            $crate::db::page(conn, newest_first, mine.count(), page, page_size).await
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_in_two_sets_is_refused() {
        const CONSUMING_GATEWAY: Migrations = Migrations::new(
            Runtime::OutboxAndConsumer,
            embed_migrations!("../../db/migrations/gateway"),
        );
        let error = MigrationSource::<Pg>::migrations(&CONSUMING_GATEWAY)
            .err()
            .expect("users and the consumer tables share a version");
        assert!(error.to_string().contains("20261125000002"), "{error}");

        const GATEWAY: Migrations = Migrations::new(
            Runtime::Outbox,
            embed_migrations!("../../db/migrations/gateway"),
        );
        assert_eq!(
            MigrationSource::<Pg>::migrations(&GATEWAY).unwrap().len(),
            4
        );
    }
}

//! Database plumbing shared by the services: the async diesel pool, embedded
//! migrations applied at start-up, and the readiness probe.

use diesel::{ConnectionError, QueryableByName, sql_query, sql_types::Text};
use diesel_async::{
    AsyncPgConnection, RunQueryDsl,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, deadpool::Pool,
    },
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use futures::FutureExt;

use crate::config::DatabaseConfig;

pub type DbPool = Pool<AsyncPgConnection>;

/// The service's connection pool. A connection handed back is reused without
/// a test query (`RecyclingMethod::Fast`; the default ran `SELECT 1` on every
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
    let mut manager_config = ManagerConfig::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        manager_config.custom_setup = Box::new(move |url| {
            let url = url.to_owned();
            let opened = runtime.spawn(async move {
                <AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url).await
            });
            async move {
                opened.await.unwrap_or_else(|e| {
                    Err(ConnectionError::BadConnection(format!(
                        "opening the connection: {e}"
                    )))
                })
            }
            .boxed()
        });
    }
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        config.url.expose(),
        manager_config,
    );
    Ok(Pool::builder(manager)
        .max_size(config.max_connections)
        .build()?)
}

/// Applies pending migrations; returns the newest applied version, as the
/// database records it, for [`ready`] to compare against.
pub async fn migrate(
    config: &DatabaseConfig,
    migrations: EmbeddedMigrations,
) -> anyhow::Result<String> {
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

//! The SQL side of a source, over a normal connection: checks (and creates)
//! the publication, inspects the slot and its marker ([`crate::slots`]),
//! and reads the slot's lag and WAL status for the lag probe
//! ([`crate::probe`], a connection of its own). Used at session start, by
//! the probe, and at a graceful stop (saving the slot's position).

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::replication::{Lsn, connection::quote_ident};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("database: {}", with_causes(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "publication {publication} is missing and could not be created ({reason}); \
         create it as the table owner: CREATE PUBLICATION {publication} FOR TABLE {table} WITH (publish = 'insert')"
    )]
    PublicationMissing {
        publication: String,
        table: String,
        reason: String,
    },
    #[error("publication {publication} does not publish {table}")]
    PublicationWithoutTable { publication: String, table: String },
    #[error("unexpected answer from the database: {0}")]
    Unexpected(String),
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// The backend using the slot (or still creating it).
    pub active_pid: Option<i32>,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub wal_status: Option<String>,
    pub confirmed_flush: Option<Lsn>,
}

/// What the lag probe reads from `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotReading {
    /// reserved, extended, unreserved or lost (NULL while being created).
    pub wal_status: Option<String>,
    /// WAL that can still be written before the slot is in danger of being
    /// lost; NULL with an unlimited `max_slot_wal_keep_size`.
    pub safe_wal_size: Option<i64>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`.
    pub lag_bytes: Option<u64>,
}

pub struct Catalog {
    client: Client,
    timeout: Duration,
}

impl Catalog {
    pub async fn connect(
        url: &str,
        application_name: &str,
        timeout: Duration,
    ) -> Result<Self, CatalogError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        config.application_name(application_name);
        let (client, connection) = within(timeout, config.connect(NoTls)).await?;
        // The connection task ends when `client` is dropped.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "catalog connection closed");
            }
        });
        Ok(Self { client, timeout })
    }

    /// Creates the publication when it is missing; checks it covers the table.
    pub async fn ensure_publication(
        &self,
        publication: &str,
        schema: &str,
        table: &str,
    ) -> Result<(), CatalogError> {
        let qualified = format!("{}.{}", quote_ident(schema), quote_ident(table));
        let exists = within(
            self.timeout,
            self.client.query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&publication],
            ),
        )
        .await?
        .is_some();
        if !exists {
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {qualified} WITH (publish = 'insert')",
                quote_ident(publication)
            );
            within(self.timeout, self.client.batch_execute(&sql))
                .await
                .map_err(|e| CatalogError::PublicationMissing {
                    publication: publication.to_owned(),
                    table: qualified.clone(),
                    reason: match e {
                        CatalogError::Database(e) => with_causes(&e),
                        other => other.to_string(),
                    },
                })?;
            tracing::info!(publication, table = %qualified, "created publication");
            return Ok(());
        }
        let covers = within(
            self.timeout,
            self.client.query_opt(
                "SELECT 1 FROM pg_publication_tables \
                 WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&publication, &schema, &table],
            ),
        )
        .await?
        .is_some();
        if covers {
            Ok(())
        } else {
            Err(CatalogError::PublicationWithoutTable {
                publication: publication.to_owned(),
                table: qualified,
            })
        }
    }

    pub async fn slot(&self, slot: &str) -> Result<Option<SlotInfo>, CatalogError> {
        let row = within(
            self.timeout,
            self.client.query_opt(
                "SELECT plugin::text, database::text, wal_status, confirmed_flush_lsn::text, \
                        active_pid \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            ),
        )
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let confirmed: Option<String> = row.try_get(3)?;
        Ok(Some(SlotInfo {
            active_pid: row.try_get(4)?,
            plugin: row.try_get(0)?,
            database: row.try_get(1)?,
            wal_status: row.try_get(2)?,
            confirmed_flush: confirmed.and_then(|lsn| lsn.parse().ok()),
        }))
    }

    pub async fn current_database(&self) -> Result<String, CatalogError> {
        let row = within(
            self.timeout,
            self.client
                .query_one("SELECT current_database()::text", &[]),
        )
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Has PostgreSQL write the slot's confirmed position to disk at its next
    /// checkpoint (the shutdown checkpoint included), at least `confirmed`.
    ///
    /// PostgreSQL 15 saves a logical slot when its restart point moves, not
    /// when a streaming client confirms further, so after a server restart
    /// the slot can resume seconds behind what the relay confirmed and
    /// replay those transactions. Harmless (consumers skip repeats) but
    /// avoidable after a planned stop: advancing the slot through SQL marks
    /// it for saving. Possible only once the walsender let go of the slot,
    /// so "in use" is retried for up to `patience`. Returns the position
    /// saved, or `None` when the slot is gone.
    pub async fn save_slot_position(
        &self,
        slot: &str,
        confirmed: Lsn,
        patience: Duration,
    ) -> Result<Option<Lsn>, CatalogError> {
        let deadline = tokio::time::Instant::now() + patience;
        let confirmed = confirmed.to_string();
        loop {
            let answer = within(
                self.timeout,
                self.client.query_opt(
                    "SELECT (pg_replication_slot_advance(slot_name, \
                         greatest(confirmed_flush_lsn, $2::text::pg_lsn))).end_lsn::text \
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot, &confirmed],
                ),
            )
            .await;
            match answer {
                Ok(None) => return Ok(None),
                Ok(Some(row)) => return lsn_column(&row).map(Some),
                Err(CatalogError::Database(e))
                    if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The oldest transactions holding an xid anywhere in the cluster
    /// (what CREATE_REPLICATION_SLOT waits for), oldest first, described for
    /// an error message: sessions from `pg_stat_activity` (other roles'
    /// sessions show only with `pg_read_all_stats` or as superuser) and
    /// prepared transactions.
    pub async fn oldest_transactions(&self, limit: i64) -> Result<Vec<String>, CatalogError> {
        let sessions = within(
            self.timeout,
            self.client.query(
                "SELECT format('pid %s (user %s, database %s, application %L, %s since %s, xid %s)', \
                        pid, usename, datname, application_name, state, \
                        to_char(xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS UTC'), \
                        backend_xid) \
                 FROM pg_stat_activity \
                 WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
                   AND backend_type <> 'walsender' \
                 ORDER BY age(backend_xid) DESC LIMIT $1",
                &[&limit],
            ),
        )
        .await?;
        let prepared = within(
            self.timeout,
            self.client.query(
                "SELECT format('prepared transaction %L (owner %s, database %s, prepared %s, xid %s)', \
                        gid, owner, database, \
                        to_char(prepared AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS UTC'), \
                        transaction) \
                 FROM pg_prepared_xacts ORDER BY age(transaction) DESC LIMIT $1",
                &[&limit],
            ),
        )
        .await?;
        sessions
            .iter()
            .chain(&prepared)
            .map(|row| row.try_get::<_, String>(0).map_err(CatalogError::from))
            .collect()
    }

    /// Whether `schema.name` exists (a table, or any relation).
    pub async fn relation_exists(&self, schema: &str, name: &str) -> Result<bool, CatalogError> {
        let qualified = format!("{}.{}", quote_ident(schema), quote_ident(name));
        let row = within(
            self.timeout,
            self.client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified]),
        )
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Rows ever inserted into `schema.table` as the statistics count them
    /// (since the last stats reset; reported with a little delay).
    pub async fn inserts_into(&self, schema: &str, table: &str) -> Result<i64, CatalogError> {
        let row = within(
            self.timeout,
            self.client.query_opt(
                "SELECT n_tup_ins FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
                &[&schema, &table],
            ),
        )
        .await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?.unwrap_or(0))
    }

    /// The slot as the lag probe reports it, `None` when there is none.
    pub async fn slot_reading(&self, slot: &str) -> Result<Option<SlotReading>, CatalogError> {
        let row = within(
            self.timeout,
            self.client.query_opt(
                "SELECT wal_status, safe_wal_size, \
                        (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            ),
        )
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let lag: Option<i64> = row.try_get(2)?;
        Ok(Some(SlotReading {
            wal_status: row.try_get(0)?,
            safe_wal_size: row.try_get(1)?,
            lag_bytes: lag.map(|bytes| u64::try_from(bytes).unwrap_or(0)),
        }))
    }

    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, CatalogError> {
        within(self.timeout, self.client.execute(sql, params)).await
    }

    pub async fn batch_execute(&self, sql: &str) -> Result<(), CatalogError> {
        within(self.timeout, self.client.batch_execute(sql)).await
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, CatalogError> {
        within(self.timeout, self.client.query_opt(sql, params)).await
    }
}

/// The first column of `row`, a `pg_lsn` selected as text.
fn lsn_column(row: &tokio_postgres::Row) -> Result<Lsn, CatalogError> {
    let text: String = row.try_get(0)?;
    text.parse()
        .map_err(|e: crate::replication::lsn::InvalidLsn| CatalogError::Unexpected(e.to_string()))
}

/// An error and its causes, `outer: inner: ...` (tokio-postgres keeps the
/// useful part, like "Connection refused", in the source).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text = format!("{text}: {inner_text}");
        }
        cause = inner.source();
    }
    text
}

async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, CatalogError> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| CatalogError::Timeout(timeout))?
        .map_err(CatalogError::from)
}

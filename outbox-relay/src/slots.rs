//! A source's replication slot and the marker that outlives it: the one
//! place slots are created, by `outbox-relay create-slots` (run before any
//! service can write) and by the relay for a source it never streamed from.
//!
//! Outbox rows are deleted in the transaction that writes them, so the WAL
//! retained by the slot is an event's only copy until it is published. A
//! slot made "now" in place of one that went missing (dropped, invalidated
//! by `max_slot_wal_keep_size`, not on this server after a failover or a
//! restore) silently skips everything its predecessor had not confirmed.
//! The marker, a row in `outbox_relay.slots` of the source database, tells
//! "never had a slot" (create it) from "had one" (stop with an error until
//! an operator re-creates it with `create-slots --recreate <source>`).

use std::time::Duration;

use crate::catalog::{Catalog, SlotInfo};
use crate::error::SourceError;
use crate::replication::{Lsn, ReplicationConnection, ReplicationError};

/// The schema of the marker table, owned by the relay's role.
pub const MARKER_SCHEMA: &str = "outbox_relay";

/// What a source's slot needs, as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The relay: creates the slot of a source that never had one, refuses
    /// to replace one that went missing or was lost.
    Relay,
    /// `create-slots`: the same, plus (with `recreate`) replacing a missing
    /// or lost slot, which the operator asked for knowingly.
    CreateSlots { recreate: bool },
}

/// What was done to make the slot usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The slot was there; streaming resumes from its confirmed position.
    Existed,
    /// A first slot for this source.
    Created,
    /// A new slot replacing one that was missing or lost (`recreate`).
    Recreated { was: &'static str },
}

/// A usable slot: where its stream starts, and how it came to be.
pub struct Prepared {
    pub confirmed: Lsn,
    pub outcome: Outcome,
}

/// What the marker table says about a slot.
struct Marker {
    since: String,
}

/// Finds, creates or (in `CreateSlots { recreate: true }` mode) replaces
/// `slot` of `source`. `outbox_exists`: the outbox table exists (with its
/// publication, checked by the caller); without it nothing can have been
/// written, so a missing slot loses nothing.
pub async fn prepare(
    catalog: &Catalog,
    connection: &mut ReplicationConnection,
    source: &str,
    slot: &str,
    outbox_exists: bool,
    mode: Mode,
    create_timeout: Duration,
) -> Result<Prepared, SourceError> {
    let info = check_slot(catalog, slot).await?;
    let marker = read_marker(catalog, slot).await?;
    let recreate = mode == Mode::CreateSlots { recreate: true };
    let was = match (&info, &marker) {
        (Some(info), _) if info.wal_status.as_deref() == Some("lost") => {
            if !recreate {
                return Err(SourceError::SlotLost {
                    source_name: source.to_owned(),
                    slot: slot.to_owned(),
                });
            }
            drop_slot(catalog, slot).await?;
            Some("lost")
        }
        (Some(info), Some(_)) => {
            return Ok(Prepared {
                confirmed: info.confirmed_flush.unwrap_or_default(),
                outcome: Outcome::Existed,
            });
        }
        (Some(info), None) if outbox_exists => {
            // A slot made before markers existed (or whose marker write
            // failed): adopt it. Safe to write now, the publication exists
            // (see `create` on why that matters).
            write_marker(catalog, slot, source).await?;
            return Ok(Prepared {
                confirmed: info.confirmed_flush.unwrap_or_default(),
                outcome: Outcome::Existed,
            });
        }
        (Some(_), None) => {
            // No outbox yet, so nothing to lose; but the marker write would
            // be decoded by this slot before any publication exists, which
            // PostgreSQL 15 turns into an error forever. Start it over.
            drop_slot(catalog, slot).await?;
            None
        }
        (None, Some(marker)) if outbox_exists => {
            if !recreate {
                return Err(SourceError::SlotMissing {
                    source_name: source.to_owned(),
                    slot: slot.to_owned(),
                    since: marker.since.clone(),
                });
            }
            Some("missing")
        }
        (None, _) => None,
    };
    let confirmed = create(
        catalog,
        connection,
        source,
        slot,
        outbox_exists,
        create_timeout,
    )
    .await?;
    let outcome = match was {
        Some(was) => {
            record_recreation(catalog, slot).await?;
            Outcome::Recreated { was }
        }
        None => Outcome::Created,
    };
    Ok(Prepared { confirmed, outcome })
}

/// Creates the slot and its marker. PostgreSQL 15's pgoutput looks the
/// publication up when it decodes a change of any table; a change from
/// before the publication existed fails decoding for good. So with the
/// outbox (and publication) in place the marker is written after the slot
/// (a failed creation leaves no marker, hence no false alarm); on a
/// database not migrated yet it is written before (never decoded), and a
/// marker without slot there is harmless: nothing can have been written.
async fn create(
    catalog: &Catalog,
    connection: &mut ReplicationConnection,
    source: &str,
    slot: &str,
    outbox_exists: bool,
    timeout: Duration,
) -> Result<Lsn, SourceError> {
    ensure_marker_table(catalog).await?;
    if !outbox_exists {
        write_marker(catalog, slot, source).await?;
    }
    let confirmed = match connection.create_slot(slot, timeout).await {
        Ok(start) => start,
        Err(ReplicationError::Timeout { .. }) => {
            return Err(slot_creation_blocked(catalog, timeout).await);
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(source, slot, start = %confirmed, "created replication slot");
    if outbox_exists {
        write_marker(catalog, slot, source).await?;
    }
    Ok(confirmed)
}

/// The slot as `pg_replication_slots` shows it, if it is this source's kind
/// of slot; `None` when there is none.
async fn check_slot(catalog: &Catalog, slot: &str) -> Result<Option<SlotInfo>, SourceError> {
    let Some(info) = catalog.slot(slot).await? else {
        return Ok(None);
    };
    if info.confirmed_flush.is_none()
        && let Some(pid) = info.active_pid
    {
        // Another backend's CREATE_REPLICATION_SLOT has not finished.
        return Err(SourceError::SlotBeingCreated {
            slot: slot.to_owned(),
            pid,
        });
    }
    let database = catalog.current_database().await?;
    if info.plugin.as_deref() != Some("pgoutput") || info.database.as_deref() != Some(&database) {
        return Err(SourceError::ForeignSlot {
            slot: slot.to_owned(),
            detail: format!(
                "plugin {:?}, database {:?}",
                info.plugin.clone().unwrap_or_default(),
                info.database.clone().unwrap_or_default()
            ),
        });
    }
    Ok(Some(info))
}

/// The error of a slot creation that ran out of time, naming what it waits
/// for (as far as the relay's role can see).
async fn slot_creation_blocked(catalog: &Catalog, after: Duration) -> SourceError {
    let blockers = match catalog.oldest_transactions(3).await {
        Ok(list) if list.is_empty() => "none visible to the relay's role (other roles' \
                                        sessions show only with pg_read_all_stats)"
            .to_owned(),
        Ok(list) => list.join("; "),
        Err(e) => format!("unknown ({e})"),
    };
    SourceError::SlotCreationBlocked { after, blockers }
}

async fn drop_slot(catalog: &Catalog, slot: &str) -> Result<(), SourceError> {
    catalog
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await?;
    tracing::warn!(slot, "dropped replication slot to re-create it");
    Ok(())
}

/// The marker of `slot`, if the table and the row exist.
async fn read_marker(catalog: &Catalog, slot: &str) -> Result<Option<Marker>, SourceError> {
    if !catalog.relation_exists(MARKER_SCHEMA, "slots").await? {
        return Ok(None);
    }
    let row = catalog
        .query_opt(
            "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS UTC') \
             FROM outbox_relay.slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(marker_error)?;
    Ok(row.map(|row| Marker { since: row.get(0) }))
}

/// Creates the marker table when it is missing. Checked first: `CREATE
/// SCHEMA IF NOT EXISTS` needs the CREATE privilege even when the schema
/// exists.
async fn ensure_marker_table(catalog: &Catalog) -> Result<(), SourceError> {
    if catalog.relation_exists(MARKER_SCHEMA, "slots").await? {
        return Ok(());
    }
    catalog
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS outbox_relay; \
             CREATE TABLE IF NOT EXISTS outbox_relay.slots ( \
                 slot_name    text        PRIMARY KEY, \
                 source       text        NOT NULL, \
                 created_at   timestamptz NOT NULL DEFAULT now(), \
                 recreated_at timestamptz, \
                 recreations  integer     NOT NULL DEFAULT 0); \
             COMMENT ON TABLE outbox_relay.slots IS \
                 'Replication slots the outbox relay created in this database: a slot listed \
                  here but missing from pg_replication_slots was dropped or lost, and the relay \
                  refuses to replace it silently (outbox-relay create-slots --recreate <source>)'",
        )
        .await
        .map_err(marker_error)
}

async fn write_marker(catalog: &Catalog, slot: &str, source: &str) -> Result<(), SourceError> {
    ensure_marker_table(catalog).await?;
    catalog
        .execute(
            "INSERT INTO outbox_relay.slots (slot_name, source) VALUES ($1, $2) \
             ON CONFLICT (slot_name) DO NOTHING",
            &[&slot, &source],
        )
        .await
        .map_err(marker_error)?;
    Ok(())
}

async fn record_recreation(catalog: &Catalog, slot: &str) -> Result<(), SourceError> {
    catalog
        .execute(
            "UPDATE outbox_relay.slots \
             SET recreated_at = now(), recreations = recreations + 1 WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(marker_error)?;
    Ok(())
}

fn marker_error(error: crate::catalog::CatalogError) -> SourceError {
    SourceError::Marker(error.to_string())
}

//! Why a source stopped streaming, and which of those need an operator.

use std::time::Duration;

use crate::catalog::CatalogError;
use crate::publisher::PublishError;
use crate::replication::ReplicationError;
use crate::replication::pgoutput::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("replication: {0}")]
    Replication(#[from] ReplicationError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(
        "replication slot {slot} is lost (wal_status = lost): PostgreSQL removed WAL it still \
         needed (max_slot_wal_keep_size), so events committed after its last confirmed position \
         will never be published from it. The source stays stopped until an operator re-creates \
         the slot: outbox-relay create-slots --recreate {source_name} (docs/operations.md, \
         \"A missing or lost slot\"); the order saga's re-drive heals the lost events \
         (docs/saga.md)"
    )]
    SlotLost { source_name: String, slot: String },
    #[error(
        "replication slot {slot} is missing, but source {source_name} has had one since {since} \
         (outbox_relay.slots): it was dropped, or this is another server (a failover, a \
         restore). Events committed after its last confirmed position were not published, and \
         a new slot would silently skip them. The source stays stopped until an operator \
         re-creates the slot: outbox-relay create-slots --recreate {source_name} \
         (docs/operations.md, \"A missing or lost slot\"); the order saga's re-drive heals the \
         lost events (docs/saga.md)"
    )]
    SlotMissing {
        source_name: String,
        slot: String,
        since: String,
    },
    #[error(
        "cannot keep the slot marker (outbox_relay.slots) in the source database: {0}. The \
         relay's role needs the CREATE privilege on the database once, to make its schema: \
         GRANT CREATE ON DATABASE <database> TO <relay role>"
    )]
    Marker(String),
    #[error("replication slot {slot} is not a pgoutput slot of this database ({detail})")]
    ForeignSlot { slot: String, detail: String },
    #[error("publishing: {0}")]
    Publish(#[from] PublishError),
    #[error("decoding: {0}")]
    Decode(#[from] DecodeError),
    #[error(
        "CREATE_REPLICATION_SLOT did not finish within {after:?} and was cancelled: PostgreSQL \
         creates a slot only once every transaction open in the cluster when it started has \
         ended. Oldest open: {blockers}. End it (commit, roll back or pg_terminate_backend); \
         the relay keeps retrying"
    )]
    SlotCreationBlocked { after: Duration, blockers: String },
    #[error(
        "replication slot {slot} is still being created by backend pid {pid} (a \
         CREATE_REPLICATION_SLOT waiting for open transactions to end)"
    )]
    SlotBeingCreated { slot: String, pid: i32 },
}

impl SourceError {
    /// The slot is gone or lost and only an operator may replace it.
    pub fn slot_needs_recreate(&self) -> bool {
        matches!(
            self,
            SourceError::SlotLost { .. } | SourceError::SlotMissing { .. }
        )
    }

    /// Errors that retrying will not fix without an operator.
    pub fn needs_operator(&self) -> bool {
        match self {
            SourceError::SlotLost { .. }
            | SourceError::SlotMissing { .. }
            | SourceError::Marker(_)
            | SourceError::ForeignSlot { .. }
            | SourceError::Catalog(
                CatalogError::PublicationMissing { .. }
                | CatalogError::PublicationWithoutTable { .. },
            )
            | SourceError::Replication(
                ReplicationError::InvalidUrl(_) | ReplicationError::Auth(_),
            ) => true,
            SourceError::Replication(e) => e.sqlstate().is_some_and(is_access_denied),
            SourceError::Catalog(CatalogError::Database(e)) => {
                e.code().is_some_and(|code| is_access_denied(code.code()))
            }
            _ => false,
        }
    }
}

/// invalid_authorization_specification, invalid_password, insufficient_privilege
fn is_access_denied(sqlstate: &str) -> bool {
    matches!(sqlstate, "28000" | "28P01" | "42501")
}

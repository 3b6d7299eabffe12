//! One source database: connect, check the publication and the slot, start
//! streaming, and on failure reconnect with backoff. The streaming itself is
//! [`crate::pipeline`].

use std::sync::Arc;
use std::time::Duration;

use commerce_base::backoff::{Backoff, Jitter};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogError};
use crate::config::{KafkaConfig, ReplicationConfig, SourceConfig};
use crate::metrics::{Metrics, SourceMetrics, SourceState};
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::publisher::{Delivery, PublishError, Publisher};
use crate::replication::pgoutput::DecodeError;
use crate::replication::{
    CancelKey, ConnectParams, Lsn, ReplicationConnection, ReplicationError, ReplicationStream,
};
use crate::slots;

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

/// A session that started streaming.
struct Started {
    catalog: Catalog,
    stream: ReplicationStream,
    publisher: Publisher,
    acks: mpsc::UnboundedReceiver<Delivery>,
    confirmed: Lsn,
}

/// How long a cancel request for a waiting command may take.
const CANCEL_PATIENCE: Duration = Duration::from_secs(2);

impl SourceError {
    /// The slot is gone or lost and only an operator may replace it.
    pub fn slot_needs_recreate(&self) -> bool {
        matches!(
            self,
            SourceError::SlotLost { .. } | SourceError::SlotMissing { .. }
        )
    }

    /// Errors that retrying will not fix without an operator.
    fn needs_operator(&self) -> bool {
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

/// The message of a panic payload (`panic!` with a literal or a format).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// invalid_authorization_specification, invalid_password, insufficient_privilege
fn is_access_denied(sqlstate: &str) -> bool {
    matches!(sqlstate, "28000" | "28P01" | "42501")
}

/// How long a graceful stop waits for the walsender to release the slot
/// before saving its position.
const SAVE_SLOT_PATIENCE: Duration = Duration::from_secs(3);

/// A configured source and what it reports to.
pub struct Source {
    name: String,
    config: SourceConfig,
    kafka: KafkaConfig,
    replication: ReplicationConfig,
    metrics: Arc<SourceMetrics>,
}

impl Source {
    pub fn new(
        name: &str,
        config: SourceConfig,
        kafka: KafkaConfig,
        replication: ReplicationConfig,
        registry: Arc<Metrics>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            metrics: registry.source(name),
            config,
            kafka,
            replication,
        }
    }

    /// Runs the source until `shutdown`, restarting its task after a panic
    /// (a bug, but one source's bug must not silently end its streaming
    /// while the rest of the relay looks fine): the panic is logged, the
    /// source shows `error` with the panic's message and counts a
    /// reconnect, and it starts again after a backoff pause.
    pub async fn supervise(self, shutdown: CancellationToken) {
        let source = Arc::new(self);
        let mut backoff = source.backoff();
        let healthy_after = source.replication.healthy_session;
        loop {
            let started = tokio::time::Instant::now();
            // A set of one: dropping it (the relay's own stop) aborts the task.
            let mut task = JoinSet::new();
            task.spawn(Arc::clone(&source).run(shutdown.clone()));
            let panic = match task.join_next().await {
                Some(Err(error)) if error.is_panic() => panic_message(error.into_panic()),
                _ => break,
            };
            if started.elapsed() >= healthy_after {
                backoff.reset();
            }
            tracing::error!(source = %source.name, panic = %panic, "source task panicked; restarting it");
            source.metrics.set_state(
                SourceState::Error,
                Some(format!("the source task panicked ({panic}); restarting it")),
            );
            source.metrics.reconnecting();
            if shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = shutdown.cancelled() => break,
            }
        }
        source.metrics.set_state(SourceState::Stopped, None);
    }

    fn backoff(&self) -> Backoff {
        // Equal jitter: relays (or sources) that lost one database spread
        // out their reconnects.
        Backoff::new(
            self.replication.backoff_initial,
            self.replication.backoff_max,
            Jitter::Equal,
        )
    }

    /// Streams until `shutdown`, reconnecting after every failure.
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = self.backoff();
        loop {
            let mut healthy = false;
            let error = match self.session(&shutdown, &mut healthy).await {
                Ok(()) => break,
                Err(error) => error,
            };
            // Start over only after a session that proved itself: a failure
            // that recurs once streaming started must not retry at the
            // initial pace (and re-send the unconfirmed tail each time).
            if healthy {
                backoff.reset();
            }
            let operator = error.needs_operator();
            let state = if operator {
                SourceState::Error
            } else {
                SourceState::Reconnecting
            };
            self.metrics.set_slot_missing(error.slot_needs_recreate());
            self.metrics.set_state(state, Some(error.to_string()));
            self.metrics.reconnecting();
            let delay = if operator {
                self.replication.backoff_max
            } else {
                backoff.next_delay()
            };
            // The state stays reconnecting/error until a session streams
            // again: one log line per change, not per attempt.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.metrics.set_state(SourceState::Stopped, None);
    }

    /// One replication session, from connecting to an error or shutdown.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        healthy: &mut bool,
    ) -> Result<(), SourceError> {
        let slot = self.config.slot_name(&self.name);
        // Setting up is raced with shutdown: a command can wait on the
        // server for a long time (slot creation waits for open transactions).
        let mut cancel = None;
        let started = tokio::select! {
            started = self.start(&slot, &mut cancel) => Some(started),
            () = shutdown.cancelled() => None,
        };
        let Some(started) = started else {
            // Dropping the connection does not stop a command the server is
            // running (a slot creation would still finish once the
            // transactions it waits for end): cancel it.
            if let Some(key) = cancel {
                key.cancel(CANCEL_PATIENCE).await;
            }
            tracing::info!(source = %self.name, "stopped while connecting");
            return Ok(());
        };
        let Started {
            catalog,
            stream,
            publisher,
            acks,
            confirmed,
        } = started?;
        self.metrics.set_slot_missing(false);
        self.metrics.set_state(SourceState::Streaming, None);
        self.metrics.confirmed_idle(confirmed);

        let (schema, table) = self.config.qualified_table();
        let settings = PipelineSettings {
            source: self.name.clone(),
            schema: schema.to_owned(),
            table: table.to_owned(),
            max_in_flight_records: self.kafka.max_in_flight_records.max(1),
            max_in_flight_bytes: self.kafka.max_in_flight_bytes,
            max_record_bytes: self.kafka.max_record_bytes,
            status_interval: self.replication.status_interval,
            shutdown_grace: self.replication.shutdown_grace,
            healthy_after: self.replication.healthy_session,
            receive_timeout: self.replication.receive_timeout,
        };
        let confirmed = Pipeline::new(settings, confirmed, Arc::clone(&self.metrics))
            .run(stream, publisher, acks, shutdown, healthy)
            .await?;
        // A graceful stop: make the confirmed position survive a restart of
        // the server too (see `save_slot_position`).
        match catalog
            .save_slot_position(&slot, confirmed, SAVE_SLOT_PATIENCE)
            .await
        {
            Ok(Some(saved)) => {
                tracing::info!(source = %self.name, slot, %saved, "slot position saved")
            }
            Ok(None) => {
                tracing::warn!(source = %self.name, slot, "slot vanished before its position was saved")
            }
            Err(e) => {
                tracing::warn!(source = %self.name, slot, error = %e, "slot position not saved; after a server restart the last transactions may be published again")
            }
        }
        Ok(())
    }

    /// The relay made a source's first slot itself: anything the outbox
    /// received before was never captured. Expected only where nothing
    /// could write yet; `create-slots` before the services avoids it.
    async fn warn_slot_made_late(&self, catalog: &Catalog, slot: &str) {
        let (schema, table) = self.config.qualified_table();
        let inserts = catalog.inserts_into(schema, table).await.unwrap_or(0);
        if inserts > 0 {
            tracing::error!(
                source = %self.name,
                slot,
                inserts,
                "the relay created this source's first slot, but the outbox already had \
                 inserts: those events were never published (run outbox-relay create-slots \
                 before the services start; the saga re-drive heals what it can)"
            );
        } else {
            tracing::warn!(
                source = %self.name,
                slot,
                "the relay created this source's first slot itself; run outbox-relay \
                 create-slots before the services start, so no event can precede it"
            );
        }
    }

    /// Connects, checks the publication and the slot (creating the first
    /// one of a source, never a replacement: see [`crate::slots`]),
    /// connects the publisher and starts streaming. Every step has a
    /// deadline; `cancel` gets the replication connection's cancel key as
    /// soon as there is one.
    async fn start(
        &self,
        slot: &str,
        cancel: &mut Option<CancelKey>,
    ) -> Result<Started, SourceError> {
        let timeout = self.replication.connect_timeout;
        let command_timeout = self.replication.command_timeout;
        let url = self.config.url.expose();
        let (schema, table) = self.config.qualified_table();

        let catalog =
            Catalog::connect(url, &format!("outbox-relay/{}/catalog", self.name), timeout).await?;
        catalog
            .ensure_publication(&self.config.publication, schema, table)
            .await?;

        let params = ConnectParams::from_url(url, &format!("outbox-relay/{}", self.name))?;
        let mut connection = ReplicationConnection::connect(&params, timeout).await?;
        connection.set_user_timeout(self.replication.receive_timeout)?;
        *cancel = connection.cancel_key();
        let server_lsn = connection.identify_system(command_timeout).await?;
        let slots::Prepared { confirmed, outcome } = slots::prepare(
            &catalog,
            &mut connection,
            &self.name,
            slot,
            true,
            slots::Mode::Relay,
            self.replication.create_slot_timeout,
        )
        .await?;
        if outcome == slots::Outcome::Created {
            self.warn_slot_made_late(&catalog, slot).await;
        }

        let (mut publisher, acks) = Publisher::connect(&self.kafka, self.metrics.clone()).await?;
        publisher.prepare(&self.kafka.topic_list()).await?;

        let stream = connection
            .start_replication_within(slot, &self.config.publication, command_timeout)
            .await?;
        tracing::info!(source = %self.name, slot, %confirmed, server = %server_lsn, "streaming");
        Ok(Started {
            catalog,
            stream,
            publisher,
            acks,
            confirmed,
        })
    }
}

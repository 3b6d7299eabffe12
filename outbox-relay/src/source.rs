//! One source database: connect, check the publication and the slot, start
//! streaming, and on failure reconnect with backoff. The streaming itself is
//! [`crate::pipeline`].

use std::sync::Arc;
use std::time::Duration;

use commerce_base::backoff::{Backoff, Jitter};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::{KafkaConfig, ReplicationConfig, SourceConfig};
use crate::confirm;
use crate::error::SourceError;
use crate::metrics::{Metrics, SourceMetrics, SourceState};
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::publisher::{Delivery, Publisher};
use crate::replication::{CancelKey, ConnectParams, Lsn, ReplicationConnection, ReplicationStream};
use crate::slots;

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

/// The message of a panic payload (`panic!` with a literal or a format).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

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
        confirm::save_on_stop(&catalog, &self.name, &slot, confirmed).await;
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

//! The streaming loop of one replication session: decode pgoutput, turn
//! outbox inserts into records, hand them to the publisher as they arrive,
//! and tell [`Confirmation`] what was read, committed and acknowledged (it
//! decides which WAL position is confirmed to PostgreSQL).
//!
//! Backpressure: reading WAL pauses while `max_in_flight_records` records
//! are unacknowledged, and a record is sent only while the bytes sent and
//! unacknowledged stay within `max_in_flight_bytes` (a larger record goes
//! alone, once nothing else is in flight); meanwhile it waits, and reading
//! pauses.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::confirm::Confirmation;
use crate::error::SourceError;
use crate::inflight::TxnId;
use crate::metrics::SourceMetrics;
use crate::outbox::{self, OutboxColumns, OutgoingRecord, RowError};
use crate::publisher::{Delivery, Publisher};
use crate::replication::pgoutput::{self, Insert, LogicalMessage, Relation, RelationCache};
use crate::replication::{Lsn, ReplicationError, ReplicationStream, StreamMessage};

pub struct PipelineSettings {
    pub source: String,
    pub schema: String,
    pub table: String,
    pub max_in_flight_records: usize,
    /// Bytes sent and not yet acknowledged, at most (or one larger record).
    pub max_in_flight_bytes: usize,
    pub max_record_bytes: usize,
    pub status_interval: Duration,
    pub shutdown_grace: Duration,
    /// How long a session streams before it can count as healthy.
    pub healthy_after: Duration,
    /// Silence from the server after which the session is presumed dead.
    pub receive_timeout: Duration,
}

pub struct Pipeline {
    settings: PipelineSettings,
    metrics: Arc<SourceMetrics>,
    relations: RelationCache,
    /// Outbox column positions of relations that are the outbox table.
    outbox_relations: HashMap<u32, Result<OutboxColumns, RowError>>,
    confirmation: Confirmation,
    /// Records read but not sent yet, for want of room under
    /// `max_in_flight_bytes`; in the order they were read.
    waiting: VecDeque<(TxnId, OutgoingRecord)>,
    open: Option<Open>,
    /// When streaming started.
    started: Instant,
    /// Liveness: how long the server has been silent while the pipeline
    /// listened, counted at status ticks (see `note_silence`).
    silent_for: Duration,
    heard_since_tick: bool,
    last_tick: Instant,
}

/// The transaction being received (between Begin and Commit).
struct Open {
    txn: TxnId,
    final_lsn: Lsn,
}

impl Pipeline {
    pub fn new(settings: PipelineSettings, confirmed: Lsn, metrics: Arc<SourceMetrics>) -> Self {
        Self {
            settings,
            confirmation: Confirmation::new(confirmed, Arc::clone(&metrics)),
            metrics,
            relations: RelationCache::default(),
            outbox_relations: HashMap::new(),
            waiting: VecDeque::new(),
            open: None,
            started: Instant::now(),
            silent_for: Duration::ZERO,
            heard_since_tick: false,
            last_tick: Instant::now(),
        }
    }

    /// Streams until `shutdown` (then drains what is in flight, within the
    /// grace period) and returns the position confirmed last. Sets `healthy`
    /// once the session proved itself (see `is_healthy`), so
    /// that the source starts its reconnect backoff over after it ends.
    pub async fn run(
        mut self,
        mut stream: ReplicationStream,
        mut publisher: Publisher,
        mut deliveries: mpsc::UnboundedReceiver<Delivery>,
        shutdown: &CancellationToken,
        healthy: &mut bool,
    ) -> Result<Lsn, SourceError> {
        let mut ticker = tokio::time::interval(self.settings.status_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut drain_until: Option<Instant> = None;
        loop {
            let can_read = drain_until.is_none()
                && self.waiting.is_empty()
                && self.confirmation.in_flight().pending_records()
                    < self.settings.max_in_flight_records;
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if drain_until.is_none() => {
                    drain_until = Some(Instant::now() + self.settings.shutdown_grace);
                }
                // Before the stream: a busy stream must not starve status updates.
                _ = ticker.tick() => {
                    self.on_tick(&mut stream, can_read).await?;
                    *healthy = *healthy || self.is_healthy();
                }
                Some(delivery) = deliveries.recv() => self.on_delivery(delivery, &mut publisher).await?,
                message = stream.next(), if can_read => {
                    self.on_message(message?, &mut publisher, &mut stream).await?;
                }
            }
            let drained = drain_until.is_some_and(|deadline| {
                self.confirmation.in_flight().pending_records() == 0 || Instant::now() >= deadline
            });
            if drained {
                self.confirmation.send(&mut stream, false).await?;
                let confirmed = self.confirmation.confirmed();
                tracing::info!(source = %self.settings.source, %confirmed, "stopped streaming");
                stream.close().await;
                return Ok(confirmed);
            }
        }
    }

    /// A session is healthy once it streamed for `healthy_after` and made
    /// progress: it confirmed a position past where it started (a
    /// transaction, or an idle keepalive), or it has nothing pending at all
    /// (no open transaction either).
    /// A failure that recurs before that (a record the broker refuses, a
    /// change the server cannot decode) never resets the backoff.
    fn is_healthy(&self) -> bool {
        self.started.elapsed() >= self.settings.healthy_after
            && (self.confirmation.advanced() || self.confirmation.in_flight().is_empty())
    }

    async fn on_message(
        &mut self,
        message: StreamMessage,
        publisher: &mut Publisher,
        stream: &mut ReplicationStream,
    ) -> Result<(), SourceError> {
        self.heard_since_tick = true;
        match message {
            StreamMessage::XLogData { data, .. } => {
                self.on_logical(pgoutput::decode(data)?, publisher).await
            }
            StreamMessage::Keepalive {
                wal_end,
                reply_requested,
            } => {
                self.confirmation.keepalive(wal_end);
                if reply_requested {
                    self.confirmation.send(stream, false).await?;
                }
                Ok(())
            }
        }
    }

    async fn on_logical(
        &mut self,
        message: LogicalMessage,
        publisher: &mut Publisher,
    ) -> Result<(), SourceError> {
        match message {
            LogicalMessage::Begin(begin) => {
                let txn = self.confirmation.begin(begin.commit_time);
                self.open = Some(Open {
                    txn,
                    final_lsn: begin.final_lsn,
                });
            }
            LogicalMessage::Relation(relation) => self.on_relation(relation),
            LogicalMessage::Insert(insert) => self.on_insert(insert, publisher).await?,
            LogicalMessage::Commit(commit) => {
                let open = self
                    .open
                    .take()
                    .ok_or_else(|| unexpected("Commit without Begin"))?;
                self.confirmation.commit(open.txn, commit.end_lsn);
            }
            LogicalMessage::Skipped(_) => {}
        }
        Ok(())
    }

    fn on_relation(&mut self, relation: Relation) {
        if relation.namespace == self.settings.schema && relation.name == self.settings.table {
            let columns = OutboxColumns::resolve(&relation);
            if let Err(e) = &columns {
                tracing::error!(source = %self.settings.source, error = %e, "outbox table cannot be published; its rows go to the dead-letter topic");
            }
            self.outbox_relations.insert(relation.id, columns);
        }
        self.relations.insert(relation);
    }

    async fn on_insert(
        &mut self,
        insert: Insert,
        publisher: &mut Publisher,
    ) -> Result<(), SourceError> {
        let open = self
            .open
            .as_ref()
            .ok_or_else(|| unexpected("Insert outside a transaction"))?;
        let Some(columns) = self.outbox_relations.get(&insert.relation_id) else {
            // Another table in the publication: not ours to publish.
            return Ok(());
        };
        let record = match columns {
            Ok(columns) => {
                outbox::to_record(columns, &insert.values, self.settings.max_record_bytes)
            }
            Err(e) => Err(e.clone()),
        };
        let record = match record {
            Ok(record) => record,
            Err(reason) => self.dead_letter(&insert, &reason, open.final_lsn)?,
        };
        let txn = open.txn;
        self.send(txn, record, publisher).await
    }

    /// Sends `record` of `txn` once the byte bound has room for it (it
    /// counts in its transaction from now on).
    async fn send(
        &mut self,
        txn: TxnId,
        record: OutgoingRecord,
        publisher: &mut Publisher,
    ) -> Result<(), SourceError> {
        self.confirmation.add_record(txn);
        self.waiting.push_back((txn, record));
        self.send_waiting(publisher).await
    }

    /// Sends the waiting records, in order, while the byte bound has room.
    async fn send_waiting(&mut self, publisher: &mut Publisher) -> Result<(), SourceError> {
        while let Some((_, record)) = self.waiting.front()
            && self.has_room_for(record.size())
        {
            let (txn, record) = self.waiting.pop_front().expect("checked above");
            self.confirmation.sent(record.size());
            self.metrics
                .set_in_flight_bytes(self.confirmation.in_flight().bytes_in_flight());
            publisher.dispatch(txn, record).await?;
        }
        Ok(())
    }

    /// Whether a record of `size` bytes may be sent now: the bytes in
    /// flight stay within the bound, or nothing is in flight at all (a
    /// record larger than the bound goes alone rather than never).
    fn has_room_for(&self, size: usize) -> bool {
        let in_flight = self.confirmation.in_flight().bytes_in_flight();
        in_flight == 0 || in_flight + size <= self.settings.max_in_flight_bytes
    }

    /// The dead-letter record of a row that can never be published. The
    /// row is not lost: its columns (long values cut) and the reason go to
    /// `<topic>.dlq`, with an error log and the `relay_dead_letters` metric.
    fn dead_letter(
        &self,
        insert: &Insert,
        reason: &RowError,
        lsn: Lsn,
    ) -> Result<outbox::OutgoingRecord, SourceError> {
        let relation = self
            .relations
            .get(insert.relation_id)
            .ok_or_else(|| unexpected("Insert of an unknown relation"))?;
        let record = outbox::dead_letter(
            relation,
            &insert.values,
            reason,
            &self.settings.source,
            &lsn.to_string(),
        );
        tracing::error!(
            source = %self.settings.source,
            %lsn,
            error = %reason,
            topic = %record.topic,
            "outbox row cannot be published; sent to the dead-letter topic"
        );
        self.metrics.dead_lettered();
        Ok(record)
    }

    async fn on_delivery(
        &mut self,
        delivery: Delivery,
        publisher: &mut Publisher,
    ) -> Result<(), SourceError> {
        match delivery {
            Delivery::Acked {
                txn,
                records,
                bytes,
            } => self.confirmation.ack(txn, records, bytes),
            Delivery::Rejected {
                txn,
                topic,
                record,
                reason,
            } => self.on_rejected(txn, &topic, &record, &reason),
            Delivery::Failed(error) => return Err(error.into()),
        }
        self.metrics
            .set_in_flight_bytes(self.confirmation.in_flight().bytes_in_flight());
        self.send_waiting(publisher).await?;
        self.confirmation.confirm_completed();
        Ok(())
    }

    /// A record the broker refused for good becomes a dead letter of the
    /// same transaction, so the transaction is confirmed once that is stored.
    /// The dead letter waits its turn under the byte bound like any record.
    fn on_rejected(
        &mut self,
        txn: TxnId,
        topic: &str,
        record: &rskafka::record::Record,
        reason: &str,
    ) {
        self.metrics.dead_lettered();
        let event_id = record
            .headers
            .get(commerce_base::outbox::headers::EVENT_ID)
            .map(|id| String::from_utf8_lossy(id).into_owned());
        let source = &self.settings.source;
        if topic.ends_with(outbox::DEAD_LETTER_SUFFIX) {
            // Never loop dead letters: this log line is its record.
            tracing::error!(
                source,
                topic,
                event_id,
                error = reason,
                "broker refused a dead letter; skipped"
            );
        } else {
            tracing::error!(
                source,
                topic,
                event_id,
                error = reason,
                "broker refused a record; sent to the dead-letter topic"
            );
            let dead = outbox::dead_letter_of_record(topic, record, reason, source);
            self.confirmation.add_record(txn);
            self.waiting.push_back((txn, dead));
        }
        self.confirmation.ack(txn, 1, record.approximate_size());
    }

    /// The server's silence while we listened, as of this tick. Each tick
    /// adds the time since the previous one, at most a status interval (a
    /// long handler between two ticks is the relay's time, not the
    /// server's); a message since, or not listening (backpressure, drain),
    /// starts it over.
    fn note_silence(&mut self, listening: bool) -> Duration {
        let gap = self.last_tick.elapsed().min(self.settings.status_interval);
        self.last_tick = Instant::now();
        if std::mem::take(&mut self.heard_since_tick) || !listening {
            self.silent_for = Duration::ZERO;
        } else {
            self.silent_for += gap;
        }
        self.silent_for
    }

    async fn on_tick(
        &mut self,
        stream: &mut ReplicationStream,
        listening: bool,
    ) -> Result<(), SourceError> {
        // Liveness: a half-open connection (host gone, network partition, a
        // frozen server) delivers nothing and fails no write for many
        // minutes. The server sends keepalives on its own only when it
        // lacks our replies, so after a third of the timeout in silence the
        // status update asks for one; still nothing by the timeout: dead.
        let silence = self.note_silence(listening);
        if silence >= self.settings.receive_timeout {
            return Err(ReplicationError::Silent(silence).into());
        }
        let ask_for_reply = silence >= self.settings.receive_timeout / 3;
        self.confirmation.send(stream, ask_for_reply).await?;
        self.metrics.set_lag(self.confirmation.lag().as_secs_f64());
        Ok(())
    }
}

impl Drop for Pipeline {
    /// The session's unacknowledged records end with it (and its publisher).
    fn drop(&mut self) {
        self.metrics.set_in_flight_bytes(0);
    }
}

fn unexpected(what: &str) -> SourceError {
    SourceError::Replication(ReplicationError::Protocol(what.to_owned()))
}

//! Produces records to Kafka with rskafka, one worker per partition.
//!
//! Records of one partition are sent strictly in the order they were
//! dispatched (one produce request at a time per partition, batching
//! whatever queued up meanwhile), so events with the same key stay ordered.
//! Different partitions are produced concurrently. Every request carries a
//! deadline.
//!
//! What happens when the broker does not store a record:
//! - unreachable or no answer in time: reported as failed; the source
//!   restarts from its slot, which re-sends everything unconfirmed;
//! - an error Kafka counts as retriable (NOT_ENOUGH_REPLICAS,
//!   CORRUPT_MESSAGE, a leader moving...): the worker sends it again, up to
//!   `max_produce_attempts` times with a growing pause; if it still fails,
//!   the record is rejected;
//! - an error about the record or the topic that resending cannot fix (too
//!   large, invalid timestamp, policy, authorization...), and a topic the
//!   broker refuses to create: rejected at once.
//!
//! A rejected record is reported to the source, which sends its dead letter
//! (`<topic>.dlq`) in its place. A dead-letter topic that cannot be created
//! is replaced by `outbox.dlq`. A dead letter is never rejected in turn:
//! when the broker does not take it either, the worker holds it, the source
//! shows state `error` with the reason, and the worker tries again every
//! few seconds, so the source neither skips the record nor loops.
//!
//! Partitioning: Kafka's default partitioner (murmur2 of the key, positive,
//! modulo the partition count), so records land where Java producers would
//! put them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use rskafka::BackoffConfig;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::KafkaConfig;
use crate::inflight::TxnId;
use crate::metrics::{SourceMetrics, SourceState};
use crate::outbox::{self, FALLBACK_DEAD_LETTER_TOPIC, OutgoingRecord};

/// Most records in one produce request.
const MAX_BATCH_RECORDS: usize = 2_000;
/// First pause before a record is sent again; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between attempts, and between the attempts of a held
/// dead letter.
const MAX_PAUSE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("broker unreachable or failing: {0}")]
    Broker(String),
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
}

/// What the broker made of the records dispatched for a transaction.
#[derive(Debug)]
pub enum Delivery {
    /// `records` records of `txn`, of `bytes` bytes in all, are stored.
    Acked {
        txn: TxnId,
        records: usize,
        bytes: usize,
    },
    /// The broker refused this record for good, or kept failing it: it
    /// will not be stored as it is. Never a record of a dead-letter topic.
    Rejected {
        txn: TxnId,
        topic: String,
        record: Box<Record>,
        reason: String,
    },
    /// The broker is unreachable or failing; the worker stopped.
    Failed(PublishError),
}

/// Why one produce request did not succeed.
enum ProduceFailure {
    /// The broker refused the request's content; retrying cannot help.
    Refused(String),
    /// A broker error Kafka counts as retriable.
    Retriable(String),
    Failed(PublishError),
}

/// Why a topic has no partitions to produce to.
enum TopicFailure {
    /// The broker refused to create it (a name that collides with another
    /// topic's, a policy, no permission...).
    Refused(String),
    Failed(PublishError),
}

struct Job {
    txn: TxnId,
    record: Record,
    size: usize,
}

/// Where the records of a topic go.
enum Route {
    Partitions(Vec<mpsc::UnboundedSender<Job>>),
    /// The broker refused to create the topic (for this session): its
    /// records are rejected, a dead-letter topic's go to the fallback. The
    /// fallback's own route is then one sender to [`hold_topic`].
    Refused(String),
}

/// Dead letters the workers of one source are holding; the source shows
/// `error` while any is held.
#[derive(Clone)]
struct Holds {
    metrics: Arc<SourceMetrics>,
    count: Arc<AtomicUsize>,
}

impl Holds {
    fn start(&self, message: String) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.metrics.set_state(SourceState::Error, Some(message));
    }

    fn end(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.metrics.set_state(SourceState::Streaming, None);
        }
    }
}

/// One source's publisher: topics it knows and their partition workers.
/// Dropping it stops the workers.
pub struct Publisher {
    client: Arc<Client>,
    config: KafkaConfig,
    metrics: Arc<SourceMetrics>,
    holds: Holds,
    topics: HashMap<String, Route>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    workers: JoinSet<()>,
}

impl Publisher {
    /// Connects to the brokers; deliveries are reported on the returned channel.
    pub async fn connect(
        config: &KafkaConfig,
        metrics: Arc<SourceMetrics>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Delivery>), PublishError> {
        let timeout = config.produce_timeout;
        let builder = ClientBuilder::new(config.broker_list())
            .client_id("outbox-relay")
            .backoff_config(backoff(timeout));
        let client = deadline(timeout, builder.build()).await?;
        let (deliveries, receiver) = mpsc::unbounded_channel();
        let publisher = Self {
            client: Arc::new(client),
            config: config.clone(),
            holds: Holds {
                metrics: Arc::clone(&metrics),
                count: Arc::default(),
            },
            metrics,
            topics: HashMap::new(),
            deliveries,
            workers: JoinSet::new(),
        };
        Ok((publisher, receiver))
    }

    /// Makes sure `topics` exist (creating missing ones) and starts their workers.
    pub async fn prepare(&mut self, topics: &[String]) -> Result<(), PublishError> {
        for topic in topics {
            if let Route::Refused(reason) = self.route(topic).await? {
                return Err(PublishError::Broker(format!(
                    "topic {topic} cannot be created: {reason}"
                )));
            }
        }
        Ok(())
    }

    /// Queues `record` for its partition; the ack names `txn`. A record whose
    /// topic the broker refuses to create is rejected (a dead letter's goes
    /// to the fallback dead-letter topic instead).
    pub async fn dispatch(
        &mut self,
        txn: TxnId,
        outgoing: OutgoingRecord,
    ) -> Result<(), PublishError> {
        let stopped = || PublishError::Broker("partition worker stopped".into());
        let job = Job {
            txn,
            size: outgoing.size(),
            record: outgoing.record,
        };
        let topic = outgoing.topic;
        let key = job.record.key.clone().unwrap_or_default();
        let sender = match self.route(&topic).await? {
            Route::Partitions(partitions) => {
                partitions[partition_for(&key, partitions.len())].clone()
            }
            Route::Refused(reason) if !outbox::is_dead_letter_topic(&topic) => {
                let reason = format!("topic {topic} cannot be created: {reason}");
                let rejected = Delivery::Rejected {
                    txn,
                    topic,
                    record: Box::new(job.record),
                    reason,
                };
                return self.deliveries.send(rejected).map_err(|_| stopped());
            }
            Route::Refused(reason) => {
                let reason = reason.clone();
                tracing::error!(topic, error = %reason,
                    "dead-letter topic cannot be created; using {FALLBACK_DEAD_LETTER_TOPIC}");
                let fallback = self.fallback_route(&reason).await?;
                fallback[partition_for(&key, fallback.len())].clone()
            }
        };
        sender.send(job).map_err(|_| stopped())
    }

    /// The partitions of the fallback dead-letter topic; `why` the first
    /// choice could not be created.
    async fn fallback_route(
        &mut self,
        why: &str,
    ) -> Result<&[mpsc::UnboundedSender<Job>], PublishError> {
        if let Route::Refused(reason) = self.route(FALLBACK_DEAD_LETTER_TOPIC).await? {
            let reason = format!(
                "dead-letter topics cannot be created ({why}; {FALLBACK_DEAD_LETTER_TOPIC}: \
                 {reason})"
            );
            let (sender, jobs) = mpsc::unbounded_channel();
            self.workers.spawn(hold_topic(
                Arc::clone(&self.client),
                self.config.clone(),
                jobs,
                self.deliveries.clone(),
                self.holds.clone(),
                reason,
            ));
            self.topics.insert(
                FALLBACK_DEAD_LETTER_TOPIC.to_owned(),
                Route::Partitions(vec![sender]),
            );
        }
        match self.topics.get(FALLBACK_DEAD_LETTER_TOPIC) {
            Some(Route::Partitions(partitions)) => Ok(partitions),
            _ => unreachable!("the fallback route was set above"),
        }
    }

    async fn route(&mut self, topic: &str) -> Result<&Route, PublishError> {
        if !self.topics.contains_key(topic) {
            let route = match ensure_topic(&self.client, &self.config, topic).await {
                Ok(count) => {
                    let mut senders = Vec::with_capacity(count);
                    for partition in 0..count {
                        senders.push(self.spawn_worker(topic, partition as i32).await?);
                    }
                    Route::Partitions(senders)
                }
                Err(TopicFailure::Refused(reason)) => {
                    tracing::error!(topic, error = %reason, "the broker refused to create the topic");
                    Route::Refused(reason)
                }
                Err(TopicFailure::Failed(error)) => return Err(error),
            };
            self.topics.insert(topic.to_owned(), route);
        }
        Ok(self.topics.get(topic).expect("inserted above"))
    }

    async fn spawn_worker(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<mpsc::UnboundedSender<Job>, PublishError> {
        let timeout = self.config.produce_timeout;
        let client = deadline(
            timeout,
            self.client
                .partition_client(topic, partition, UnknownTopicHandling::Retry),
        )
        .await?;
        let (sender, jobs) = mpsc::unbounded_channel();
        let worker = PartitionWorker {
            client: Arc::new(client),
            jobs,
            deliveries: self.deliveries.clone(),
            timeout,
            max_batch_bytes: self.config.max_record_bytes,
            busy_interval: self.config.busy_produce_interval,
            attempts: self.config.max_produce_attempts.max(1),
            dead_letters: outbox::is_dead_letter_topic(topic),
            holds: self.holds.clone(),
            produce_time: self.metrics.produce_histogram(topic),
        };
        self.workers.spawn(worker.run());
        Ok(sender)
    }
}

/// The topic's partition count, creating the topic when it is missing.
async fn ensure_topic(
    client: &Client,
    config: &KafkaConfig,
    topic: &str,
) -> Result<usize, TopicFailure> {
    let timeout = config.produce_timeout;
    if let Some(count) = listed_partitions(client, topic, timeout)
        .await
        .map_err(TopicFailure::Failed)?
    {
        return Ok(count);
    }
    let controller = client
        .controller_client()
        .map_err(|e| TopicFailure::Failed(PublishError::Broker(e.to_string())))?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let created = tokio::time::timeout(
        timeout,
        controller.create_topic(
            topic,
            config.partitions,
            config.replication_factor,
            timeout_ms,
        ),
    )
    .await;
    match created {
        Ok(Ok(())) => {
            tracing::info!(topic, partitions = config.partitions, "created topic");
        }
        // Another relay may have created it in the meantime.
        Ok(Err(KafkaError::ServerError {
            protocol_error: ProtocolError::TopicAlreadyExists,
            ..
        })) => {}
        Ok(Err(KafkaError::ServerError {
            protocol_error,
            error_message,
            ..
        })) if !is_retriable(protocol_error) => {
            return Err(TopicFailure::Refused(broker_error(
                protocol_error,
                error_message,
            )));
        }
        Ok(Err(e)) => return Err(TopicFailure::Failed(PublishError::Broker(e.to_string()))),
        Err(_) => return Err(TopicFailure::Failed(PublishError::Timeout(timeout))),
    }
    // The real count: another relay (or an operator) may have created it
    // with other settings, and Kafka lists a new topic a moment after
    // answering CreateTopics.
    let started = tokio::time::Instant::now();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if let Some(count) = listed_partitions(client, topic, left)
            .await
            .map_err(TopicFailure::Failed)?
        {
            return Ok(count);
        }
        if started.elapsed() >= timeout {
            return Err(TopicFailure::Failed(PublishError::Timeout(timeout)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The partition count of `topic` if the broker lists it with partitions.
async fn listed_partitions(
    client: &Client,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, PublishError> {
    let topics = deadline(timeout, client.list_topics()).await?;
    Ok(topics
        .iter()
        .find(|t| t.name == topic && !t.partitions.is_empty())
        .map(|t| t.partitions.len()))
}

/// Holds the records of a dead-letter topic that cannot be created (the
/// fallback's included): the source shows `error` with `reason` and
/// confirms nothing past them. Tries to create the topic every
/// [`MAX_PAUSE`]; once that works, ends the session, whose successor
/// publishes the held records again from the slot.
async fn hold_topic(
    client: Arc<Client>,
    config: KafkaConfig,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    holds: Holds,
    reason: String,
) {
    holds.start(format!(
        "{reason}: the source holds its dead letters and confirms nothing past them until \
         the topic can be created"
    ));
    loop {
        tokio::time::sleep(MAX_PAUSE).await;
        while jobs.try_recv().is_ok() {}
        if ensure_topic(&client, &config, FALLBACK_DEAD_LETTER_TOPIC)
            .await
            .is_ok()
        {
            holds.end();
            let _ = deliveries.send(Delivery::Failed(PublishError::Broker(format!(
                "{FALLBACK_DEAD_LETTER_TOPIC} was created; the session restarts to publish \
                 the dead letters it held"
            ))));
            return;
        }
    }
}

struct PartitionWorker {
    client: Arc<PartitionClient>,
    jobs: mpsc::UnboundedReceiver<Job>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    timeout: Duration,
    max_batch_bytes: usize,
    busy_interval: Duration,
    /// Attempts of a record the broker answers with a retriable error.
    attempts: u32,
    /// This is a dead-letter topic: its records are never rejected.
    dead_letters: bool,
    holds: Holds,
    produce_time: Histogram,
}

impl PartitionWorker {
    async fn run(mut self) {
        let mut carried: Option<Job> = None;
        let mut last_produce: Option<Instant> = None;
        loop {
            let first = match carried.take() {
                Some(job) => job,
                None => match self.jobs.recv().await {
                    Some(job) => job,
                    None => return,
                },
            };
            // Busy (produced a moment ago) and no full batch waiting: let
            // more records join this one.
            if let Some(rest) = last_produce
                .map(|at| self.busy_interval.saturating_sub(at.elapsed()))
                .filter(|rest| !rest.is_zero())
                && self.jobs.len() + 1 < MAX_BATCH_RECORDS
            {
                tokio::time::sleep(rest).await;
            }
            last_produce = Some(Instant::now());
            let (batch, next) = self.fill_batch(first);
            carried = next;
            if !self.produce(batch).await {
                return;
            }
        }
    }

    /// Adds queued jobs to `first` up to the batch limits; returns the batch
    /// and the job that did not fit, if any.
    fn fill_batch(&mut self, first: Job) -> (Vec<Job>, Option<Job>) {
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_RECORDS {
            let Ok(job) = self.jobs.try_recv() else {
                break;
            };
            if bytes + job.size > self.max_batch_bytes {
                return (batch, Some(job));
            }
            bytes += job.size;
            batch.push(job);
        }
        (batch, None)
    }

    /// Produces one batch and reports it; false when the worker must stop.
    /// A batch the broker does not take is sent again record by record (each
    /// once more), so only the records that fail are rejected.
    async fn produce(&self, mut batch: Vec<Job>) -> bool {
        match self.send_with_attempts(&batch, self.attempts).await {
            Ok(()) => self.report_acked(&batch),
            Err(ProduceFailure::Failed(error)) => {
                self.report(Delivery::Failed(error));
                false
            }
            Err(ProduceFailure::Refused(_) | ProduceFailure::Retriable(_)) if batch.len() > 1 => {
                for job in batch {
                    if !self.produce_one(job).await {
                        return false;
                    }
                }
                true
            }
            Err(ProduceFailure::Refused(reason) | ProduceFailure::Retriable(reason)) => {
                let job = batch.pop().expect("a batch has a record");
                self.give_up(job, reason).await
            }
        }
    }

    async fn produce_one(&self, job: Job) -> bool {
        match self.send_with_attempts(std::slice::from_ref(&job), 1).await {
            Ok(()) => self.report_acked(std::slice::from_ref(&job)),
            Err(ProduceFailure::Refused(reason) | ProduceFailure::Retriable(reason)) => {
                self.give_up(job, reason).await
            }
            Err(ProduceFailure::Failed(error)) => {
                self.report(Delivery::Failed(error));
                false
            }
        }
    }

    /// Sends `jobs` until the broker stores them, refuses them, fails, or
    /// answered `attempts` times with a retriable error (then `Refused`).
    async fn send_with_attempts(&self, jobs: &[Job], attempts: u32) -> Result<(), ProduceFailure> {
        let mut pause = FIRST_PAUSE;
        let mut attempt = 1;
        loop {
            let records = jobs.iter().map(|job| job.record.clone()).collect();
            match self.send(records).await {
                Err(ProduceFailure::Retriable(reason)) if attempt < attempts => {
                    tracing::warn!(topic = self.client.topic(), partition = self.client.partition(),
                        attempt, error = %reason, "produce failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                    attempt += 1;
                }
                Err(ProduceFailure::Retriable(reason)) => {
                    return Err(ProduceFailure::Refused(format!(
                        "{reason} (after {attempt} attempts)"
                    )));
                }
                other => return other,
            }
        }
    }

    /// A record that cannot be stored: rejected (the source sends its dead
    /// letter), or, being a dead letter, held.
    async fn give_up(&self, job: Job, reason: String) -> bool {
        if self.dead_letters {
            self.hold(job, reason).await
        } else {
            self.report(self.rejected(job, reason))
        }
    }

    /// Keeps trying a dead letter the broker does not take, every
    /// [`MAX_PAUSE`], while the source shows `error`: this partition, and
    /// the confirmed position of the source, wait for it.
    async fn hold(&self, job: Job, reason: String) -> bool {
        let topic = self.client.topic();
        let event_id = job
            .record
            .headers
            .get(commerce_base::outbox::headers::EVENT_ID)
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .unwrap_or_default();
        self.holds.start(format!(
            "the dead letter of event {event_id} cannot be stored in {topic} ({reason}); the \
             source holds it and confirms nothing past it, trying again every {MAX_PAUSE:?}"
        ));
        loop {
            tokio::time::sleep(MAX_PAUSE).await;
            match self.send(vec![job.record.clone()]).await {
                Ok(()) => {
                    tracing::info!(topic, event_id = %event_id, "held dead letter stored");
                    self.holds.end();
                    return self.report_acked(std::slice::from_ref(&job));
                }
                Err(ProduceFailure::Failed(error)) => {
                    self.holds.end();
                    self.report(Delivery::Failed(error));
                    return false;
                }
                Err(ProduceFailure::Refused(reason) | ProduceFailure::Retriable(reason)) => {
                    tracing::debug!(topic, event_id = %event_id, error = %reason, "held dead letter still refused");
                }
            }
        }
    }

    async fn send(&self, records: Vec<Record>) -> Result<(), ProduceFailure> {
        let produce = self.client.produce(records, Compression::NoCompression);
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, produce).await;
        self.produce_time.observe(started.elapsed().as_secs_f64());
        match answer {
            Ok(Ok(_offsets)) => Ok(()),
            Ok(Err(KafkaError::ServerError {
                protocol_error,
                error_message,
                ..
            })) => {
                let reason = format!(
                    "broker refused the record: {}",
                    broker_error(protocol_error, error_message)
                );
                if is_retriable(protocol_error) {
                    Err(ProduceFailure::Retriable(reason))
                } else {
                    Err(ProduceFailure::Refused(reason))
                }
            }
            Ok(Err(e)) => Err(ProduceFailure::Failed(PublishError::Broker(e.to_string()))),
            Err(_) => Err(ProduceFailure::Failed(PublishError::Timeout(self.timeout))),
        }
    }

    fn rejected(&self, job: Job, reason: String) -> Delivery {
        Delivery::Rejected {
            txn: job.txn,
            topic: self.client.topic().to_owned(),
            record: Box::new(job.record),
            reason,
        }
    }

    /// Acknowledges `jobs`, one delivery per run of the same transaction.
    fn report_acked(&self, jobs: &[Job]) -> bool {
        let mut runs: Vec<(TxnId, usize, usize)> = Vec::new();
        for job in jobs {
            match runs.last_mut() {
                Some((txn, count, bytes)) if *txn == job.txn => {
                    *count += 1;
                    *bytes += job.size;
                }
                _ => runs.push((job.txn, 1, job.size)),
            }
        }
        runs.into_iter().all(|(txn, records, bytes)| {
            self.report(Delivery::Acked {
                txn,
                records,
                bytes,
            })
        })
    }

    /// False when the source is gone and the worker should stop.
    fn report(&self, delivery: Delivery) -> bool {
        self.deliveries.send(delivery).is_ok()
    }
}

/// Broker errors that Kafka's own clients retry (their
/// `RetriableException`s): a leader moving, too few replicas in sync, a
/// record damaged in transit (CORRUPT_MESSAGE), ... Every other error is
/// about the request itself (too large, invalid timestamp, policy,
/// authorization, an invalid topic) and fails the same way when resent.
fn is_retriable(error: ProtocolError) -> bool {
    matches!(
        error,
        ProtocolError::CorruptMessage
            | ProtocolError::UnknownTopicOrPartition
            | ProtocolError::LeaderNotAvailable
            | ProtocolError::NotLeaderOrFollower
            | ProtocolError::RequestTimedOut
            | ProtocolError::ReplicaNotAvailable
            | ProtocolError::NetworkException
            | ProtocolError::CoordinatorLoadInProgress
            | ProtocolError::CoordinatorNotAvailable
            | ProtocolError::NotCoordinator
            | ProtocolError::NotEnoughReplicas
            | ProtocolError::NotEnoughReplicasAfterAppend
            | ProtocolError::NotController
            | ProtocolError::ConcurrentTransactions
            | ProtocolError::KafkaStorageError
            | ProtocolError::ListenerNotFound
            | ProtocolError::FencedLeaderEpoch
            | ProtocolError::UnknownLeaderEpoch
            | ProtocolError::OffsetNotAvailable
            | ProtocolError::PreferredLeaderNotAvailable
            | ProtocolError::ThrottlingQuotaExceeded
            | ProtocolError::UnknownTopicId
            | ProtocolError::InconsistentTopicId
    )
}

fn broker_error(error: ProtocolError, message: Option<String>) -> String {
    match message {
        Some(message) if !message.is_empty() => format!("{error} {message}"),
        _ => error.to_string(),
    }
}

/// Awaits a broker call within `timeout`, mapping both failure kinds.
async fn deadline<T, E: std::fmt::Display>(
    timeout: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, PublishError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(PublishError::Broker(e.to_string())),
        Err(_) => Err(PublishError::Timeout(timeout)),
    }
}

/// rskafka retries internally; bound that by the same deadline.
fn backoff(deadline: Duration) -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(deadline),
    }
}

/// Kafka's default partitioner for keyed records.
pub fn partition_for(key: &[u8], partitions: usize) -> usize {
    if partitions == 0 {
        return 0;
    }
    (murmur2(key) & 0x7fff_ffff) as usize % partitions
}

/// Kafka's murmur2 (seed 0x9747b28c), as in `org.apache.kafka.common.utils.Utils`.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Expected values from Kafka's UtilsTest.testMurmur2.
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()) as i32, expected, "{input}");
        }
    }

    #[test]
    fn errors_kafka_retries_are_retried_the_others_refuse_the_record() {
        for retriable in [
            ProtocolError::CorruptMessage,
            ProtocolError::NotEnoughReplicas,
            ProtocolError::NotEnoughReplicasAfterAppend,
            ProtocolError::NotLeaderOrFollower,
            ProtocolError::KafkaStorageError,
            ProtocolError::RequestTimedOut,
        ] {
            assert!(is_retriable(retriable), "{retriable}");
        }
        for refusal in [
            ProtocolError::MessageTooLarge,
            ProtocolError::RecordListTooLarge,
            ProtocolError::InvalidRecord,
            ProtocolError::InvalidTimestamp,
            ProtocolError::PolicyViolation,
            ProtocolError::TopicAuthorizationFailed,
            ProtocolError::InvalidTopicException,
            ProtocolError::UnknownServerError,
        ] {
            assert!(!is_retriable(refusal), "{refusal}");
        }
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for key in ["order-1", "order-2", "", "ünïcode"] {
            let p = partition_for(key.as_bytes(), 3);
            assert!(p < 3);
            assert_eq!(p, partition_for(key.as_bytes(), 3));
        }
        assert_eq!(partition_for(b"x", 0), 0);
    }
}

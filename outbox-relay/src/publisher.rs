//! Produces records to Kafka with rskafka, one worker per partition.
//!
//! Records of one partition are sent strictly in the order they were
//! dispatched (one produce request at a time per partition, batching
//! whatever queued up meanwhile), so events with the same key stay ordered.
//! Different partitions are produced concurrently. Every request carries a
//! deadline; a failed request is reported, never retried here: the source
//! restarts from its slot, which re-sends everything unconfirmed. A record
//! the broker refuses for good (too large, invalid) is reported as
//! rejected, so the source can dead-letter it instead of retrying forever.
//!
//! Partitioning: Kafka's default partitioner (murmur2 of the key, positive,
//! modulo the partition count), so records land where Java producers would
//! put them.

use std::collections::HashMap;
use std::sync::Arc;
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
use crate::metrics::SourceMetrics;
use crate::outbox::OutgoingRecord;

/// Most records in one produce request.
const MAX_BATCH_RECORDS: usize = 2_000;

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
    /// `records` records of `txn` are stored.
    Acked { txn: TxnId, records: usize },
    /// The broker refused this record for good (too large, invalid): it
    /// will never be stored as it is.
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
    Failed(PublishError),
}

struct Job {
    txn: TxnId,
    record: Record,
    size: usize,
}

/// One source's publisher: topics it knows and their partition workers.
/// Dropping it stops the workers.
pub struct Publisher {
    client: Client,
    config: KafkaConfig,
    metrics: Arc<SourceMetrics>,
    topics: HashMap<String, Vec<mpsc::UnboundedSender<Job>>>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    workers: JoinSet<()>,
}

impl Publisher {
    /// Connects to the brokers; deliveries are reported on the returned channel.
    pub async fn connect(
        config: &KafkaConfig,
        metrics: Arc<SourceMetrics>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Delivery>), PublishError> {
        let timeout = config.produce_timeout();
        let builder = ClientBuilder::new(config.broker_list())
            .client_id("outbox-relay")
            .backoff_config(backoff(timeout));
        let client = deadline(timeout, builder.build()).await?;
        let (deliveries, receiver) = mpsc::unbounded_channel();
        let publisher = Self {
            client,
            config: config.clone(),
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
            self.partitions(topic).await?;
        }
        Ok(())
    }

    /// Queues `record` for its partition; the ack names `txn`.
    pub async fn dispatch(
        &mut self,
        txn: TxnId,
        outgoing: OutgoingRecord,
    ) -> Result<(), PublishError> {
        let partitions = self.partitions(&outgoing.topic).await?;
        let index = partition_for(outgoing.key(), partitions.len());
        let job = Job {
            txn,
            size: outgoing.size(),
            record: outgoing.record,
        };
        partitions[index]
            .send(job)
            .map_err(|_| PublishError::Broker("partition worker stopped".into()))
    }

    async fn partitions(
        &mut self,
        topic: &str,
    ) -> Result<&[mpsc::UnboundedSender<Job>], PublishError> {
        if !self.topics.contains_key(topic) {
            let count = self.ensure_topic(topic).await?;
            let mut senders = Vec::with_capacity(count);
            for partition in 0..count {
                senders.push(self.spawn_worker(topic, partition as i32).await?);
            }
            self.topics.insert(topic.to_owned(), senders);
        }
        Ok(self
            .topics
            .get(topic)
            .map(Vec::as_slice)
            .unwrap_or_default())
    }

    /// The topic's partition count, creating the topic when it is missing.
    async fn ensure_topic(&self, topic: &str) -> Result<usize, PublishError> {
        let timeout = self.config.produce_timeout();
        let existing = deadline(timeout, self.client.list_topics()).await?;
        if let Some(found) = existing
            .iter()
            .find(|t| t.name == topic && !t.partitions.is_empty())
        {
            return Ok(found.partitions.len());
        }
        let controller = self
            .client
            .controller_client()
            .map_err(|e| PublishError::Broker(e.to_string()))?;
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let created = deadline(
            timeout,
            controller.create_topic(topic, self.config.partitions, 1, timeout_ms),
        )
        .await;
        match created {
            Ok(()) => {
                tracing::info!(topic, partitions = self.config.partitions, "created topic");
            }
            // Another relay may have created it in the meantime.
            Err(PublishError::Broker(e)) if e.contains("TopicAlreadyExists") => {}
            Err(e) => return Err(e),
        }
        Ok(usize::try_from(self.config.partitions).unwrap_or(1).max(1))
    }

    async fn spawn_worker(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<mpsc::UnboundedSender<Job>, PublishError> {
        let timeout = self.config.produce_timeout();
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
            busy_interval: self.config.busy_produce_interval(),
            produce_time: self.metrics.produce_histogram(topic),
        };
        self.workers.spawn(worker.run());
        Ok(sender)
    }
}

struct PartitionWorker {
    client: Arc<PartitionClient>,
    jobs: mpsc::UnboundedReceiver<Job>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    timeout: Duration,
    max_batch_bytes: usize,
    busy_interval: Duration,
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
    /// A refused batch is retried record by record to find the culprit.
    async fn produce(&self, batch: Vec<Job>) -> bool {
        let records = batch.iter().map(|job| job.record.clone()).collect();
        match self.send(records).await {
            Ok(()) => self.report_acked(&batch),
            Err(ProduceFailure::Refused(_)) if batch.len() > 1 => {
                for job in batch {
                    if !self.produce_one(job).await {
                        return false;
                    }
                }
                true
            }
            Err(ProduceFailure::Refused(reason)) => batch
                .into_iter()
                .all(|job| self.report(self.rejected(job, reason.clone()))),
            Err(ProduceFailure::Failed(error)) => {
                self.report(Delivery::Failed(error));
                false
            }
        }
    }

    async fn produce_one(&self, job: Job) -> bool {
        match self.send(vec![job.record.clone()]).await {
            Ok(()) => self.report_acked(std::slice::from_ref(&job)),
            Err(ProduceFailure::Refused(reason)) => self.report(self.rejected(job, reason)),
            Err(ProduceFailure::Failed(error)) => {
                self.report(Delivery::Failed(error));
                false
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
            })) if is_refusal(protocol_error) => Err(ProduceFailure::Refused(format!(
                "broker refused the record: {protocol_error} {}",
                error_message.unwrap_or_default()
            ))),
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
        let mut runs: Vec<(TxnId, usize)> = Vec::new();
        for job in jobs {
            match runs.last_mut() {
                Some((txn, count)) if *txn == job.txn => *count += 1,
                _ => runs.push((job.txn, 1)),
            }
        }
        runs.into_iter()
            .all(|(txn, records)| self.report(Delivery::Acked { txn, records }))
    }

    /// False when the source is gone and the worker should stop.
    fn report(&self, delivery: Delivery) -> bool {
        self.deliveries.send(delivery).is_ok()
    }
}

/// Broker errors about the records themselves: resending cannot succeed.
fn is_refusal(error: ProtocolError) -> bool {
    matches!(
        error,
        ProtocolError::MessageTooLarge
            | ProtocolError::RecordListTooLarge
            | ProtocolError::InvalidRecord
            | ProtocolError::CorruptMessage
    )
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
    fn partitions_are_stable_and_in_range() {
        for key in ["order-1", "order-2", "", "ünïcode"] {
            let p = partition_for(key.as_bytes(), 3);
            assert!(p < 3);
            assert_eq!(p, partition_for(key.as_bytes(), 3));
        }
        assert_eq!(partition_for(b"x", 0), 0);
    }
}

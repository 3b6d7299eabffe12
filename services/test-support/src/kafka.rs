//! A small Kafka client for tests: create topics, produce an envelope, read
//! what the relay published. Every broker call has a deadline, so a test
//! against a broker that is down or stuck fails with a message instead of
//! hanging.

use std::{collections::BTreeMap, time::Duration};

use commerce_common::events::Envelope;
use rskafka::{
    BackoffConfig,
    client::{
        Client, ClientBuilder,
        error::{Error as KafkaError, ProtocolError},
        partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling},
    },
    record::Record,
};

/// Deadline of each broker call, retries included: rskafka retries what it
/// deems retriable (a broken connection, no leader yet, an unknown topic
/// with `UnknownTopicHandling::Retry`) and, with its default backoff, does
/// so forever.
const CALL_DEADLINE: Duration = Duration::from_secs(15);
const MAX_FETCH_BYTES: i32 = 16 * 1024 * 1024;

/// A client for `brokers` (`host:port,host:port`) with a retry deadline.
pub async fn kafka_client(brokers: &str) -> Client {
    let bootstrap = brokers
        .split(',')
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
        .collect();
    let connect = ClientBuilder::new(bootstrap)
        .backoff_config(BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.,
            deadline: Some(CALL_DEADLINE),
        })
        .build();
    tokio::time::timeout(CALL_DEADLINE, connect)
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to the Kafka broker at {brokers}: {e}. Set TEST_KAFKA_BROKERS or \
                 run the tests through `cargo xtask test`, which starts one"
            )
        })
}

/// Creates the topics that do not exist yet, with `partitions` partitions.
pub async fn ensure_topics(brokers: &str, topics: &[&str], partitions: i32) {
    let client = kafka_client(brokers).await;
    let existing = list_topics(&client).await;
    let controller = client.controller_client().expect("controller client");
    for topic in topics {
        if existing.contains_key(*topic) {
            continue;
        }
        match controller.create_topic(*topic, partitions, 1, 5_000).await {
            Ok(()) => {}
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            }) => {}
            // Another error (a timeout while the controller still creates
            // it, say): the listing below decides.
            Err(e) => eprintln!("create_topic {topic}: {e}"),
        }
    }
    // Kafka answers CreateTopics before every broker's metadata lists the
    // topic with a leader for each partition.
    let complete = |listed: &BTreeMap<String, Vec<i32>>| {
        topics
            .iter()
            .all(|t| listed.get(*t).is_some_and(|p| !p.is_empty()))
    };
    let deadline = tokio::time::Instant::now() + CALL_DEADLINE;
    loop {
        let listed = list_topics(&client).await;
        if complete(&listed) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "topics {topics:?} could not be created on {brokers} (listed: {:?})",
            listed.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The broker loses every record of `topic` so far (DeleteRecords up to
/// each partition's end): what a broker whose data was lost looks like to
/// a consumer that had not read them yet. Answers how many were deleted.
pub async fn delete_all_records(brokers: &str, topic: &str) -> i64 {
    let client = kafka_client(brokers).await;
    let partitions = list_topics(&client)
        .await
        .remove(topic)
        .unwrap_or_else(|| panic!("topic {topic} does not exist"));
    let mut deleted = 0;
    for partition in partitions {
        let partition_client = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let call = async {
            let start = partition_client.get_offset(OffsetAt::Earliest).await?;
            let end = partition_client.get_offset(OffsetAt::Latest).await?;
            partition_client.delete_records(end, 5_000).await?;
            Ok::<_, KafkaError>(end - start)
        };
        deleted += tokio::time::timeout(CALL_DEADLINE, call)
            .await
            .expect("deleting records timed out")
            .unwrap_or_else(|e| panic!("deleting the records of {topic}/{partition}: {e}"));
    }
    deleted
}

async fn list_topics(client: &Client) -> BTreeMap<String, Vec<i32>> {
    tokio::time::timeout(CALL_DEADLINE, client.list_topics())
        .await
        .expect("list_topics timed out")
        .expect("list_topics")
        .into_iter()
        .map(|t| (t.name, t.partitions.into_iter().collect()))
        .collect()
}

/// One record as read back from the broker.
#[derive(Debug, Clone)]
pub struct KafkaRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub value: Vec<u8>,
}

impl KafkaRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The value as an event envelope; panics when it is not one.
    pub fn envelope(&self) -> Envelope {
        serde_json::from_slice(&self.value).unwrap_or_else(|e| {
            panic!(
                "record {}/{}@{} is not an envelope: {e}: {}",
                self.topic,
                self.partition,
                self.offset,
                String::from_utf8_lossy(&self.value)
            )
        })
    }
}

/// Reads one topic from the start of every partition's log (offset 0
/// unless records were deleted) and keeps its position, so repeated
/// [`poll`](Self::poll)s return only new records.
pub struct KafkaReader {
    topic: String,
    partitions: Vec<(PartitionClient, i64)>,
}

impl KafkaReader {
    /// Waits (up to 15 s) for the topic to exist.
    pub async fn new(brokers: &str, topic: &str) -> Self {
        let client = kafka_client(brokers).await;
        let partition_ids = crate::wait::wait_until(
            CALL_DEADLINE,
            &format!("topic {topic} to exist on {brokers}"),
            || async {
                list_topics(&client)
                    .await
                    .remove(topic)
                    .filter(|p| !p.is_empty())
            },
        )
        .await;
        let mut partitions = Vec::new();
        for id in partition_ids {
            let partition = tokio::time::timeout(
                CALL_DEADLINE,
                client.partition_client(topic, id, UnknownTopicHandling::Retry),
            )
            .await
            .expect("partition_client timed out")
            .expect("partition_client");
            let start =
                tokio::time::timeout(CALL_DEADLINE, partition.get_offset(OffsetAt::Earliest))
                    .await
                    .expect("list offsets timed out")
                    .expect("list offsets");
            partitions.push((partition, start));
        }
        Self {
            topic: topic.to_owned(),
            partitions,
        }
    }

    /// Records that arrived since the last poll, up to each partition's high
    /// watermark at the time of the fetch; in partition, then offset order.
    pub async fn poll(&mut self) -> Vec<KafkaRecord> {
        let mut out = Vec::new();
        for (partition, next) in &mut self.partitions {
            loop {
                let fetch = partition.fetch_records(*next, 1..MAX_FETCH_BYTES, 0);
                let (records, high_watermark) = tokio::time::timeout(CALL_DEADLINE, fetch)
                    .await
                    .unwrap_or_else(|_| {
                        panic!("fetch {}/{} timed out", self.topic, partition.partition())
                    })
                    .unwrap_or_else(|e| {
                        panic!("fetch {}/{}: {e}", self.topic, partition.partition())
                    });
                let Some(last) = records.last() else { break };
                *next = last.offset + 1;
                out.extend(
                    records
                        .into_iter()
                        .map(|r| to_record(&self.topic, partition.partition(), r.offset, r.record)),
                );
                if *next >= high_watermark {
                    break;
                }
            }
        }
        out
    }

    /// Polls until a record matching `matches` shows up (among the records
    /// not returned before) and returns it; panics after `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut matches: impl FnMut(&KafkaRecord) -> bool,
    ) -> KafkaRecord {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.poll().await.into_iter().find(|r| matches(r)) {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} on topic {}",
                self.topic
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every record of `topic` currently in the broker.
pub async fn read_topic(brokers: &str, topic: &str) -> Vec<KafkaRecord> {
    KafkaReader::new(brokers, topic).await.poll().await
}

/// Produces one envelope the way the relay does (key, headers, JSON value)
/// to an explicit partition; returns its offset.
pub async fn produce_envelope(
    brokers: &str,
    topic: &str,
    partition: i32,
    key: &str,
    envelope: &Envelope,
) -> i64 {
    produce_envelopes(brokers, topic, partition, key, &[envelope]).await[0]
}

/// Produces `envelopes` as ONE record batch (a consumer fetching from its
/// start gets them all at once); returns their offsets.
pub async fn produce_envelopes(
    brokers: &str,
    topic: &str,
    partition: i32,
    key: &str,
    envelopes: &[&Envelope],
) -> Vec<i64> {
    use commerce_common::events::headers;
    let client = kafka_client(brokers).await;
    let partition_client = tokio::time::timeout(
        CALL_DEADLINE,
        client.partition_client(topic, partition, UnknownTopicHandling::Retry),
    )
    .await
    .expect("partition_client timed out")
    .expect("partition_client");
    let records = envelopes
        .iter()
        .map(|envelope| Record {
            key: Some(key.as_bytes().to_vec()),
            value: Some(serde_json::to_vec(envelope).expect("serialize envelope")),
            headers: BTreeMap::from([
                (
                    headers::EVENT_ID.to_owned(),
                    envelope.event_id.to_string().into_bytes(),
                ),
                (
                    headers::EVENT_TYPE.to_owned(),
                    envelope.event_type.clone().into_bytes(),
                ),
                (
                    headers::TRACE_ID.to_owned(),
                    envelope.trace_id.clone().into_bytes(),
                ),
            ]),
            timestamp: chrono::Utc::now(),
        })
        .collect();
    tokio::time::timeout(
        CALL_DEADLINE,
        partition_client.produce(records, Compression::NoCompression),
    )
    .await
    .expect("produce timed out")
    .expect("produce")
}

fn to_record(topic: &str, partition: i32, offset: i64, record: Record) -> KafkaRecord {
    KafkaRecord {
        topic: topic.to_owned(),
        partition,
        offset,
        key: record.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
        headers: record
            .headers
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect(),
        value: record.value.unwrap_or_default(),
    }
}

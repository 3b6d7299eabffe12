//! What reaches Kafka: envelopes, keys and headers; unicode, TOASTed and
//! many-row transactions; other tables ignored; dead letters (rows that
//! cannot be published, records the broker refuses or keeps failing, topics
//! it will not create, and a source held when the dead letter fails too);
//! per-key order.

use std::collections::HashMap;
use std::time::Duration;

use test_support::KafkaReader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    Relay, SourceSpec, insert_blob, insert_events, outbox_database, read_until_distinct, unique,
};
use test_support::wait_until;

const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn publishes_outbox_inserts_as_envelope_records() {
    let (db, client) = outbox_database("relay_publish").await;
    let source = SourceSpec::new("publish", &db);
    let mut relay = Relay::start(&[&source]).await;
    relay.wait_until_streaming("publish").await;
    let topic = unique("rt_publish");

    // Unicode everywhere, plus a row of another table in the same transaction.
    let unicode_id = uuid::Uuid::new_v4();
    client
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO outbox VALUES ('{unicode_id}', '{topic}', 'ördér-🚀-1', 'OrderCreated', 1,
                 'trace-ü', '2026-11-25 12:00:00.5+00',
                 '{{\"name\": \"Zoë 渋谷 🚀\", \"note\": \"line\\nbreak \\\"quoted\\\"\"}}');
             INSERT INTO other (body) VALUES ('not an event');
             COMMIT;"
        ))
        .await
        .expect("unicode insert");
    // Only other tables: nothing to publish.
    client
        .batch_execute("INSERT INTO other (body) SELECT 'x' FROM generate_series(1, 1000)")
        .await
        .expect("other inserts");
    // Many rows in one transaction.
    insert_events(&client, &topic, "bulk", 1, 5_000).await;
    // A TOASTed payload of about 480 kB (random text, so it stays large).
    let big_id = insert_blob(&client, &topic, "big-1", "Big", "trace-big", 15_000).await;

    let mut reader = KafkaReader::new(&test_support::kafka_brokers(), &topic).await;
    let records = read_until_distinct(&mut reader, 5_002, READ_TIMEOUT).await;
    assert_eq!(
        records.len(),
        5_002,
        "no duplicates without failures, nothing extra"
    );

    let unicode = records
        .iter()
        .find(|r| r.header("event_id") == Some(&unicode_id.to_string()))
        .expect("unicode event");
    assert_eq!(unicode.key.as_deref(), Some("ördér-🚀-1"));
    assert_eq!(unicode.header("event_type"), Some("OrderCreated"));
    assert_eq!(unicode.header("trace_id"), Some("trace-ü"));
    // The services' own Envelope type reads it: the contract holds.
    let envelope = unicode.envelope();
    assert_eq!(envelope.event_id, unicode_id);
    assert_eq!(envelope.aggregate_type, topic);
    assert_eq!(envelope.aggregate_id, "ördér-🚀-1");
    assert_eq!(envelope.schema_version, 1);
    assert_eq!(
        envelope.occurred_at.to_rfc3339(),
        "2026-11-25T12:00:00.500+00:00"
    );
    assert_eq!(envelope.payload["name"], "Zoë 渋谷 🚀");
    assert_eq!(envelope.payload["note"], "line\nbreak \"quoted\"");

    let big = records
        .iter()
        .find(|r| r.header("event_id") == Some(&big_id.to_string()))
        .expect("TOASTed event");
    assert_eq!(
        big.envelope().payload["blob"].as_str().map(str::len),
        Some(15_000 * 32)
    );

    // Every produce request is timed per topic; the 5,000 rows of one
    // transaction travelled in batches, not one request each.
    let metrics = relay.get_text("/metrics").await.expect("metrics");
    let count = format!("relay_produce_seconds_count{{source=\"publish\",topic=\"{topic}\"}} ");
    let requests: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix(&count)?.parse().ok())
        .unwrap_or_else(|| panic!("no {count}in\n{metrics}"));
    assert!(
        (1..1_000).contains(&requests),
        "{requests} produce requests for 5,002 records"
    );

    // A graceful stop confirms everything that was acknowledged: restarted,
    // the relay publishes what is new and nothing again. (Measuring the
    // slot's lag instead would count other tests' WAL.)
    let status = relay.process.stop();
    assert!(status.success(), "relay exited with {status}");
    assert!(relay.process.log_contains("stopped streaming"));
    let relay = Relay::start(&[&source]).await;
    relay.wait_until_streaming("publish").await;
    insert_events(&client, &topic, "after-restart", 1, 1).await;
    let mut after = read_until_distinct(&mut reader, 1, READ_TIMEOUT).await;
    // Confirmation runs in commit order, so once the new transaction is
    // confirmed every older record the restarted relay sent is in Kafka too.
    wait_until(
        READ_TIMEOUT,
        "the new transaction to be confirmed",
        || async {
            relay
                .source_status("publish")
                .await
                .filter(|s| s["transactions_confirmed"].as_u64() >= Some(1))
        },
    )
    .await;
    after.extend(reader.poll().await);
    let republished: Vec<_> = after
        .iter()
        .filter(|r| r.key.as_deref() != Some("after-restart"))
        .collect();
    assert!(
        republished.is_empty(),
        "{} records published again after a graceful stop",
        republished.len()
    );
    assert_eq!(after.len(), 1, "exactly the new event");
}

#[tokio::test]
async fn rows_that_cannot_be_published_go_to_a_dead_letter_topic() {
    let (db, client) = outbox_database("relay_dlq").await;
    let source = SourceSpec::new("dlq", &db);
    let relay = Relay::start(&[&source]).await;
    relay.wait_until_streaming("dlq").await;
    let topic = unique("rt_dlq");

    insert_events(&client, &topic, "k", 1, 1).await;
    // 2 MB: larger than the relay's 1 MB record limit.
    let too_large = insert_blob(&client, &topic, "k", "Huge", "t", 65_000).await;
    insert_events(&client, &topic, "k", 2, 1).await;

    let brokers = test_support::kafka_brokers();
    let mut reader = KafkaReader::new(&brokers, &topic).await;
    let records = read_until_distinct(&mut reader, 2, READ_TIMEOUT).await;
    let seqs: Vec<i64> = records
        .iter()
        .map(|r| r.envelope().payload["seq"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(seqs, vec![1, 2], "the source went on past the bad row");

    let mut dead_letters = KafkaReader::new(&brokers, &format!("{topic}.dlq")).await;
    let dead = dead_letters
        .wait_for(READ_TIMEOUT, "the dead letter", |r| {
            r.header("event_id") == Some(&too_large.to_string())
        })
        .await;
    let value: serde_json::Value = serde_json::from_slice(&dead.value).expect("JSON dead letter");
    assert!(
        value["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("exceeds"),
        "{value}"
    );
    assert_eq!(value["columns"]["event_type"], "Huge");
    assert_eq!(value["source"], "dlq");

    let status = relay.source_status("dlq").await.expect("status");
    assert_eq!(status["dead_letters"], 1);
    assert!(relay.process.log_contains("sent to the dead-letter topic"));
}

/// Creates `topic` (one partition, one replica) with topic-level `configs`,
/// which rskafka's controller client cannot set: a CreateTopics (v2) request
/// written by hand. Returns once the topic is in the broker's metadata.
async fn create_topic_with(topic: &str, configs: &[(&str, &str)]) {
    fn string(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as i16).to_be_bytes());
        buf.extend(s.as_bytes());
    }
    let mut request = Vec::new();
    request.extend(19_i16.to_be_bytes()); // CreateTopics
    request.extend(2_i16.to_be_bytes()); // version
    request.extend(1_i32.to_be_bytes()); // correlation id
    string(&mut request, "relay-test");
    request.extend(1_i32.to_be_bytes()); // one topic
    string(&mut request, topic);
    request.extend(1_i32.to_be_bytes()); // partitions
    request.extend(1_i16.to_be_bytes()); // replication factor
    request.extend(0_i32.to_be_bytes()); // no assignments
    request.extend((configs.len() as i32).to_be_bytes());
    for (name, value) in configs {
        string(&mut request, name);
        string(&mut request, value);
    }
    request.extend(10_000_i32.to_be_bytes()); // timeout
    request.push(0); // validate only: no

    let brokers = test_support::kafka_brokers();
    let broker = brokers.split(',').next().expect("a broker").trim();
    let mut stream = tokio::net::TcpStream::connect(broker)
        .await
        .expect("connect to the broker");
    stream
        .write_all(&(request.len() as i32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&request).await.unwrap();
    let length = stream.read_i32().await.expect("CreateTopics answer");
    let mut answer = vec![0; length as usize];
    stream.read_exact(&mut answer).await.unwrap();
    // correlation id, throttle time, topic count, then the topic's name and error code.
    let name_length = i16::from_be_bytes([answer[12], answer[13]]) as usize;
    let at = 14 + name_length;
    let code = i16::from_be_bytes([answer[at], answer[at + 1]]);
    assert_eq!(
        code,
        0,
        "CreateTopics {topic} {configs:?}: error code {code}, {}",
        String::from_utf8_lossy(&answer[at + 2..])
    );
    KafkaReader::new(&brokers, topic).await;
}

/// Inserts one event for `topic` that occurred a day ago.
async fn insert_day_old_event(client: &tokio_postgres::Client, topic: &str) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO outbox VALUES ($1, $2, 'k', 'Old', 1, 't', now() - interval '1 day', \
                                       '{\"old\": true}')",
            &[&id, &topic],
        )
        .await
        .expect("old insert");
    id
}

/// The JSON value of the dead letter of `event_id` in `topic`.
async fn dead_letter_of(topic: &str, event_id: uuid::Uuid) -> serde_json::Value {
    let mut reader = KafkaReader::new(&test_support::kafka_brokers(), topic).await;
    let dead = reader
        .wait_for(READ_TIMEOUT, &format!("the dead letter in {topic}"), |r| {
            r.header("event_id") == Some(&event_id.to_string())
        })
        .await;
    serde_json::from_slice(&dead.value).expect("JSON dead letter")
}

/// Records the broker will not store, for good (INVALID_TIMESTAMP, which
/// the relay used to retry by restarting its session, forever) or because
/// it refuses to create their topic, go to the dead-letter topic with the
/// reason; the source goes on without a single reconnect. (A retriable
/// error that persists, such as NOT_ENOUGH_REPLICAS, cannot be provoked on
/// the one-node test broker: it took acks=-1 produces to a topic created
/// with `min.insync.replicas` 2 without an error.)
#[tokio::test]
async fn records_the_broker_will_not_store_go_to_the_dead_letter_topic() {
    let (db, client) = outbox_database("relay_refused").await;
    let source = SourceSpec::new("refused", &db);
    // Refuses records older than an hour.
    let strict = unique("rt_strict");
    create_topic_with(&strict, &[("message.timestamp.before.max.ms", "3600000")]).await;
    // "<x>_y" cannot be created next to "<x>.y" (they collide in metrics names).
    let base = unique("rt_taken");
    create_topic_with(&format!("{base}.y"), &[]).await;
    let colliding = format!("{base}_y");

    let relay = Relay::start_with(
        &[&source],
        &[("APP__KAFKA__MAX_PRODUCE_ATTEMPTS", "3".into())],
    )
    .await;
    relay.wait_until_streaming("refused").await;
    let old = insert_day_old_event(&client, &strict).await;
    insert_events(&client, &strict, "k", 1, 1).await;
    insert_events(&client, &colliding, "k", 1, 1).await;
    insert_events(&client, &strict, "k", 2, 1).await;

    let brokers = test_support::kafka_brokers();
    let mut reader = KafkaReader::new(&brokers, &strict).await;
    let records = read_until_distinct(&mut reader, 2, READ_TIMEOUT).await;
    let seqs: Vec<i64> = records
        .iter()
        .map(|r| r.envelope().payload["seq"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        seqs,
        vec![1, 2],
        "the source went on past the refused record"
    );

    let refused = dead_letter_of(&format!("{strict}.dlq"), old).await;
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("InvalidTimestamp"), "{refused}");
    assert!(!reason.contains("attempts"), "refused at once: {refused}");
    assert_eq!(refused["topic"], strict.as_str());

    let mut dead = KafkaReader::new(&brokers, &format!("{colliding}.dlq")).await;
    let uncreatable = read_until_distinct(&mut dead, 1, READ_TIMEOUT).await;
    let value: serde_json::Value = serde_json::from_slice(&uncreatable[0].value).unwrap();
    assert!(
        value["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("topic {colliding} cannot be created")),
        "{value}"
    );

    let status = wait_until(READ_TIMEOUT, "all four transactions confirmed", || async {
        relay
            .source_status("refused")
            .await
            .filter(|s| s["transactions_confirmed"].as_u64() >= Some(4))
    })
    .await;
    assert_eq!(status["dead_letters"], 2, "{status}");
    assert_eq!(status["reconnects"], 0, "no session restarted: {status}");
    assert_eq!(status["state"], "streaming", "{status}");
}

/// When the dead letter cannot be stored either, the source holds there:
/// state `error` with the reason (in /api/status and the metrics), nothing
/// confirmed past the record, no reconnect loop and nothing skipped.
#[tokio::test]
async fn a_source_whose_dead_letter_fails_too_stops_with_an_error() {
    let (db, client) = outbox_database("relay_held").await;
    let source = SourceSpec::new("held", &db);
    let strict = unique("rt_held");
    create_topic_with(&strict, &[("message.timestamp.before.max.ms", "3600000")]).await;
    // Takes no record of a dead letter's size.
    let dead_letters = format!("{strict}.dlq");
    create_topic_with(&dead_letters, &[("max.message.bytes", "200")]).await;
    let relay = Relay::start_with(
        &[&source],
        &[("APP__KAFKA__MAX_PRODUCE_ATTEMPTS", "3".into())],
    )
    .await;
    relay.wait_until_streaming("held").await;

    let old = insert_day_old_event(&client, &strict).await;
    let status = relay.wait_for_state("held", "error", READ_TIMEOUT).await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "dead letter of event {old} cannot be stored in {dead_letters}"
        )) && error.contains("MessageTooLarge"),
        "{status}"
    );
    let metrics = relay.get_text("/metrics").await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "relay_source_state{source=\"held\",state=\"error\"} 1"),
        "{metrics}"
    );

    // Later events are still published, but nothing is confirmed past the
    // held record, and the state stays `error` without a reconnect.
    insert_events(&client, &strict, "k", 1, 1).await;
    let mut reader = KafkaReader::new(&test_support::kafka_brokers(), &strict).await;
    read_until_distinct(&mut reader, 1, READ_TIMEOUT).await;
    let status = relay.source_status("held").await.expect("status");
    assert_eq!(status["state"], "error", "{status}");
    assert_eq!(status["reconnects"], 0, "{status}");
    assert_eq!(status["transactions_confirmed"], 0, "{status}");
    assert!(
        !relay
            .process
            .log_contains("broker refused a dead letter; skipped")
    );
}

#[tokio::test]
async fn events_of_one_key_stay_in_order() {
    let (db, client) = outbox_database("relay_order").await;
    let source = SourceSpec::new("order", &db);
    let relay = Relay::start(&[&source]).await;
    relay.wait_until_streaming("order").await;
    let topic = unique("rt_order");
    drop(client);

    // Four writers, each owning five keys, commit interleaved transactions.
    const ROUNDS: i64 = 40;
    let mut writers = Vec::new();
    for writer in 0..4 {
        let db = db.clone();
        let topic = topic.clone();
        writers.push(tokio::spawn(async move {
            let client = db.client().await;
            for round in 0..ROUNDS {
                for k in 0..5 {
                    let key = format!("key-{writer}-{k}");
                    insert_events(&client, &topic, &key, round * 2, 2).await;
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }

    let mut reader = KafkaReader::new(&test_support::kafka_brokers(), &topic).await;
    let expected = (4 * 5 * ROUNDS * 2) as usize;
    let records = read_until_distinct(&mut reader, expected, READ_TIMEOUT).await;
    let mut by_key: HashMap<String, (i32, Vec<i64>)> = HashMap::new();
    for record in &records {
        let key = record.key.clone().unwrap_or_default();
        let seq = record.envelope().payload["seq"].as_i64().expect("seq");
        let entry = by_key.entry(key).or_insert((record.partition, Vec::new()));
        assert_eq!(entry.0, record.partition, "one key, one partition");
        entry.1.push(seq);
    }
    assert_eq!(by_key.len(), 20);
    for (key, (_, seqs)) in by_key {
        let expected: Vec<i64> = (0..ROUNDS * 2).collect();
        assert_eq!(seqs, expected, "order of {key}");
    }
}

/// Topics the relay creates get `kafka.replication_factor` replicas. This
/// broker has one node, so 2 cannot be met: the broker refuses the topic
/// and the event goes to the dead-letter topic with the reason, instead of
/// into a topic of one replica.
#[tokio::test]
async fn topics_the_relay_creates_get_the_configured_replication_factor() {
    let brokers = test_support::kafka_brokers();
    // The last resort for dead letters, created here with one replica so
    // the event has a place to go.
    test_support::ensure_topics(&brokers, &["outbox.dlq"], 1).await;
    let mut dead_letters = KafkaReader::new(&brokers, "outbox.dlq").await;
    dead_letters.poll().await;
    let (db, client) = outbox_database("relay_rf").await;
    let source = SourceSpec::new("rf", &db);
    let relay = Relay::start_with(
        &[&source],
        &[("APP__KAFKA__REPLICATION_FACTOR", "2".into())],
    )
    .await;
    relay.wait_until_streaming("rf").await;

    let topic = unique("rt_rf");
    insert_events(&client, &topic, "k", 0, 1).await;
    let dead = dead_letters
        .wait_for(READ_TIMEOUT, "the event's dead letter", |r| {
            String::from_utf8_lossy(&r.value).contains(&topic)
        })
        .await;
    let reason = String::from_utf8_lossy(&dead.value).to_lowercase();
    assert!(reason.contains("replication"), "{reason}");
    let listed = test_support::kafka_client(&brokers)
        .await
        .list_topics()
        .await
        .expect("topics");
    assert!(
        !listed.iter().any(|t| t.name == topic),
        "no topic of fewer replicas than configured"
    );
}

//! What reaches Kafka: envelopes, keys and headers; unicode, TOASTed and
//! many-row transactions; other tables ignored; dead letters; per-key order.

use std::collections::HashMap;
use std::time::Duration;

use test_support::KafkaReader;

use crate::helpers::{
    Relay, SourceSpec, insert_events, outbox_database, read_until_distinct, unique,
};
use test_support::wait_until;

const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn publishes_outbox_inserts_as_envelope_records() {
    let (db, client) = outbox_database("relay_publish").await;
    let source = SourceSpec::new("publish", &db);
    let mut relay = Relay::start(&[&source]).await;
    relay
        .wait_for_state("publish", "streaming", Duration::from_secs(20))
        .await;
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
    let big_id = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO outbox VALUES ($1, $2, 'big-1', 'Big', 1, 'trace-big', now(),
                 jsonb_build_object('blob', (SELECT string_agg(md5(i::text), '')
                                             FROM generate_series(1, 15000) i)))",
            &[&big_id, &topic],
        )
        .await
        .expect("big insert");

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
    relay
        .wait_for_state("publish", "streaming", Duration::from_secs(20))
        .await;
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
    relay
        .wait_for_state("dlq", "streaming", Duration::from_secs(20))
        .await;
    let topic = unique("rt_dlq");

    insert_events(&client, &topic, "k", 1, 1).await;
    // 2 MB: larger than the relay's 1 MB record limit.
    let too_large = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO outbox VALUES ($1, $2, 'k', 'Huge', 1, 't', now(),
                 jsonb_build_object('blob', (SELECT string_agg(md5(i::text), '')
                                             FROM generate_series(1, 65000) i)))",
            &[&too_large, &topic],
        )
        .await
        .expect("huge insert");
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

#[tokio::test]
async fn events_of_one_key_stay_in_order() {
    let (db, client) = outbox_database("relay_order").await;
    let source = SourceSpec::new("order", &db);
    let relay = Relay::start(&[&source]).await;
    relay
        .wait_for_state("order", "streaming", Duration::from_secs(20))
        .await;
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

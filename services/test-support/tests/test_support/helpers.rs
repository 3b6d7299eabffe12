//! The helpers against the real PostgreSQL, broker and browser of the test
//! environment.

use std::time::Duration;

use commerce_common::events::{Envelope, SCHEMA_VERSION};
use test_support::{
    Browser, KafkaReader, ensure_topics, fresh_database, kafka_brokers, produce_envelope,
    read_topic, wait_until,
};
use uuid::Uuid;

#[tokio::test]
async fn fresh_databases_are_empty_and_distinct() {
    let a = fresh_database("helpers").await;
    let b = fresh_database("helpers").await;
    assert_ne!(a.name, b.name);
    let row = a
        .client()
        .await
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), a.name);
}

#[tokio::test]
async fn produced_envelopes_are_read_back_with_headers() {
    let brokers = kafka_brokers();
    let topic = format!("helpers-{}", Uuid::new_v4().simple());
    ensure_topics(&brokers, &[&topic], 3).await;
    let mut reader = KafkaReader::new(&brokers, &topic).await;
    assert!(reader.poll().await.is_empty());

    let envelopes: Vec<Envelope> = (0..5)
        .map(|i| Envelope {
            event_id: Uuid::new_v4(),
            event_type: "Test".into(),
            aggregate_type: topic.clone(),
            aggregate_id: format!("agg-{i}"),
            occurred_at: chrono::Utc::now(),
            schema_version: SCHEMA_VERSION,
            trace_id: "trace".into(),
            payload: serde_json::json!({ "i": i }),
        })
        .collect();
    for (i, envelope) in envelopes.iter().enumerate() {
        produce_envelope(
            &brokers,
            &topic,
            (i % 3) as i32,
            &envelope.aggregate_id,
            envelope,
        )
        .await;
    }

    let last = reader
        .wait_for(Duration::from_secs(10), "the last envelope", |r| {
            r.key.as_deref() == Some("agg-4")
        })
        .await;
    assert_eq!(
        last.header("event_id"),
        Some(envelopes[4].event_id.to_string().as_str())
    );
    assert_eq!(last.envelope(), envelopes[4]);

    let all = wait_until(Duration::from_secs(10), "all five records", || {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        async move {
            let records = read_topic(&brokers, &topic).await;
            (records.len() == 5).then_some(records)
        }
    })
    .await;
    let mut keys: Vec<_> = all.iter().filter_map(|r| r.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, ["agg-0", "agg-1", "agg-2", "agg-3", "agg-4"]);
}

#[tokio::test]
async fn the_browser_renders_a_page() {
    let (_browser, client) = Browser::start().await;
    client
        .goto("data:text/html,<title>hello</title><p id=x>world</p>")
        .await
        .unwrap();
    assert_eq!(client.title().await.unwrap(), "hello");
    let text = client
        .find(fantoccini::Locator::Css("#x"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "world");
    client.close().await.unwrap();
}

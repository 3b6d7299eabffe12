//! What the relay holds for the broker: the bytes of records sent and not
//! yet acknowledged stay within `kafka.max_in_flight_bytes`, a record
//! larger than that still goes (alone), and nothing is lost, repeated or
//! reordered on the way.

use std::time::Duration;

use test_support::{KafkaReader, KafkaRecord, wait_until};

use crate::helpers::{Relay, SourceSpec, outbox_database, read_until_distinct, unique};

const READ_TIMEOUT: Duration = Duration::from_secs(90);
/// The byte bound under test: three small records fit, one large does not.
const MAX_IN_FLIGHT_BYTES: u64 = 800_000;
/// Payload sizes (32-character pieces): about 250 kB and 896 kB, under the
/// relay's 1 MB record limit and the test broker's `message.max.bytes`.
const SMALL_PIECES: i32 = 7_800;
const LARGE_PIECES: i32 = 28_000;

/// Inserts events `first..first + count` for one key in ONE transaction
/// (the walsender sends it in a burst); every `large_every`-th event (by
/// sequence number, 0: none) has the large payload, the others the small.
async fn insert_sized_events(
    client: &tokio_postgres::Client,
    topic: &str,
    first: i32,
    count: i32,
    large_every: i32,
) {
    client
        .execute(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, schema_version, \
                                 trace_id, occurred_at, payload) \
             SELECT gen_random_uuid(), $1::text, 'sized', 'Sized', 1, 'trace-' || s, now(), \
                    jsonb_build_object('seq', s, 'blob', \
                        (SELECT string_agg(md5(s || '-' || i), '') \
                         FROM generate_series(1, CASE WHEN $4::int > 0 AND s % $4::int = 0 \
                                                      THEN $5::int ELSE $6::int END) i)) \
             FROM generate_series($2::int, $2::int + $3::int - 1) AS s",
            &[
                &topic,
                &first,
                &count,
                &large_every,
                &LARGE_PIECES,
                &SMALL_PIECES,
            ],
        )
        .await
        .expect("insert sized events");
}

/// The record's size as the relay counts it (rskafka's approximate size:
/// key, value and headers).
fn approximate_size(record: &KafkaRecord) -> u64 {
    let key = record.key.as_ref().map_or(0, String::len);
    let headers: usize = record.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    (key + record.value.len() + headers) as u64
}

fn sequence_numbers(records: &[KafkaRecord]) -> Vec<i64> {
    records
        .iter()
        .map(|r| r.envelope().payload["seq"].as_i64().unwrap_or(-1))
        .collect()
}

/// The relay's highest count of bytes in flight so far, once `published`
/// events are confirmed.
async fn peak_once_confirmed(relay: &Relay, published: u64) -> u64 {
    let status = wait_until(READ_TIMEOUT, "every event confirmed", || async {
        relay
            .source_status("bytes")
            .await
            .filter(|s| s["events_published"].as_u64() >= Some(published))
    })
    .await;
    status["in_flight_bytes_peak"]
        .as_u64()
        .unwrap_or_else(|| panic!("no in_flight_bytes_peak in {status}"))
}

/// Records of about 250 kB and 896 kB, a bound of 800 kB: the relay used to
/// count only records (5,000 in flight), so a burst of large rows went to
/// the broker all at once (5 GB per source at 1 MB each).
#[tokio::test]
async fn the_bytes_in_flight_stay_within_the_bound_and_a_larger_record_goes_alone() {
    let (db, client) = outbox_database("relay_bytes").await;
    let source = SourceSpec::new("bytes", &db);
    let relay = Relay::start_with(
        &[&source],
        &[
            (
                "APP__KAFKA__MAX_IN_FLIGHT_BYTES",
                MAX_IN_FLIGHT_BYTES.to_string(),
            ),
            // A broker slower than reading WAL: each partition produces at
            // most every 50 ms, so records would pile up without a bound.
            ("APP__KAFKA__BUSY_PRODUCE_INTERVAL", "50ms".into()),
        ],
    )
    .await;
    relay.wait_until_streaming("bytes").await;
    let topic = unique("rt_bytes");

    // Small records only: several fit under the bound, never more.
    insert_sized_events(&client, &topic, 1, 24, 0).await;
    let mut reader = KafkaReader::new(&test_support::kafka_brokers(), &topic).await;
    let small = read_until_distinct(&mut reader, 24, READ_TIMEOUT).await;
    let peak = peak_once_confirmed(&relay, 24).await;
    let small_size = small.iter().map(approximate_size).max().unwrap_or(0);
    println!("small records of {small_size} bytes: in flight at most {peak} bytes");
    assert!(
        peak <= MAX_IN_FLIGHT_BYTES,
        "{peak} bytes in flight, over the bound of {MAX_IN_FLIGHT_BYTES}"
    );
    assert!(
        peak >= 2 * small_size,
        "{peak} bytes in flight at most: records went one by one although more fit"
    );

    // Every third record is larger than the bound: it is sent, alone.
    insert_sized_events(&client, &topic, 25, 24, 3).await;
    let mixed = read_until_distinct(&mut reader, 24, READ_TIMEOUT).await;
    let peak = peak_once_confirmed(&relay, 48).await;
    let large_size = mixed.iter().map(approximate_size).max().unwrap_or(0);
    println!("large records of {large_size} bytes: in flight at most {peak} bytes");
    assert!(large_size > MAX_IN_FLIGHT_BYTES, "{large_size}");
    assert!(
        peak <= large_size,
        "{peak} bytes in flight: a record larger than the bound ({large_size} bytes) \
         went along with others"
    );

    let all: Vec<KafkaRecord> = small.into_iter().chain(mixed).collect();
    assert_eq!(
        sequence_numbers(&all),
        (1..=48).collect::<Vec<i64>>(),
        "every event once, in order"
    );
    let status = relay.source_status("bytes").await.expect("status");
    assert_eq!(status["in_flight_bytes"], 0, "{status}");
    assert_eq!(status["reconnects"], 0, "{status}");
    let metrics = relay.get_text("/metrics").await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "relay_in_flight_bytes{source=\"bytes\"} 0"),
        "{metrics}"
    );
}

//! The consumer runtime against a real broker and PostgreSQL: repeats are
//! applied once, poison goes to `dead_letters` without blocking (records
//! PostgreSQL cannot store included), unwanted
//! events cost no writes, two instances split partitions and take over
//! from each other, and a stored offset the broker no longer has (past the
//! end, or deleted by retention) moves to the log start.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use commerce_common::{
    config::DatabaseConfig,
    consumer::{self, BoxFuture, Concurrency, ConsumerConfig, EventHandler, HandleError, Identity},
    db::{self, DbPool},
    dead_letters::{self, Replayed},
    events::{Envelope, Event, PaymentFailed},
};
use diesel::sql_types::{Integer, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use prometheus_client::registry::Registry;
use rskafka::{
    client::partition::{Compression, OffsetAt, UnknownTopicHandling},
    record::Record,
};
use test_support::{
    TestDatabase, ensure_topics, fresh_database, kafka_brokers, kafka_client, produce_envelope,
    produce_envelopes, wait_until,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const MIGRATIONS: db::Migrations = db::Migrations::runtime(db::Runtime::OutboxAndConsumer);
const WAIT: Duration = Duration::from_secs(30);

/// Records every event it sees in `effects` (with its trace id, as the
/// services' outbox rows do); a `PaymentFailed` with reason `POISON` is a
/// permanent failure, one with reason `NOT_A_NUMBER` makes the handler's
/// statement fail on its data.
struct Recorder {
    instance: String,
    concurrency: Concurrency,
    /// The poison's cause was fixed: `POISON` is handled like any event.
    cured: bool,
}

impl EventHandler for Recorder {
    fn handle<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        envelope: &'a Envelope,
        event: Event,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            if let Event::PaymentFailed(failed) = &event {
                match failed.reason.as_str() {
                    "POISON" if !self.cured => {
                        return Err(HandleError::Permanent("poison payload".into()));
                    }
                    "PANIC" => panic!("the handler met a bug"),
                    "NOT_A_NUMBER" => {
                        // A data exception (22P02), as `?` hands it on.
                        diesel::sql_query("SELECT $1::integer")
                            .bind::<Text, _>(&failed.reason)
                            .execute(conn)
                            .await?;
                    }
                    _ => {}
                }
            }
            diesel::sql_query(
                "INSERT INTO effects (event_id, instance, trace) VALUES ($1, $2, $3)",
            )
            .bind::<SqlUuid, _>(envelope.event_id)
            .bind::<Text, _>(&self.instance)
            .bind::<Text, _>(&envelope.trace_id)
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    /// Notes in `together` how many records each call brought, then
    /// handles them one by one.
    fn handle_all<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        records: Vec<(&'a Envelope, Event)>,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            diesel::sql_query("INSERT INTO together (records) VALUES ($1)")
                .bind::<Integer, _>(records.len() as i32)
                .execute(conn)
                .await?;
            for (envelope, event) in records {
                self.handle(conn, envelope, event).await?;
            }
            Ok(())
        })
    }

    fn concurrency(&self) -> Concurrency {
        self.concurrency
    }

    fn wants(&self, event: &Event) -> bool {
        !matches!(event, Event::PaymentFailed(failed) if failed.reason == "SKIP")
    }
}

struct Setup {
    database: TestDatabase,
    pool: DbPool,
    topic: String,
}

async fn setup(partitions: i32) -> Setup {
    let database = fresh_database("consumer_rt").await;
    let config = DatabaseConfig::with_url(&database.url);
    db::migrate(&config, MIGRATIONS).await.expect("migrations");
    database
        .client()
        .await
        .batch_execute(
            "CREATE TABLE effects (seq bigserial, event_id uuid NOT NULL, instance text NOT NULL, \
                                   trace text NOT NULL); \
             CREATE TABLE together (seq bigserial, records int NOT NULL)",
        )
        .await
        .unwrap();
    let topic = format!("rt-{}", Uuid::new_v4().simple());
    ensure_topics(&kafka_brokers(), &[&topic], partitions).await;
    Setup {
        pool: db::pool(&config).unwrap(),
        database,
        topic,
    }
}

impl Setup {
    /// Produces `event` to `partition` of the test's topic, keyed by its
    /// aggregate id as the relay does.
    async fn produce(&self, partition: i32, event: &Envelope) {
        produce_envelope(
            &kafka_brokers(),
            &self.topic,
            partition,
            &event.aggregate_id,
            event,
        )
        .await;
    }
}

fn identity(topic: &str) -> Identity {
    Identity::new(
        kafka_brokers().split(',').map(String::from).collect(),
        "test",
        [topic],
    )
}

fn config(instance: &str) -> ConsumerConfig {
    ConsumerConfig {
        instance_id: instance.into(),
        lease_ttl: Duration::from_millis(1500),
        ..ConsumerConfig::default()
    }
}

fn start(setup: &Setup, instance: &str) -> (tokio::task::JoinHandle<()>, CancellationToken) {
    start_with(setup, instance, Concurrency::Serialized)
}

fn start_with(
    setup: &Setup,
    instance: &str,
    concurrency: Concurrency,
) -> (tokio::task::JoinHandle<()>, CancellationToken) {
    start_observed(setup, instance, concurrency, &mut Registry::default())
}

/// Starts an instance whose metrics go to `registry`.
fn start_observed(
    setup: &Setup,
    instance: &str,
    concurrency: Concurrency,
    registry: &mut Registry,
) -> (tokio::task::JoinHandle<()>, CancellationToken) {
    start_configured(setup, config(instance), concurrency, registry)
}

/// Starts the serialized instance `only`, with a registry of its own for
/// its metrics.
fn start_measured(setup: &Setup) -> (tokio::task::JoinHandle<()>, CancellationToken, Registry) {
    let mut registry = Registry::default();
    let (handle, shutdown) = start_observed(setup, "only", Concurrency::Serialized, &mut registry);
    (handle, shutdown, registry)
}

/// Starts an instance with `config`, its metrics in `registry`.
fn start_configured(
    setup: &Setup,
    config: ConsumerConfig,
    concurrency: Concurrency,
    registry: &mut Registry,
) -> (tokio::task::JoinHandle<()>, CancellationToken) {
    let instance = config.instance_id.clone();
    let shutdown = CancellationToken::new();
    let handle = consumer::spawn(
        setup.pool.clone(),
        identity(&setup.topic),
        config,
        Arc::new(Recorder {
            instance,
            concurrency,
            cured: false,
        }),
        registry,
        shutdown.clone(),
    );
    (handle, shutdown)
}

/// The value of the sample of `registry` whose name and labels start with
/// `prefix` (e.g. `consumer_offsets_skipped_total{`), if there is one.
fn metric(registry: &Registry, prefix: &str) -> Option<f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find(|line| line.starts_with(prefix))
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
}

/// Asserts that no offset was skipped (counted as lost) in `registry`.
fn assert_nothing_skipped(registry: &Registry) {
    assert_eq!(
        metric(registry, "consumer_offsets_skipped_total{"),
        None,
        "starting over loses nothing"
    );
}

/// The group `test` has handled partition 0 of the topic up to `offset`.
async fn store_offset(setup: &Setup, offset: i64) {
    setup
        .database
        .client()
        .await
        .batch_execute(&format!(
            "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) \
             VALUES ('test', '{}', 0, {offset})",
            setup.topic
        ))
        .await
        .unwrap();
}

/// Deletes the records of partition 0 of `topic` below `offset`, as
/// retention does: the partition's log starts at `offset` afterwards.
async fn delete_records_below(topic: &str, offset: i64) {
    let client = kafka_client(&kafka_brokers()).await;
    let partition = client
        .partition_client(topic, 0, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, partition.delete_records(offset, 5_000))
        .await
        .expect("DeleteRecords timed out")
        .expect("DeleteRecords");
    let start = tokio::time::timeout(deadline, partition.get_offset(OffsetAt::Earliest))
        .await
        .expect("ListOffsets timed out")
        .expect("ListOffsets");
    assert_eq!(start, offset, "the log start after DeleteRecords");
}

/// The first column of the rows `sql` selects.
async fn column<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    database: &TestDatabase,
    sql: &str,
) -> Vec<T> {
    database
        .client()
        .await
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The handled event ids, in the order they were handled.
async fn effects_in_order(database: &TestDatabase) -> Vec<Uuid> {
    column(database, "SELECT event_id FROM effects ORDER BY seq").await
}

fn envelope(reason: &str) -> Envelope {
    let order_id = Uuid::new_v4();
    let event = Event::PaymentFailed(PaymentFailed {
        order_id,
        customer_id: Uuid::new_v4(),
        amount_cents: 100,
        reason: reason.into(),
    });
    let (event_type, payload) = event.into_parts();
    Envelope {
        event_id: Uuid::now_v7(),
        event_type,
        aggregate_type: "payments".into(),
        aggregate_id: order_id.to_string(),
        occurred_at: chrono::Utc::now(),
        schema_version: 1,
        trace_id: "test".into(),
        payload,
    }
}

async fn produce_raw(topic: &str, partition: i32, value: &[u8]) {
    let record = Record {
        key: Some(b"k".to_vec()),
        value: Some(value.to_vec()),
        headers: BTreeMap::new(),
        timestamp: chrono::Utc::now(),
    };
    produce_records(topic, partition, vec![record]).await;
}

/// Produces `records` to `partition` of `topic` in one request.
async fn produce_records(topic: &str, partition: i32, records: Vec<Record>) {
    let client = kafka_client(&kafka_brokers()).await;
    let partition = client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        partition.produce(records, Compression::NoCompression),
    )
    .await
    .unwrap()
    .unwrap();
}

/// A record as the relay writes it: key, `event_id`/`event_type` headers
/// and the envelope as value.
fn record_of(envelope: &Envelope) -> Record {
    Record {
        key: Some(envelope.aggregate_id.clone().into_bytes()),
        value: Some(serde_json::to_vec(envelope).unwrap()),
        headers: BTreeMap::from([
            (
                "event_id".into(),
                envelope.event_id.to_string().into_bytes(),
            ),
            (
                "event_type".into(),
                envelope.event_type.clone().into_bytes(),
            ),
        ]),
        timestamp: chrono::Utc::now(),
    }
}

/// Waits until the stored offset of the (single) partition is `offset`.
async fn wait_for_stored_offset(database: &TestDatabase, offset: i64, what: &str) {
    wait_until(WAIT, what, || async {
        let stored = query_i64(
            database,
            "SELECT coalesce(max(next_offset), 0) FROM consumer_offsets",
        )
        .await;
        (stored == offset).then_some(())
    })
    .await;
}

/// Rows of (event id, number) that `sql` selects.
async fn query_ids_and_counts(database: &TestDatabase, sql: &str) -> Vec<(Uuid, i64)> {
    database
        .client()
        .await
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn query_i64(database: &TestDatabase, sql: &str) -> i64 {
    database
        .client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn repeats_apply_once_and_poison_is_dead_lettered_without_blocking() {
    let setup = setup(1).await;
    let brokers = kafka_brokers();
    let (_handle, shutdown) = start(&setup, "only");

    let first = envelope("OK");
    let key = first.aggregate_id.clone();
    produce_envelope(&brokers, &setup.topic, 0, &key, &first).await;
    produce_envelope(&brokers, &setup.topic, 0, &key, &first).await;
    produce_raw(&setup.topic, 0, b"{not json").await;
    let mut unknown = envelope("OK");
    unknown.event_type = "SomethingNew".into();
    produce_envelope(&brokers, &setup.topic, 0, &key, &unknown).await;
    produce_envelope(&brokers, &setup.topic, 0, &key, &envelope("POISON")).await;
    produce_envelope(&brokers, &setup.topic, 0, &key, &envelope("PANIC")).await;
    let last = envelope("OK");
    produce_envelope(&brokers, &setup.topic, 0, &key, &last).await;
    // Delivered again after everything else (the relay's at-least-once).
    produce_envelope(&brokers, &setup.topic, 0, &key, &first).await;

    let database = &setup.database;
    wait_for_stored_offset(database, 8, "the partition to be consumed to its end").await;
    let client = database.client().await;
    let effects: Vec<Uuid> = client
        .query("SELECT event_id FROM effects ORDER BY event_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        effects,
        vec![first.event_id, last.event_id],
        "each event applied once"
    );
    let dead: Vec<(i64, Option<String>, String)> = client
        .query(
            "SELECT record_offset, event_type, reason FROM dead_letters ORDER BY record_offset",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert_eq!(dead[0].0, 2);
    assert!(dead[0].2.contains("invalid envelope"), "{dead:?}");
    assert_eq!(dead[1].1.as_deref(), Some("SomethingNew"));
    assert!(dead[2].2.contains("poison"), "{dead:?}");
    assert!(
        dead[3]
            .2
            .contains("handler panicked: the handler met a bug"),
        "{dead:?}"
    );
    assert_eq!(query_i64(database, "SELECT count(*) FROM inbox").await, 2);
    shutdown.cancel();
}

/// PostgreSQL's text and jsonb cannot hold a NUL character. Records with
/// one in the value, the event type, the key or a header, and an event
/// whose values the handler's statement refuses (a data exception), are
/// handled or dead-lettered with their bytes kept; none holds up the
/// partition, and the record after them is handled.
#[tokio::test]
async fn records_postgresql_cannot_store_are_dead_lettered_without_blocking() {
    let setup = setup(1).await;
    let database = &setup.database;
    let mut nul_trace = envelope("OK");
    nul_trace.trace_id = "tr\0ce".into();
    let mut nul_type = envelope("OK");
    nul_type.event_type = "Payment\0Failed".into();
    let nul_key = envelope("OK");
    let mut nul_key_record = record_of(&nul_key);
    nul_key_record.key = Some(b"order\0-1".to_vec());
    let nul_header = envelope("OK");
    let mut nul_header_record = record_of(&nul_header);
    nul_header_record
        .headers
        .insert("trace_id".into(), b"t\0".to_vec());
    // No envelope, and NUL in its headers' names and values.
    let garbage_headers = BTreeMap::from([
        ("event_type".to_string(), b"Bad\0Type".to_vec()),
        ("x-\0".to_string(), vec![0, 0xff, b'a']),
    ]);
    let garbage = Record {
        key: Some(b"k\0".to_vec()),
        value: Some(b"{\"event_type\": \"\0\"}".to_vec()),
        headers: garbage_headers.clone(),
        timestamp: chrono::Utc::now(),
    };
    let not_a_number = envelope("NOT_A_NUMBER");
    let last = envelope("OK");
    let records = vec![
        record_of(&nul_trace),    // 0: dead letter
        record_of(&nul_type),     // 1: dead letter
        nul_key_record,           // 2: handled
        nul_header_record,        // 3: handled
        garbage.clone(),          // 4: dead letter
        record_of(&not_a_number), // 5: dead letter
        record_of(&last),         // 6: handled
    ];
    // One request before the consumer starts: they arrive in one fetch.
    produce_records(&setup.topic, 0, records).await;
    let (_handle, shutdown) = start(&setup, "only");
    wait_for_stored_offset(database, 7, "the partition to be consumed to its end").await;
    shutdown.cancel();

    let mut handled = [nul_key.event_id, nul_header.event_id, last.event_id];
    handled.sort();
    let effects = query_ids_and_counts(
        database,
        "SELECT event_id, count(*) FROM effects GROUP BY event_id ORDER BY event_id",
    )
    .await;
    assert_eq!(
        effects,
        handled.iter().map(|id| (*id, 1)).collect::<Vec<_>>(),
        "the events without NUL in what the handler stores are handled once"
    );

    let client = database.client().await;
    let rows = client
        .query(
            "SELECT record_offset, event_id, event_type, reason, record_key, record_value, \
                    headers::text, header_names, header_values \
             FROM dead_letters ORDER BY record_offset",
            &[],
        )
        .await
        .unwrap();
    let offsets: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(offsets, vec![0, 1, 4, 5], "the dead letters");
    let reason = |i: usize| rows[i].get::<_, String>(3);
    assert!(reason(0).contains("trace_id holds a NUL"), "{}", reason(0));
    assert_eq!(rows[0].get::<_, Option<Uuid>>(1), Some(nul_trace.event_id));
    assert!(
        reason(1).contains("event_type holds a NUL"),
        "{}",
        reason(1)
    );
    assert_eq!(
        rows[1].get::<_, Option<String>>(2).as_deref(),
        Some("Payment\\u0000Failed"),
        "the readable event type escapes the NUL"
    );
    assert!(
        reason(3).contains("invalid input syntax for type integer"),
        "{}",
        reason(3)
    );
    assert_eq!(
        rows[3].get::<_, Option<Uuid>>(1),
        Some(not_a_number.event_id)
    );
    // The record that is no envelope: its bytes as they were.
    let garbage_row = &rows[2];
    assert!(
        garbage_row.get::<_, String>(3).contains("invalid envelope"),
        "{}",
        garbage_row.get::<_, String>(3)
    );
    assert_eq!(
        garbage_row.get::<_, Option<String>>(2).as_deref(),
        Some("Bad\\u0000Type")
    );
    assert_eq!(garbage_row.get::<_, Option<Vec<u8>>>(4), garbage.key);
    assert_eq!(garbage_row.get::<_, Option<Vec<u8>>>(5), garbage.value);
    let (names, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = garbage_headers
        .into_iter()
        .map(|(k, v)| (k.into_bytes(), v))
        .unzip();
    assert_eq!(garbage_row.get::<_, Option<Vec<Vec<u8>>>>(7), Some(names));
    assert_eq!(garbage_row.get::<_, Option<Vec<Vec<u8>>>>(8), Some(values));
    let readable: String = garbage_row.get(6);
    assert!(
        readable.contains("\"x-\\\\u0000\": \"\\\\u0000\u{fffd}a\""),
        "the readable headers: {readable}"
    );
    assert_eq!(query_i64(database, "SELECT count(*) FROM inbox").await, 3);
}

/// A fetch's inbox entries are written together: an event twice in one
/// fetch is still applied once (the first offset is remembered), with and
/// without a record of that fetch going to the dead letters.
#[tokio::test]
async fn an_event_repeated_within_one_fetch_applies_once() {
    let setup = setup(1).await;
    let brokers = kafka_brokers();
    let database = &setup.database;
    let key = Uuid::new_v4().to_string();
    let (a, b) = (envelope("OK"), envelope("OK"));
    // One batch before the consumer starts: its first fetch holds them all.
    produce_envelopes(&brokers, &setup.topic, 0, &key, &[&a, &a, &b]).await;
    let (_handle, shutdown) = start(&setup, "only");
    wait_for_stored_offset(database, 3, "the first batch to be consumed").await;
    let (c, poison) = (envelope("OK"), envelope("POISON"));
    produce_envelopes(&brokers, &setup.topic, 0, &key, &[&c, &poison, &c, &a]).await;
    wait_for_stored_offset(database, 7, "the second batch to be consumed").await;
    shutdown.cancel();

    let effects = query_ids_and_counts(
        database,
        "SELECT event_id, count(*) FROM effects GROUP BY event_id ORDER BY event_id",
    )
    .await;
    let mut expected = vec![(a.event_id, 1), (b.event_id, 1), (c.event_id, 1)];
    expected.sort();
    assert_eq!(effects, expected, "each event applied once");
    let inbox = query_ids_and_counts(
        database,
        "SELECT event_id, record_offset FROM inbox ORDER BY record_offset",
    )
    .await;
    assert_eq!(
        inbox,
        vec![(a.event_id, 0), (b.event_id, 2), (c.event_id, 3)],
        "the first offset of each event is remembered; the dead letter is not"
    );
    assert_eq!(
        query_i64(database, "SELECT max(record_offset) FROM dead_letters").await,
        4
    );
    assert_eq!(
        query_i64(database, "SELECT count(*) FROM dead_letters").await,
        1
    );
}

#[tokio::test]
async fn the_new_events_of_a_fetch_reach_the_handler_together() {
    let setup = setup(1).await;
    let brokers = kafka_brokers();
    let database = &setup.database;
    let key = Uuid::new_v4().to_string();
    let first: Vec<Envelope> = (0..10).map(|_| envelope("OK")).collect();
    // One batch before the consumer starts: its first fetch holds them all.
    produce_envelopes(
        &brokers,
        &setup.topic,
        0,
        &key,
        &first.iter().collect::<Vec<_>>(),
    )
    .await;
    let (_handle, shutdown) = start(&setup, "only");
    wait_for_stored_offset(database, 10, "the first batch to be consumed").await;
    // A repeat in the middle of new events: it is skipped, and the new
    // events on either side of it are handed over apart, in their order.
    let (x, y) = (envelope("OK"), envelope("OK"));
    produce_envelopes(&brokers, &setup.topic, 0, &key, &[&x, &first[3], &y]).await;
    wait_for_stored_offset(database, 13, "the second batch to be consumed").await;
    shutdown.cancel();

    let together: Vec<i32> = column(database, "SELECT records FROM together ORDER BY seq").await;
    assert_eq!(
        together,
        [10, 1, 1],
        "records handed to handle_all per call"
    );
    let mut expected: Vec<Uuid> = first.iter().map(|e| e.event_id).collect();
    expected.extend([x.event_id, y.event_id]);
    assert_eq!(
        effects_in_order(database).await,
        expected,
        "each new event once, in order"
    );
}

#[tokio::test]
async fn a_dead_letter_is_replayed_once_its_cause_is_fixed() {
    let setup = setup(1).await;
    let brokers = kafka_brokers();
    let (_handle, shutdown) = start(&setup, "only");
    let database = &setup.database;
    let key = Uuid::new_v4().to_string();
    let poison = envelope("POISON");
    let other = envelope("POISON");
    produce_envelope(&brokers, &setup.topic, 0, &key, &poison).await;
    produce_envelope(&brokers, &setup.topic, 0, &key, &other).await;
    produce_raw(&setup.topic, 0, b"{not json").await;
    wait_for_stored_offset(database, 3, "the partition to be consumed to its end").await;
    shutdown.cancel();
    let ids = dead_letters::ids(&setup.pool, "test").await.unwrap();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let (poison_id, other_id, garbage_id) = (ids[0], ids[1], ids[2]);
    let handler = |cured| Recorder {
        instance: "replay".into(),
        concurrency: Concurrency::Serialized,
        cured,
    };
    let replay = |id, cured| {
        let pool = setup.pool.clone();
        async move {
            dead_letters::replay(&pool, "test", &handler(cured), id)
                .await
                .unwrap()
        }
    };

    // The cause is not fixed yet: refused again, nothing changes.
    assert_eq!(
        replay(poison_id, false).await,
        Replayed::StillFailing("poison payload".into())
    );
    assert_eq!(
        query_i64(database, "SELECT count(*) FROM dead_letters").await,
        3
    );
    assert_eq!(query_i64(database, "SELECT count(*) FROM inbox").await, 0);

    // Fixed: applied once, remembered in the inbox, the dead letter gone.
    assert_eq!(replay(poison_id, true).await, Replayed::Handled);
    assert_eq!(replay(poison_id, true).await, Replayed::NotFound);
    let effects = query_i64(
        database,
        &format!(
            "SELECT count(*) FROM effects WHERE event_id = '{}'",
            poison.event_id
        ),
    )
    .await;
    assert_eq!(effects, 1);
    assert_eq!(query_i64(database, "SELECT count(*) FROM inbox").await, 1);

    // Handled some other way since (e.g. published again through the
    // producer's outbox): not applied twice, the dead letter just goes.
    database
        .client()
        .await
        .batch_execute(&format!(
            "INSERT INTO inbox (consumer_group, event_id, topic, partition, record_offset) \
             VALUES ('test', '{}', 'elsewhere', 0, 0)",
            other.event_id
        ))
        .await
        .unwrap();
    assert_eq!(replay(other_id, true).await, Replayed::AlreadyHandled);
    assert_eq!(query_i64(database, "SELECT count(*) FROM effects").await, 1);

    // The command: what cannot be replayed is reported and kept.
    let all = dead_letters::replay_command(&setup.pool, "test", &handler(true), &[]).await;
    assert!(all.is_err(), "the garbage record cannot be replayed");
    assert_eq!(
        dead_letters::ids(&setup.pool, "test").await.unwrap(),
        vec![garbage_id]
    );
    let cured = handler(true);
    let not_an_id = ["x".to_string()];
    let bad_id = dead_letters::replay_command(&setup.pool, "test", &cured, &not_an_id).await;
    assert!(bad_id.is_err());
}

#[tokio::test]
async fn unwanted_events_leave_no_inbox_rows_and_their_offsets_are_stored_anyway() {
    let setup = setup(1).await;
    let brokers = kafka_brokers();
    let (_handle, shutdown) = start(&setup, "only");
    let database = &setup.database;
    let key = Uuid::new_v4().to_string();
    for _ in 0..5 {
        produce_envelope(&brokers, &setup.topic, 0, &key, &envelope("SKIP")).await;
    }
    // Only unwanted events: the position is stored lazily (within a second
    // or so) without a single inbox row or effect.
    wait_for_stored_offset(database, 5, "the skipped offsets to be stored").await;
    assert_eq!(query_i64(database, "SELECT count(*) FROM inbox").await, 0);
    assert_eq!(query_i64(database, "SELECT count(*) FROM effects").await, 0);

    // A wanted event among unwanted ones is applied once; only it is in the inbox.
    let wanted = envelope("OK");
    produce_envelope(&brokers, &setup.topic, 0, &key, &envelope("SKIP")).await;
    produce_envelope(&brokers, &setup.topic, 0, &key, &wanted).await;
    produce_envelope(&brokers, &setup.topic, 0, &key, &envelope("SKIP")).await;
    wait_for_stored_offset(database, 8, "the partition to be consumed to its end").await;
    let client = database.client().await;
    let effects: Vec<Uuid> = client
        .query("SELECT event_id FROM effects", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(effects, vec![wanted.event_id]);
    assert_eq!(query_i64(database, "SELECT count(*) FROM inbox").await, 1);
    assert_eq!(
        query_i64(database, "SELECT count(*) FROM dead_letters").await,
        0
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_partition_of_unwanted_events_is_fetched_every_skipped_fetch_interval() {
    let setup = setup(1).await;
    let brokers = kafka_brokers();
    let mut registry = Registry::default();
    let config = ConsumerConfig {
        skipped_fetch_interval: Duration::from_secs(1),
        ..config("only")
    };
    let (_handle, shutdown) =
        start_configured(&setup, config, Concurrency::Serialized, &mut registry);
    let database = &setup.database;
    let key = Uuid::new_v4().to_string();
    produce_envelope(&brokers, &setup.topic, 0, &key, &envelope("SKIP")).await;
    wait_for_stored_offset(database, 1, "the first skipped offset to be stored").await;
    let fetches = || metric(&registry, "consumer_fetches_total{").unwrap_or_default();
    let before = fetches();
    // Unwanted events for 1.5 s, one every 30 ms: fetched every
    // `busy_fetch_interval` (25 ms) that would be about 60 fetches.
    let started = tokio::time::Instant::now();
    let mut produced = 1;
    while started.elapsed() < Duration::from_millis(1500) {
        produce_envelope(&brokers, &setup.topic, 0, &key, &envelope("SKIP")).await;
        produced += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let during = fetches() - before;
    assert!(
        during <= 4.0,
        "{during} fetches of a partition of unwanted events in 1.5 s, with a 1 s interval"
    );
    // A wanted event there is still applied, within the interval.
    let wanted = envelope("OK");
    produce_envelope(&brokers, &setup.topic, 0, &key, &wanted).await;
    wait_for_stored_offset(database, produced + 1, "the wanted event to be applied").await;
    assert_eq!(query_i64(database, "SELECT count(*) FROM effects").await, 1);
    shutdown.cancel();
}

#[tokio::test]
async fn leases_of_partitions_that_no_longer_exist_are_dropped() {
    // The topic had 3 partitions once (it was deleted and created again
    // with fewer); now it has 1.
    let setup = setup(1).await;
    let database = &setup.database;
    database
        .client()
        .await
        .batch_execute(&format!(
            "INSERT INTO partition_leases (consumer_group, topic, partition) \
             SELECT 'test', '{}', p FROM generate_series(0, 2) AS p",
            setup.topic
        ))
        .await
        .unwrap();
    let (_handle, shutdown) = start(&setup, "only");
    let event = envelope("OK");
    produce_envelope(&kafka_brokers(), &setup.topic, 0, "k", &event).await;
    wait_until(WAIT, "the event of the one real partition", || async {
        (query_i64(database, "SELECT count(*) FROM effects").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        query_i64(database, "SELECT count(*) FROM partition_leases").await,
        1
    );
    shutdown.cancel();
}

#[tokio::test]
async fn by_key_concurrency_applies_a_fetch_in_key_order_keeping_each_keys_order() {
    let setup = setup(1).await;
    let brokers = kafka_brokers();
    let events: Vec<(&str, Envelope)> = ["b", "a", "c", "b", "a"]
        .into_iter()
        .map(|key| (key, envelope("OK")))
        .collect();
    // All produced before the consumer starts: one fetch holds them all.
    for (key, event) in &events {
        produce_envelope(&brokers, &setup.topic, 0, key, event).await;
    }
    let (_handle, shutdown) = start_with(&setup, "only", Concurrency::ByKey);
    let database = &setup.database;
    wait_until(WAIT, "every event applied", || async {
        (query_i64(database, "SELECT count(*) FROM effects").await == 5).then_some(())
    })
    .await;
    let applied = effects_in_order(database).await;
    let id = |i: usize| events[i].1.event_id;
    // a (2nd, 5th produced), b (1st, 4th), c (3rd).
    assert_eq!(applied, vec![id(1), id(4), id(0), id(3), id(2)]);
    shutdown.cancel();
}

#[tokio::test]
async fn two_instances_split_partitions_and_one_takes_over_from_a_dead_one() {
    let setup = setup(4).await;
    let database = &setup.database;
    let owned_by = |instance: &'static str| async move {
        query_i64(
            database,
            &format!("SELECT count(*) FROM partition_leases WHERE owner = '{instance}' AND expires_at > now()"),
        )
        .await
    };

    let (a, _a_shutdown) = start(&setup, "a");
    wait_until(WAIT, "instance a to own all partitions", || async {
        (owned_by("a").await == 4).then_some(())
    })
    .await;
    let (_b, b_shutdown) = start(&setup, "b");
    wait_until(WAIT, "a and b to own two partitions each", || async {
        (owned_by("a").await == 2 && owned_by("b").await == 2).then_some(())
    })
    .await;

    let mut sent = Vec::new();
    for i in 0..40 {
        let envelope = envelope("OK");
        setup.produce(i % 4, &envelope).await;
        sent.push(envelope.event_id);
    }
    wait_until(WAIT, "the first 40 events to be handled", || async {
        (query_i64(database, "SELECT count(*) FROM effects").await == 40).then_some(())
    })
    .await;
    let by_a = query_i64(
        database,
        "SELECT count(*) FROM effects WHERE instance = 'a'",
    )
    .await;
    assert_eq!(by_a, 20, "a handled its two partitions");

    // Instance a dies without releasing anything; events keep coming.
    a.abort();
    for i in 0..40 {
        let envelope = envelope("OK");
        setup.produce(i % 4, &envelope).await;
        sent.push(envelope.event_id);
    }
    wait_until(WAIT, "b to take over and handle all 80 events", || async {
        (query_i64(database, "SELECT count(*) FROM effects").await == 80).then_some(())
    })
    .await;
    assert_eq!(
        query_i64(database, "SELECT count(DISTINCT event_id) FROM effects").await,
        80,
        "no event applied twice"
    );
    assert_eq!(owned_by("b").await, 4);
    assert_eq!(
        query_i64(
            database,
            "SELECT sum(next_offset)::bigint FROM consumer_offsets"
        )
        .await,
        80
    );

    // A graceful stop gives the leases back at once.
    b_shutdown.cancel();
    wait_until(WAIT, "b to release its leases", || async {
        (owned_by("b").await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_stored_offset_beyond_the_end_of_a_recreated_partition_starts_over() {
    let setup = setup(1).await;
    let database = &setup.database;
    // As if the broker had lost its data after 1000 records were handled.
    store_offset(&setup, 1000).await;
    let (first, second) = (envelope("OK"), envelope("OK"));
    setup.produce(0, &first).await;
    setup.produce(0, &second).await;
    let (_handle, shutdown, registry) = start_measured(&setup);

    wait_until(WAIT, "the partition to be consumed from 0", || async {
        (query_i64(database, "SELECT count(*) FROM effects").await == 2).then_some(())
    })
    .await;
    assert_eq!(
        query_i64(database, "SELECT next_offset FROM consumer_offsets").await,
        2
    );
    assert_nothing_skipped(&registry);
    shutdown.cancel();
}

/// Past the end of a partition whose log no longer starts at 0 (the records
/// below 1 are gone): the partition starts over from its log start. A fetch
/// at 0 would be out of range too.
#[tokio::test]
async fn a_stored_offset_past_the_end_starts_over_from_the_log_start() {
    let setup = setup(1).await;
    let database = &setup.database;
    let old: Vec<Envelope> = (0..3).map(|_| envelope("OK")).collect();
    for event in &old {
        setup.produce(0, event).await;
    }
    delete_records_below(&setup.topic, 1).await;
    store_offset(&setup, 1000).await;
    let (_handle, shutdown, registry) = start_measured(&setup);

    wait_for_stored_offset(
        database,
        3,
        "the partition to be consumed from its log start",
    )
    .await;
    let later = envelope("OK");
    setup.produce(0, &later).await;
    wait_for_stored_offset(database, 4, "a new record to be consumed").await;
    assert_eq!(
        effects_in_order(database).await,
        vec![old[1].event_id, old[2].event_id, later.event_id]
    );
    assert_nothing_skipped(&registry);
    shutdown.cancel();
}

/// Retention (here DeleteRecords) removed records the group had not handled
/// yet: the stored offset is below the log start, and a fetch there is out
/// of range. The partition goes on from the log start instead of asking for
/// the lost offset forever, and the loss is counted.
#[tokio::test]
async fn records_deleted_before_they_were_handled_are_skipped_and_counted() {
    let setup = setup(1).await;
    let database = &setup.database;
    let old: Vec<Envelope> = (0..5).map(|_| envelope("OK")).collect();
    for event in &old {
        setup.produce(0, event).await;
    }
    // The group had handled offsets 0 and 1 when it stopped; meanwhile the
    // broker deleted everything below 4: offsets 2 and 3 are lost.
    store_offset(&setup, 2).await;
    delete_records_below(&setup.topic, 4).await;
    let (_handle, shutdown, registry) = start_measured(&setup);

    let new = [envelope("OK"), envelope("OK")];
    for event in &new {
        setup.produce(0, event).await;
    }
    wait_for_stored_offset(database, 7, "the records from the log start to be consumed").await;
    assert_eq!(
        effects_in_order(database).await,
        vec![old[4].event_id, new[0].event_id, new[1].event_id]
    );
    let labels = format!(
        "consumer_offsets_skipped_total{{group=\"test\",topic=\"{}\",partition=\"0\"}}",
        setup.topic
    );
    assert_eq!(
        metric(&registry, &labels),
        Some(2.0),
        "the two lost offsets"
    );
    shutdown.cancel();
}

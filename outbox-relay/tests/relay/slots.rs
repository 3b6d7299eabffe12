//! Slots before writes (issue 19, item 4) and the lag probe (issue 20,
//! item 6): `create-slots` makes a slot before anything writes, a slot that
//! went missing stops its source until an operator re-creates it, and the
//! slot's lag and WAL status are reported whatever the source's state; a
//! relay that has to make a source's first slot itself says so, loudly when
//! the outbox already had inserts.

use std::time::Duration;

use test_support::{KafkaReader, ReplicationSlots, TestDatabase, free_port, wait_until};

use crate::helpers::{
    CreateSlots, Relay, SourceSpec, current_wal_lsn, insert_events, outbox_database,
    read_until_distinct, relay_env, unique,
};

const OUTBOX_MIGRATION: &str =
    include_str!("../../../db/migrations/runtime/outbox/2026-11-25-000001_outbox/up.sql");
const READ_TIMEOUT: Duration = Duration::from_secs(30);

async fn slot_exists(client: &tokio_postgres::Client, slot: &str) -> bool {
    client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("pg_replication_slots")
        .is_some()
}

/// The metric line `name{source="<source>"} <value>`'s value.
fn metric(metrics: &str, name: &str, source: &str) -> Option<f64> {
    let prefix = format!("{name}{{source=\"{source}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
}

#[tokio::test]
async fn a_dropped_slot_stops_its_source_until_create_slots_recreates_it() {
    let (_db, client) = outbox_database("relay_slot_dropped").await;
    let source = SourceSpec::new("dropped", &_db);
    let topic = unique("rt_dropped");
    let mut relay = Relay::start(&[&source]).await;
    relay
        .wait_for_state("dropped", "streaming", READ_TIMEOUT)
        .await;
    insert_events(&client, &topic, "before", 1, 1).await;
    let mut reader = KafkaReader::new(&test_support::kafka_brokers(), &topic).await;
    read_until_distinct(&mut reader, 1, READ_TIMEOUT).await;

    // The slot is dropped while the relay is stopped; events written then
    // are lost with it.
    assert!(relay.process.stop().success());
    wait_until(READ_TIMEOUT, "the slot dropped", || async {
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&source.slot])
            .await
            .ok()
    })
    .await;
    insert_events(&client, &topic, "lost", 1, 3).await;

    relay.restart().await;
    let status = relay.wait_for_state("dropped", "error", READ_TIMEOUT).await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("is missing") && error.contains("create-slots --recreate dropped"),
        "{error}"
    );
    assert_eq!(status["slot_missing"], true);
    let metrics = relay.get_text("/metrics").await.expect("metrics");
    assert_eq!(
        metric(&metrics, "relay_slot_missing", "dropped"),
        Some(1.0),
        "{metrics}"
    );
    let probed = wait_until(READ_TIMEOUT, "the probe to see no slot", || async {
        relay
            .source_status("dropped")
            .await
            .filter(|s| s["wal_status"] == "missing")
    })
    .await;
    assert_eq!(probed["events_published"], 0);
    assert!(
        !slot_exists(&client, &source.slot).await,
        "the relay created a new slot silently"
    );
    let ready = reqwest::get(relay.url("/ready")).await.expect("/ready");
    assert_eq!(ready.status(), 503, "not ready while a source is in error");

    // The one-shot step refuses too, naming the action.
    let refused = relay.create_slots(&[]);
    assert!(!refused.success, "{}", refused.output);
    assert!(
        refused.output.contains("create-slots --recreate dropped"),
        "{}",
        refused.output
    );
    assert!(!slot_exists(&client, &source.slot).await);

    // The explicit operator action; the relay resumes on its next attempt.
    let recreated = relay.create_slots(&["--recreate", "dropped"]);
    assert!(recreated.success, "{}", recreated.output);
    assert!(
        recreated.output.contains("RE-CREATED"),
        "{}",
        recreated.output
    );
    relay
        .wait_for_state("dropped", "streaming", READ_TIMEOUT)
        .await;
    insert_events(&client, &topic, "after", 1, 1).await;
    let records = read_until_distinct(&mut reader, 1, READ_TIMEOUT).await;
    let keys: Vec<_> = records.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(keys, ["after"], "the lost events are not published");
    let metrics = relay.get_text("/metrics").await.expect("metrics");
    assert_eq!(metric(&metrics, "relay_slot_missing", "dropped"), Some(0.0));
    let recreations: i32 = client
        .query_one(
            "SELECT recreations FROM outbox_relay.slots WHERE slot_name = $1",
            &[&source.slot],
        )
        .await
        .expect("the marker")
        .get(0);
    assert_eq!(recreations, 1);
    let ready = reqwest::get(relay.url("/ready")).await.expect("/ready");
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn create_slots_on_a_fresh_database_keeps_what_is_written_before_the_relay_starts() {
    let db: TestDatabase = test_support::fresh_database("relay_slot_fresh").await;
    let client = db.client().await;
    let source = SourceSpec::new("fresh", &db);
    let _slots = ReplicationSlots(vec![(db.url.clone(), source.slot.clone())]);
    let env = relay_env(&[&source], free_port(), &[]);

    // Before the service's migrations: no outbox, no publication yet.
    let first = CreateSlots::run(env.clone(), &[]);
    assert!(first.success, "{}", first.output);
    assert!(
        first.output.contains("created at") && first.output.contains("not created yet"),
        "{}",
        first.output
    );
    assert!(slot_exists(&client, &source.slot).await);

    // The migrations as diesel runs them (each in a transaction that also
    // records its version), then a service writes before any relay runs.
    client
        .batch_execute("CREATE TABLE schema_migrations (version text PRIMARY KEY)")
        .await
        .expect("migration table");
    client
        .batch_execute(&format!(
            "BEGIN; {OUTBOX_MIGRATION}; INSERT INTO schema_migrations VALUES ('1'); COMMIT;"
        ))
        .await
        .expect("outbox migration");
    let topic = unique("rt_fresh");
    insert_events(&client, &topic, "early", 1, 5).await;

    let again = CreateSlots::run(env, &[]);
    assert!(again.success, "{}", again.output);
    assert!(
        again.output.contains("exists")
            && again.output.contains("publication outbox_relay checked"),
        "idempotent: {}",
        again.output
    );

    let relay = Relay::start(&[&source]).await;
    relay
        .wait_for_state("fresh", "streaming", READ_TIMEOUT)
        .await;
    let mut reader = KafkaReader::new(&test_support::kafka_brokers(), &topic).await;
    let records = read_until_distinct(&mut reader, 5, READ_TIMEOUT).await;
    assert!(records.iter().all(|r| r.key.as_deref() == Some("early")));
    let ready = reqwest::get(relay.url("/ready")).await.expect("/ready");
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn the_lag_probe_reports_lag_and_wal_status_while_the_source_cannot_stream() {
    let (db, client) = outbox_database("relay_probe").await;
    let source = SourceSpec::new("probed", &db);
    // No broker listens there: the session fails before streaming, every time.
    let dead_broker = format!("127.0.0.1:{}", free_port());
    let relay = Relay::start_with(
        &[&source],
        &[
            ("APP__KAFKA__BROKERS", dead_broker),
            ("APP__KAFKA__PRODUCE_TIMEOUT", "500ms".into()),
            ("APP__REPLICATION__LAG_PROBE_INTERVAL", "200ms".into()),
        ],
    )
    .await;
    relay
        .wait_for_state("probed", "reconnecting", READ_TIMEOUT)
        .await;
    wait_until(READ_TIMEOUT, "the slot", || async {
        slot_exists(&client, &source.slot).await.then_some(())
    })
    .await;

    // Outbox events that cannot be published: the slot retains their WAL.
    let before = current_wal_lsn(&client).await;
    insert_events(&client, "rt_probe", "k", 1, 5_000).await;
    let written = u64::try_from(current_wal_lsn(&client).await - before).unwrap();
    assert!(written > 500_000, "{written} bytes of WAL");
    let status = wait_until(READ_TIMEOUT, "the probe to see the lag", || async {
        relay
            .source_status("probed")
            .await
            .filter(|s| s["slot_lag_bytes"].as_u64() >= Some(written))
    })
    .await;
    assert_ne!(status["state"], "streaming");
    assert_eq!(status["wal_status"], "reserved");
    // The test cluster caps slots at max_slot_wal_keep_size = 1GB (counted
    // to the end of the current WAL segment).
    let safe = status["safe_wal_size_bytes"]
        .as_i64()
        .expect("safe_wal_size");
    let gib: i64 = 1 << 30;
    assert!(
        (gib - (64 << 20)..gib + (64 << 20)).contains(&safe),
        "safe_wal_size {safe}"
    );

    let metrics = relay.get_text("/metrics").await.expect("metrics");
    assert!(
        metric(&metrics, "relay_slot_lag_bytes", "probed") >= Some(written as f64),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"relay_slot_wal_status{source="probed",wal_status="reserved"} 1"#),
        "{metrics}"
    );
    assert!(metric(&metrics, "relay_slot_safe_wal_size_bytes", "probed").is_some());
    // On a connection of its own.
    let probes: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'outbox-relay/probed/probe'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert_eq!(probes, 1);
}

#[tokio::test]
async fn a_relay_that_makes_a_first_slot_after_writes_says_events_were_missed() {
    let (db, client) = outbox_database("relay_slot_late").await;
    let source = SourceSpec::new("late", &db);
    {
        // A backend's statistics reach pg_stat_user_tables when it exits.
        let writer = db.client().await;
        insert_events(&writer, &unique("rt_late"), "k", 1, 3).await;
    }
    wait_until(READ_TIMEOUT, "the inserts in the statistics", || async {
        let inserts: i64 = client
            .query_one(
                "SELECT coalesce(max(n_tup_ins), 0) FROM pg_stat_user_tables WHERE relname = 'outbox'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (inserts >= 3).then_some(())
    })
    .await;
    let relay = Relay::start(&[&source]).await;
    relay
        .wait_for_state("late", "streaming", READ_TIMEOUT)
        .await;
    wait_until(READ_TIMEOUT, "the missed-events error", || async {
        relay
            .process
            .log_contains("the outbox already had inserts")
            .then_some(())
    })
    .await;
}

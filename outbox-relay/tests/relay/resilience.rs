//! Failures: kill -9 mid-stream, a cut replication connection, the broker
//! going away, WAL retention while the outbox is idle, one source down
//! among several, and what a server restart after a graceful stop resumes
//! from.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use test_support::{KafkaNode, KafkaReader, free_port, wait_until};

use crate::helpers::{
    Relay, SourceSpec, confirmed_flush_lsn, current_wal_lsn, duplicates, insert_events,
    outbox_database, read_until_distinct, slot_lag, unique,
};

#[tokio::test]
async fn kill_9_mid_stream_loses_nothing_and_repeats_only_the_unconfirmed_tail() {
    const TRANSACTIONS: i64 = 500;
    const PER_TRANSACTION: i64 = 100;
    const TOTAL: i64 = TRANSACTIONS * PER_TRANSACTION;
    let (db, client) = outbox_database("relay_kill").await;
    let source = SourceSpec::new("kill", &db);
    let topic = unique("rt_kill");
    let mut relay = Relay::start(&[&source]).await;
    relay.wait_until_streaming("kill").await;

    // The writer notes the WAL position right after each commit: at or
    // past that transaction's end LSN.
    let writer = {
        let (db, topic) = (db.clone(), topic.clone());
        tokio::spawn(async move {
            let client = db.client().await;
            let mut commit_positions = Vec::new();
            for t in 0..TRANSACTIONS {
                let key = format!("key-{}", t % 10);
                insert_events(&client, &topic, &key, t * PER_TRANSACTION, PER_TRANSACTION).await;
                commit_positions.push(current_wal_lsn(&client).await);
            }
            commit_positions
        })
    };

    let published_at_kill = wait_until(
        Duration::from_secs(60),
        "10,000 events published",
        || async {
            let n = relay.events_published("kill").await;
            (n >= 10_000).then_some(n)
        },
    )
    .await;
    relay.process.kill_hard();
    let confirmed_at_kill = confirmed_flush_lsn(&client, &source.slot).await;
    let commit_positions = writer.await.expect("writer");
    assert!(
        (published_at_kill as i64) < TOTAL,
        "the relay was killed mid-stream ({published_at_kill} of {TOTAL} published)"
    );

    relay.restart().await;
    let mut reader = KafkaReader::new(&test_support::kafka_brokers(), &topic).await;
    let records = read_until_distinct(&mut reader, TOTAL as usize, Duration::from_secs(120)).await;

    let repeated = duplicates(&records);
    let extra: usize = repeated.values().map(|n| n - 1).sum();
    assert_eq!(records.len(), TOTAL as usize + extra);
    // Every repeated event belongs to a transaction not yet confirmed at the kill.
    let mut repeated_transactions = HashSet::new();
    for record in &records {
        if !repeated.contains_key(record.header("event_id").unwrap_or_default()) {
            continue;
        }
        let seq = record.envelope().payload["seq"].as_i64().expect("seq");
        let txn = (seq / PER_TRANSACTION) as usize;
        repeated_transactions.insert(txn);
        assert!(
            commit_positions[txn] > confirmed_at_kill,
            "event {seq} of a transaction confirmed before the kill was published again"
        );
    }
    println!(
        "kill -9 after {published_at_kill} of {TOTAL} events: all {TOTAL} in Kafka, \
         {extra} duplicates from {} unconfirmed transactions",
        repeated_transactions.len()
    );
}

#[tokio::test]
async fn a_cut_replication_connection_resumes_from_the_slot() {
    let (db, client) = outbox_database("relay_cut").await;
    let source = SourceSpec::new("cut", &db);
    let topic = unique("rt_cut");
    let relay = Relay::start(&[&source]).await;
    relay.wait_until_streaming("cut").await;
    for t in 0..10 {
        insert_events(&client, &topic, "k", t * 100, 100).await;
    }
    client
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
            &[&source.slot],
        )
        .await
        .expect("terminate walsender");
    for t in 10..20 {
        insert_events(&client, &topic, "k", t * 100, 100).await;
    }
    let mut reader = KafkaReader::new(&test_support::kafka_brokers(), &topic).await;
    let records = read_until_distinct(&mut reader, 2_000, Duration::from_secs(60)).await;
    let mut first_seen = Vec::new();
    let mut seen = HashSet::new();
    for record in &records {
        let seq = record.envelope().payload["seq"].as_i64().expect("seq");
        if seen.insert(seq) {
            first_seen.push(seq);
        }
    }
    assert_eq!(
        first_seen,
        (0..2_000).collect::<Vec<_>>(),
        "order survives the reconnect"
    );
    let status = relay.wait_until_streaming("cut").await;
    assert!(status["reconnects"].as_u64() >= Some(1), "{status}");
}

#[tokio::test]
async fn a_broker_outage_of_10_seconds_loses_nothing() {
    // A broker of this test's own, to take away and bring back.
    let mut broker = KafkaNode::start().await;
    let (db, _client) = outbox_database("relay_outage").await;
    let source = SourceSpec::new("outage", &db);
    let topic = unique("rt_outage");
    let relay = Relay::start_with(&[&source], &[("APP__KAFKA__BROKERS", broker.brokers())]).await;
    relay.wait_until_streaming("outage").await;

    // A steady trickle of events across the outage: 30 transactions of 10.
    let writer = {
        let (db, topic) = (db.clone(), topic.clone());
        tokio::spawn(async move {
            let client = db.client().await;
            for t in 0..30 {
                insert_events(&client, &topic, &format!("key-{}", t % 3), t * 10, 10).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    wait_until(
        Duration::from_secs(30),
        "events before the outage",
        || async { (relay.events_published("outage").await >= 20).then_some(()) },
    )
    .await;
    broker.stop();
    let down_since = Instant::now();
    let status = relay
        .wait_for_state("outage", "reconnecting", Duration::from_secs(20))
        .await;
    assert!(status["last_error"].is_string(), "{status}");
    // The outage itself: the broker stays away for 10 seconds.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down_since.elapsed())).await;
    broker.resume().await;
    writer.await.expect("writer");

    relay
        .wait_for_state("outage", "streaming", Duration::from_secs(30))
        .await;
    let mut reader = KafkaReader::new(&broker.brokers(), &topic).await;
    let records = read_until_distinct(&mut reader, 300, Duration::from_secs(60)).await;
    let seqs: HashSet<i64> = records
        .iter()
        .map(|r| r.envelope().payload["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, (0..300).collect::<HashSet<_>>());
    println!(
        "broker outage: 300 events, {} records read ({} duplicates)",
        records.len(),
        records.len() - 300
    );
    drop(relay);
    broker.stop();
}

#[tokio::test]
async fn heavy_writes_to_other_tables_do_not_make_an_idle_slot_retain_wal() {
    let (db, client) = outbox_database("relay_idle").await;
    let source = SourceSpec::new("idle", &db);
    let relay = Relay::start(&[&source]).await;
    relay.wait_until_streaming("idle").await;

    // About 100 MB of WAL in rows the publication does not cover.
    let start = current_wal_lsn(&client).await;
    let mut max_lag = 0;
    for _ in 0..20 {
        client
            .batch_execute(
                "INSERT INTO other (body) SELECT repeat(md5(i::text), 8) FROM generate_series(1, 15000) i",
            )
            .await
            .expect("heavy insert");
        max_lag = max_lag.max(slot_lag(&client, &source.slot).await.expect("slot"));
    }
    let written = current_wal_lsn(&client).await - start;
    let settled = wait_until(Duration::from_secs(30), "the slot to catch up", || async {
        slot_lag(&client, &source.slot)
            .await
            .filter(|lag| *lag < 2 * 1024 * 1024)
    })
    .await;
    println!(
        "idle outbox: {} MB of other WAL, slot lag at most {} MB while writing, {} kB after",
        written / 1_000_000,
        max_lag / 1_000_000,
        settled / 1000
    );
    assert!(
        max_lag < written / 2,
        "slot lag {max_lag} grew with the {written} bytes written"
    );

    // Idle and unobserved, the session's catalog connection sends no
    // queries (the lag probe reads the slot on a connection of its own).
    let query_start = || async {
        client
            .query_one(
                "SELECT max(query_start)::text FROM pg_stat_activity WHERE application_name = $1",
                &[&"outbox-relay/idle/catalog"],
            )
            .await
            .expect("pg_stat_activity")
            .get::<_, Option<String>>(0)
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = query_start().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(before.is_some(), "catalog connection is open");
    assert_eq!(before, query_start().await, "no queries while idle");
}

#[tokio::test]
async fn one_source_down_does_not_stall_the_others() {
    let (db, client) = outbox_database("relay_multi").await;
    let (denied_db, denied_client) = outbox_database("relay_denied").await;
    // A role that may replicate but not create the (here missing) publication.
    let role = unique("relay_role");
    denied_client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN REPLICATION; DROP PUBLICATION outbox_relay"
        ))
        .await
        .expect("role");

    let up = SourceSpec::new("up", &db);
    let down = SourceSpec {
        name: "down".into(),
        url: format!("postgres://postgres@127.0.0.1:{}/nowhere", free_port()),
        slot: unique("relay_test"),
    };
    let denied = SourceSpec {
        name: "denied".into(),
        url: with_user(&denied_db.url, &role),
        slot: unique("relay_test"),
    };
    let topic = unique("rt_multi");
    let relay = Relay::start(&[&up, &down, &denied]).await;
    relay.wait_until_streaming("up").await;
    insert_events(&client, &topic, "k", 0, 500).await;

    let mut reader = KafkaReader::new(&test_support::kafka_brokers(), &topic).await;
    read_until_distinct(&mut reader, 500, Duration::from_secs(60)).await;

    let down_status = relay
        .wait_for_state("down", "reconnecting", Duration::from_secs(20))
        .await;
    assert!(
        down_status["last_error"].as_str().is_some(),
        "{down_status}"
    );
    let denied_status = relay
        .wait_for_state("denied", "error", Duration::from_secs(20))
        .await;
    let error = denied_status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("publication"), "{error}");
    let metrics = relay.get_text("/metrics").await.expect("metrics");
    assert!(metrics.contains(r#"relay_source_state{source="denied",state="error"} 1"#));
    assert!(metrics.contains(r#"relay_source_state{source="up",state="streaming"} 1"#));

    drop(relay);
    let _ = client
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await;
}

/// `url` with its user (and password) replaced by `user`.
fn with_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("postgres:// URL");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

/// The slot's confirmed position as PostgreSQL last wrote it to disk
/// (`pg_replslot/<slot>/state`), i.e. where the slot resumes after a server
/// restart. Layout of PostgreSQL 13 to 17: a 16-byte header (magic
/// 0x1051CA1, checksum, version, length), then the slot's name (64 bytes),
/// database, persistency, xmin, catalog_xmin, restart_lsn, invalidated_at
/// and confirmed_flush at byte 112.
async fn saved_confirmed_flush_lsn(client: &tokio_postgres::Client, slot: &str) -> i64 {
    let state: Vec<u8> = client
        .query_one(
            "SELECT pg_read_binary_file('pg_replslot/' || $1 || '/state')",
            &[&slot],
        )
        .await
        .expect("slot state file")
        .get(0);
    let word = |at: usize| u64::from_le_bytes(state[at..at + 8].try_into().expect("8 bytes"));
    assert_eq!(
        u32::from_le_bytes(state[0..4].try_into().expect("4 bytes")),
        0x1051CA1,
        "a replication slot state file"
    );
    i64::try_from(word(112)).expect("an LSN")
}

#[tokio::test]
async fn a_graceful_stop_saves_the_slot_position_so_a_server_restart_repeats_nothing() {
    let (db, client) = outbox_database("relay_save").await;
    let source = SourceSpec::new("save", &db);
    let topic = unique("rt_save");
    let mut relay = Relay::start(&[&source]).await;
    relay.wait_until_streaming("save").await;
    for t in 0..20 {
        insert_events(&client, &topic, "saved", t * 10, 10).await;
    }
    let written = current_wal_lsn(&client).await;
    wait_until(
        Duration::from_secs(30),
        "every transaction confirmed",
        || async { (confirmed_flush_lsn(&client, &source.slot).await >= written).then_some(()) },
    )
    .await;

    let status = relay.process.stop();
    assert!(status.success(), "relay exited with {status}");
    assert!(relay.process.log_contains("slot position saved"));
    // What a server restart would resume from: the shutdown checkpoint
    // writes what a CHECKPOINT writes now.
    client
        .batch_execute("CHECKPOINT")
        .await
        .expect("checkpoint");
    let confirmed = confirmed_flush_lsn(&client, &source.slot).await;
    let saved = saved_confirmed_flush_lsn(&client, &source.slot).await;
    assert!(confirmed >= written);
    assert_eq!(
        saved,
        confirmed,
        "the slot would resume {} bytes of WAL back after a server restart",
        confirmed - saved
    );
}

//! Shared set-up: outbox databases, the relay process, event inserts and
//! reading back from Kafka.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use test_support::{
    ChildProcess, KafkaRecord, ReplicationSlots, TestDatabase, bin_path, free_port, wait_until,
};
use tokio_postgres::Client;

const OUTBOX_MIGRATION: &str =
    include_str!("../../../db/migrations/runtime/outbox/2026-11-25-000001_outbox/up.sql");

/// A short random suffix for slot, topic and role names (cluster-global).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A fresh database with the outbox table (as the services create it) and
/// an unrelated table `other`.
pub async fn outbox_database(prefix: &str) -> (TestDatabase, Client) {
    let db = test_support::fresh_database(prefix).await;
    let client = db.client().await;
    client
        .batch_execute(OUTBOX_MIGRATION)
        .await
        .expect("outbox migration");
    client
        .batch_execute("CREATE TABLE other (id bigserial PRIMARY KEY, body text NOT NULL)")
        .await
        .expect("other table");
    (db, client)
}

/// One source of a relay under test.
pub struct SourceSpec {
    pub name: String,
    pub url: String,
    pub slot: String,
}

impl SourceSpec {
    pub fn new(name: &str, db: &TestDatabase) -> Self {
        Self {
            name: name.to_owned(),
            url: db.url.clone(),
            slot: unique("relay_test"),
        }
    }
}

/// The relay's environment for `sources`, HTTP on `port`, plus `extra`.
pub fn relay_env(
    sources: &[&SourceSpec],
    port: u16,
    extra: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("APP__HTTP__PORT".into(), port.to_string()),
        ("APP__KAFKA__BROKERS".into(), test_support::kafka_brokers()),
        ("APP__KAFKA__TOPICS".into(), String::new()),
        ("APP__KAFKA__PRODUCE_TIMEOUT".into(), "3s".into()),
        ("APP__REPLICATION__BACKOFF_MAX".into(), "2s".into()),
        ("APP__REPLICATION__STATUS_INTERVAL".into(), "200ms".into()),
        ("RUST_LOG".into(), "info,rskafka=error".into()),
        ("LOG_FORMAT".into(), "pretty".into()),
    ];
    for source in sources {
        let key = source.name.to_uppercase();
        env.push((format!("APP__SOURCES__{key}__URL"), source.url.clone()));
        env.push((format!("APP__SOURCES__{key}__SLOT"), source.slot.clone()));
    }
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    env
}

/// A finished `outbox-relay create-slots`: whether it succeeded, and its
/// output.
pub struct CreateSlots {
    pub success: bool,
    pub output: String,
}

impl CreateSlots {
    pub fn run(env: Vec<(String, String)>, args: &[&str]) -> CreateSlots {
        let mut process = ChildProcess::spawn_with_args(
            "create-slots",
            bin_path("outbox-relay"),
            std::iter::once("create-slots").chain(args.iter().copied()),
            env,
        );
        let status = process.wait();
        CreateSlots {
            success: status.success(),
            output: process.logs().join("\n"),
        }
    }
}

/// The relay binary as a child process. Dropping it kills the process and
/// drops the test's replication slots, so no slot is left retaining WAL.
pub struct Relay {
    pub process: ChildProcess,
    pub port: u16,
    env: Vec<(String, String)>,
    /// Dropped after the process is killed (`Drop` below runs first).
    _slots: ReplicationSlots,
    http: reqwest::Client,
}

impl Relay {
    pub async fn start(sources: &[&SourceSpec]) -> Relay {
        Self::start_with(sources, &[]).await
    }

    /// Starts the relay with `extra` environment settings and waits until
    /// its HTTP port answers.
    pub async fn start_with(sources: &[&SourceSpec], extra: &[(&str, String)]) -> Relay {
        let port = free_port();
        let env = relay_env(sources, port, extra);
        let process = ChildProcess::spawn("relay", bin_path("outbox-relay"), env.clone());
        let relay = Relay {
            process,
            port,
            env,
            _slots: ReplicationSlots(
                sources
                    .iter()
                    .map(|s| (s.url.clone(), s.slot.clone()))
                    .collect(),
            ),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("http client"),
        };
        test_support::wait_for_http_ok(&relay.url("/health"), Duration::from_secs(20)).await;
        relay
    }

    /// `outbox-relay create-slots <args>` with this relay's configuration.
    pub fn create_slots(&self, args: &[&str]) -> CreateSlots {
        CreateSlots::run(self.env.clone(), args)
    }

    /// Kills the relay (SIGKILL, if still running) and starts it again with
    /// the same configuration, slots included.
    pub async fn restart(&mut self) {
        self.process.kill_hard();
        self.process = ChildProcess::spawn("relay", bin_path("outbox-relay"), self.env.clone());
        test_support::wait_for_http_ok(&self.url("/health"), Duration::from_secs(20)).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn get_text(&self, path: &str) -> Option<String> {
        let response = self.http.get(self.url(path)).send().await.ok()?;
        response.text().await.ok()
    }

    /// `/api/status` of one source.
    pub async fn source_status(&self, source: &str) -> Option<Value> {
        let status: Value = serde_json::from_str(&self.get_text("/api/status").await?).ok()?;
        status["sources"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == source)
            .cloned()
    }

    /// Waits until `source` streams (20 s at most); returns its status.
    pub async fn wait_until_streaming(&self, source: &str) -> Value {
        self.wait_for_state(source, "streaming", Duration::from_secs(20))
            .await
    }

    /// Waits until `source` reports `state`; returns its status.
    pub async fn wait_for_state(&self, source: &str, state: &str, timeout: Duration) -> Value {
        wait_until(
            timeout,
            &format!("source {source} to be {state}"),
            || async {
                self.source_status(source)
                    .await
                    .filter(|s| s["state"] == state)
            },
        )
        .await
    }

    pub async fn events_published(&self, source: &str) -> u64 {
        self.source_status(source)
            .await
            .and_then(|s| s["events_published"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.process.kill_hard();
    }
}

/// Inserts one event for `key` whose payload is `{"blob": ..}` of `md5s`
/// md5 texts (32 bytes each, random enough to stay large when TOASTed);
/// returns its id.
pub async fn insert_blob(
    client: &Client,
    topic: &str,
    key: &str,
    event_type: &str,
    trace_id: &str,
    md5s: i32,
) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO outbox VALUES ($1, $2, $3, $4, 1, $5, now(),
                 jsonb_build_object('blob', (SELECT string_agg(md5(i::text), '')
                                             FROM generate_series(1, $6::int) i)))",
            &[&id, &topic, &key, &event_type, &trace_id, &md5s],
        )
        .await
        .expect("insert a blob event");
    id
}

/// Inserts `count` events for `key` into the outbox in one transaction;
/// payload `{"key": key, "seq": first..}`.
pub async fn insert_events(client: &Client, topic: &str, key: &str, first: i64, count: i64) {
    client
        .execute(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, schema_version, \
                                 trace_id, occurred_at, payload) \
             SELECT gen_random_uuid(), $1, $2, 'TestEvent', 1, 'trace-' || s, now(), \
                    jsonb_build_object('key', $2::text, 'seq', s) \
             FROM generate_series($3::bigint, $3::bigint + $4::bigint - 1) AS s",
            &[&topic, &key, &first, &count],
        )
        .await
        .expect("insert events");
}

/// Polls `reader` until `expected` distinct event ids were seen; returns
/// every record read (duplicates included).
pub async fn read_until_distinct(
    reader: &mut test_support::KafkaReader,
    expected: usize,
    timeout: Duration,
) -> Vec<KafkaRecord> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut all: Vec<KafkaRecord> = Vec::new();
    let mut distinct = std::collections::HashSet::new();
    loop {
        for record in reader.poll().await {
            distinct.insert(record.header("event_id").unwrap_or_default().to_owned());
            all.push(record);
        }
        if distinct.len() >= expected {
            return all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?}: {} of {expected} events in Kafka",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Number of records per event id that occur more than once.
pub fn duplicates(records: &[KafkaRecord]) -> HashMap<String, usize> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for record in records {
        *counts
            .entry(record.header("event_id").unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    counts.retain(|_, n| *n > 1);
    counts
}

/// The server's WAL position now, in bytes.
pub async fn current_wal_lsn(client: &Client) -> i64 {
    client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
        .await
        .expect("pg_current_wal_lsn")
        .get(0)
}

/// The slot's confirmed position, in bytes.
pub async fn confirmed_flush_lsn(client: &Client, slot: &str) -> i64 {
    client
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot exists")
        .get(0)
}

/// Bytes between the server's WAL end and the slot's confirmed position.
pub async fn slot_lag(client: &Client, slot: &str) -> Option<i64> {
    client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ok()
        .flatten()
        .and_then(|row| row.get::<_, Option<i64>>(0))
}

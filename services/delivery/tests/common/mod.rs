//! spawn_app and event helpers for the delivery service's tests: the real
//! app on port 0 against a fresh database, consuming its own test topic
//! (unique per test, so tests sharing the broker never see each other's
//! events), fed with events produced straight to Kafka.

#![allow(dead_code)]

use std::time::Duration;

use commerce_common::{
    config::{DatabaseConfig, HttpConfig, KafkaConfig, Secret},
    consumer::ConsumerConfig,
    events::{Envelope, Event, SCHEMA_VERSION},
};
use delivery_service::{
    config::{AuthConfig, Settings, WindowsConfig},
    startup::Application,
};
use test_support::{
    TestDatabase, ensure_topics, fresh_database, jwt_keys, kafka_brokers, produce_envelope,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(30);

pub struct TestApp {
    pub address: String,
    pub database: TestDatabase,
    pub topic: String,
    pub partitions: i32,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn settings(
    database: &TestDatabase,
    topic: &str,
    instance: &str,
    windows: WindowsConfig,
) -> Settings {
    Settings {
        http: HttpConfig::with_port(0),
        database: DatabaseConfig::with_url(&database.url),
        kafka: KafkaConfig {
            brokers: kafka_brokers(),
        },
        auth: AuthConfig {
            public_key_pem: Some(Secret::new(jwt_keys().public_pem.clone())),
            public_key_file: None,
        },
        consumer: ConsumerConfig {
            topics: vec![topic.into()],
            instance_id: instance.into(),
            lease_ttl: Duration::from_millis(1500),
            ..ConsumerConfig::default()
        },
        windows,
    }
}

/// A fresh topic with `partitions` partitions.
pub async fn fresh_topic(partitions: i32) -> String {
    let topic = format!("delivery-test-{}", Uuid::new_v4().simple());
    ensure_topics(&kafka_brokers(), &[&topic], partitions).await;
    topic
}

/// One window a day, tomorrow only, with `capacity` places.
pub fn one_window(capacity: i32) -> WindowsConfig {
    WindowsConfig {
        per_day: 1,
        first_start_hour: 10,
        length_minutes: 120,
        capacity,
        horizon_days: 1,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(2, WindowsConfig::default()).await
}

pub async fn spawn_app_with(partitions: i32, windows: WindowsConfig) -> TestApp {
    let database = fresh_database("delivery").await;
    let topic = fresh_topic(partitions).await;
    let app = Application::build(settings(&database, &topic, "test", windows))
        .await
        .expect("building the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        database,
        topic,
        partitions,
        client: reqwest::Client::new(),
        shutdown,
    }
}

pub fn envelope(event: &Event) -> Envelope {
    let (event_type, payload) = event.into_parts();
    Envelope {
        event_id: Uuid::now_v7(),
        event_type,
        aggregate_type: event.topic().into(),
        aggregate_id: event.aggregate_id().to_string(),
        occurred_at: chrono::Utc::now(),
        schema_version: SCHEMA_VERSION,
        trace_id: format!("test-{}", Uuid::new_v4().simple()),
        payload,
    }
}

/// The partition a key lands in (any stable choice: events of one order
/// must stay in one partition).
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let hash = key
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (hash % partitions as u32) as i32
}

impl TestApp {
    /// Produces `envelope` to this app's topic, keyed like the relay does.
    pub async fn send(&self, envelope: &Envelope) {
        let partition = partition_of(&envelope.aggregate_id, self.partitions);
        produce_envelope(
            &kafka_brokers(),
            &self.topic,
            partition,
            &envelope.aggregate_id,
            envelope,
        )
        .await;
    }

    pub async fn publish(&self, event: &Event) -> Envelope {
        let envelope = envelope(event);
        self.send(&envelope).await;
        envelope
    }

    pub async fn query_i64(&self, sql: &str) -> i64 {
        query_i64(&self.database, sql).await
    }

    pub fn get(&self, path: &str, user: Option<Uuid>) -> reqwest::RequestBuilder {
        let request = self.client.get(format!("{}{path}", self.address));
        match user {
            Some(user) => request.bearer_auth(test_support::mint_token(user)),
            None => request,
        }
    }

    pub fn post(&self, path: &str, user: Option<Uuid>) -> reqwest::RequestBuilder {
        let request = self.client.post(format!("{}{path}", self.address));
        match user {
            Some(user) => request.bearer_auth(test_support::mint_token(user)),
            None => request,
        }
    }
}

pub async fn query_i64(database: &TestDatabase, sql: &str) -> i64 {
    database
        .client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Waits until `sql` (one bigint) yields `expected`.
pub async fn wait_for_value(database: &TestDatabase, sql: &str, expected: i64) {
    test_support::wait_until(WAIT, &format!("{sql} = {expected}"), || async {
        (query_i64(database, sql).await == expected).then_some(())
    })
    .await;
}

/// Waits until `sql` (one bigint) yields at least `minimum`.
pub async fn wait_for_value_at_least(database: &TestDatabase, sql: &str, minimum: i64) {
    test_support::wait_until(WAIT, &format!("{sql} >= {minimum}"), || async {
        (query_i64(database, sql).await >= minimum).then_some(())
    })
    .await;
}

/// Like [`query_i64`], but `None` while the query fails (tables not migrated yet).
pub async fn try_query_i64(database: &TestDatabase, sql: &str) -> Option<i64> {
    database
        .client()
        .await
        .query_one(sql, &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

/// The outbox-relay binary streaming one test database's outbox to Kafka,
/// through its own replication slot (dropped again afterwards: a forgotten
/// slot pins WAL forever).
pub struct Relay {
    process: test_support::ChildProcess,
    url: String,
    slot: String,
}

impl Relay {
    pub async fn start(database: &TestDatabase) -> Relay {
        let port = test_support::free_port();
        let slot = format!(
            "delivery_test_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let env = vec![
            ("APP__HTTP__PORT".to_owned(), port.to_string()),
            ("APP__KAFKA__BROKERS".to_owned(), kafka_brokers()),
            (
                "APP__REPLICATION__STATUS_INTERVAL_MS".to_owned(),
                "200".to_owned(),
            ),
            (
                "APP__SOURCES__DELIVERY__URL".to_owned(),
                database.url.clone(),
            ),
            ("APP__SOURCES__DELIVERY__SLOT".to_owned(), slot.clone()),
            ("RUST_LOG".to_owned(), "info,rskafka=error".to_owned()),
        ];
        let process = test_support::ChildProcess::spawn(
            "outbox-relay",
            test_support::bin_path("outbox-relay"),
            env,
        );
        let http = reqwest::Client::new();
        let status_url = format!("http://127.0.0.1:{port}/api/status");
        test_support::wait_until(WAIT, "the relay to stream", || async {
            let status: serde_json::Value =
                http.get(&status_url).send().await.ok()?.json().await.ok()?;
            let sources = status["sources"].as_array()?;
            sources
                .iter()
                .all(|s| s["state"] == "streaming")
                .then_some(())
        })
        .await;
        Relay {
            process,
            url: database.url.clone(),
            slot,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.process.kill_hard();
        let (url, slot) = (self.url.clone(), self.slot.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(connection);
                for _ in 0..100 {
                    let _ = client
                        .execute(
                            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                             WHERE slot_name = $1 AND NOT active",
                            &[&slot],
                        )
                        .await;
                    let gone = client
                        .query_opt(
                            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                            &[&slot],
                        )
                        .await
                        .map(|row| row.is_none())
                        .unwrap_or(true);
                    if gone {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        })
        .join();
    }
}

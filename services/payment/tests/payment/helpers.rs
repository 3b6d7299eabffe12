//! spawn_app and event helpers for the payment service's tests: the real
//! app on port 0 against a fresh database, consuming its own test topic
//! (unique per test, so tests sharing the broker never see each other's
//! events), fed with events produced straight to Kafka.

use std::time::Duration;

use commerce_common::{
    auth::PublicKeyConfig,
    config::{DatabaseConfig, HttpConfig, KafkaConfig, Secret},
    consumer::ConsumerConfig,
    events::{Envelope, Event},
};
use payment_service::{
    config::{Settings, WalletConfig},
    startup::Application,
};
use test_support::{
    TestDatabase, ensure_topics, envelope, fresh_database, jwt_keys, kafka_brokers, partition_of,
    produce_envelope,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(30);
pub const INITIAL_CREDIT: i64 = 1_000;

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

pub fn settings(database: &TestDatabase, topic: &str, instance: &str) -> Settings {
    Settings {
        http: HttpConfig::with_port(0),
        database: DatabaseConfig::with_url(&database.url),
        kafka: KafkaConfig {
            brokers: kafka_brokers(),
        },
        auth: PublicKeyConfig {
            public_key_pem: Some(Secret::new(jwt_keys().public_pem.clone())),
            public_key_file: None,
        },
        consumer: ConsumerConfig {
            topics: vec![topic.into()],
            instance_id: instance.into(),
            lease_ttl: Duration::from_millis(1500),
            ..ConsumerConfig::default()
        },
        wallet: WalletConfig {
            initial_credit_cents: INITIAL_CREDIT,
            ..WalletConfig::default()
        },
    }
}

/// A fresh topic with `partitions` partitions.
pub async fn fresh_topic(partitions: i32) -> String {
    let topic = format!("payment-test-{}", Uuid::new_v4().simple());
    ensure_topics(&kafka_brokers(), &[&topic], partitions).await;
    topic
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(2).await
}

pub async fn spawn_app_with(partitions: i32) -> TestApp {
    spawn_app_configured(partitions, |_| {}).await
}

/// [`spawn_app_with`], with the settings changed by `configure` first.
pub async fn spawn_app_configured(
    partitions: i32,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let database = fresh_database("payment").await;
    let topic = fresh_topic(partitions).await;
    let mut settings = settings(&database, &topic, "test");
    configure(&mut settings);
    let app = Application::build(settings)
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
        test_support::query_i64(&self.database, sql).await
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

/// Waits until `sql` (one bigint) yields `expected`.
pub async fn wait_for_value(database: &TestDatabase, sql: &str, expected: i64) {
    test_support::wait_for_value(database, sql, expected, WAIT).await;
}

pub fn address() -> commerce_common::events::Address {
    commerce_common::events::Address {
        name: "Ada Lovelace".into(),
        street: "1 Analytical Way".into(),
        city: "London".into(),
        postal_code: "N1 1AA".into(),
        country: "GB".into(),
    }
}

/// Waits until `sql` (one bigint) yields at least `minimum`.
pub async fn wait_for_value_at_least(database: &TestDatabase, sql: &str, minimum: i64) {
    test_support::wait_for_value_at_least(database, sql, minimum, WAIT).await;
}

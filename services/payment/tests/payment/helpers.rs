//! spawn_app and event helpers for the payment service's tests: the real
//! app on port 0 against a fresh database, consuming its own test topic
//! (unique per test, so tests sharing the broker never see each other's
//! events), fed with events produced straight to Kafka.

use std::time::Duration;

use commerce_common::{
    auth::PublicKeyConfig,
    config::{DatabaseConfig, HttpConfig, KafkaConfig, Secret},
    consumer::ConsumerConfig,
};
use payment_service::{
    config::{Settings, WalletConfig},
    startup::Application,
};
use test_support::{
    ConsumingApp, RunningApp, TestDatabase, fresh_database, jwt_keys, kafka_brokers,
};

pub const WAIT: Duration = Duration::from_secs(30);
pub const INITIAL_CREDIT: i64 = 1_000;

pub type TestApp = ConsumingApp;

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
    test_support::fresh_topic("payment-test", partitions).await
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
    TestApp::new(RunningApp::spawn(app), database, topic, partitions)
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

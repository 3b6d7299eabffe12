//! spawn_app and event helpers for the delivery service's tests: the real
//! app on port 0 against a fresh database, consuming its own test topic
//! (unique per test, so tests sharing the broker never see each other's
//! events), fed with events produced straight to Kafka.

use std::time::Duration;

use commerce_common::{
    auth::PublicKeyConfig,
    config::{DatabaseConfig, HttpConfig, KafkaConfig, Secret},
    consumer::ConsumerConfig,
};
use delivery_service::{
    config::{QuotasConfig, Settings, WindowsConfig},
    startup::Application,
};
use test_support::{
    ConsumingApp, RunningApp, TestDatabase, fresh_database, jwt_keys, kafka_brokers,
};

pub const WAIT: Duration = Duration::from_secs(30);

pub type TestApp = ConsumingApp;

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
        windows,
        quotas: QuotasConfig::default(),
    }
}

/// A fresh topic with `partitions` partitions.
pub async fn fresh_topic(partitions: i32) -> String {
    test_support::fresh_topic("delivery-test", partitions).await
}

/// One window a day, tomorrow only, with `capacity` places.
pub fn one_window(capacity: i32) -> WindowsConfig {
    WindowsConfig {
        per_day: 1,
        first_start_hour: 10,
        length: std::time::Duration::from_secs(2 * 3600),
        capacity,
        horizon: std::time::Duration::from_secs(86_400),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(2, WindowsConfig::default()).await
}

pub async fn spawn_app_with(partitions: i32, windows: WindowsConfig) -> TestApp {
    spawn_app_configured(partitions, windows, |_| {}).await
}

/// [`spawn_app_with`], with the settings changed by `configure` first.
pub async fn spawn_app_configured(
    partitions: i32,
    windows: WindowsConfig,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let database = fresh_database("delivery").await;
    let topic = fresh_topic(partitions).await;
    let mut settings = settings(&database, &topic, "test", windows);
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

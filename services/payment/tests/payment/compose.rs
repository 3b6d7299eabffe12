//! The `payment` container of compose.yaml, checked against this crate: its
//! environment loads with the real `Settings::load` (a misspelled key would
//! fail) and passes the checks every service container shares
//! (`Compose::assert_service_container`); the healthcheck path answers 200
//! on the real app. And docs/configuration.md
//! documents every key of `Settings` with its default.

use commerce_common::config::{DatabaseConfig, HttpConfig, KafkaConfig, Secret};
use payment_service::{config::Settings, startup::Application};
use test_support::{
    RunningApp,
    compose::{Compose, assert_health_answers},
    config_doc::assert_config_documented,
    fresh_database, jwt_keys, kafka_brokers,
};
use uuid::Uuid;

const SERVICE: &str = "payment";

#[tokio::test]
async fn the_compose_environment_configures_the_service() {
    let compose = Compose::load();
    let settings = compose.service(SERVICE).load_config(Settings::load);
    let health_path = compose.assert_service_container(SERVICE, &settings);
    assert!(
        settings.consumer.topics.is_empty(),
        "the container consumes the service's own topic list"
    );

    // The healthcheck path is a route of the real app and answers 200 once
    // the database is migrated. The consumer reads a topic of its own that
    // nobody writes, so it has nothing to do.
    let db = fresh_database("payment_compose").await;
    let mut local = settings;
    local.http = HttpConfig::with_port(0);
    local.database = DatabaseConfig {
        max_connections: 2,
        ..DatabaseConfig::with_url(&db.url)
    };
    local.kafka = KafkaConfig {
        brokers: kafka_brokers(),
    };
    local.consumer.topics = vec![format!("payment-compose-{}", Uuid::new_v4().simple())];
    local.auth.public_key_pem = Some(Secret::new(jwt_keys().public_pem.clone()));
    let app = RunningApp::spawn(Application::build(local).await.expect("the app builds"));
    assert_health_answers(app.port(), &health_path).await;
}

#[test]
fn every_setting_is_documented() {
    let defaults = serde_json::to_value(Settings::default()).unwrap();
    assert_config_documented("payment-service", &defaults, &["consumer.instance_id"]);
}

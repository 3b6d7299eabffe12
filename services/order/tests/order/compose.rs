//! The `order` container of compose.yaml, checked against this crate: its
//! environment loads with the real `Settings::load` (a misspelled key would
//! fail) and passes the checks every service container shares
//! (`Compose::assert_service_container`); the healthcheck path answers 200
//! on the real app. And docs/configuration.md
//! documents every key of `Settings` with its default.

use commerce_common::config::{DatabaseConfig, HttpConfig, Secret};
use order_service::{config::Settings, startup::Application};
use test_support::{
    RunningApp,
    compose::{Compose, assert_health_answers},
    config_doc::assert_config_documented,
    fresh_database, jwt_keys,
};

const SERVICE: &str = "order";

#[tokio::test]
async fn the_compose_environment_configures_the_service() {
    let compose = Compose::load();
    let settings = compose.service(SERVICE).load_config(Settings::load);
    assert!(settings.saga.enabled, "the container runs the saga");
    let health_path = compose.assert_service_container(SERVICE, &settings);

    // The healthcheck path is a route of the real app and answers 200 once
    // the database is migrated.
    let db = fresh_database("order_compose").await;
    let mut local = settings;
    local.http = HttpConfig::with_port(0);
    local.database = DatabaseConfig {
        max_connections: 2,
        ..DatabaseConfig::with_url(&db.url)
    };
    local.auth.public_key_pem = Some(Secret::new(jwt_keys().public_pem.clone()));
    local.saga.enabled = false;
    let app = RunningApp::spawn(Application::build(local).await.expect("the app builds"));
    assert_health_answers(app.port(), &health_path).await;
}

#[test]
fn every_setting_is_documented() {
    let defaults = serde_json::to_value(Settings::default()).unwrap();
    assert_config_documented("order-service", &defaults, &["consumer.instance_id"]);
}

//! The `outbox-relay` container of compose.yaml, checked against this crate:
//! its environment loads with the real `RelayConfig::load` (a misspelled key
//! would fail), streams the four service databases as the replication role
//! that docker-init.sh creates, publishes to the broker's internal listener
//! with the partition count and topics the `kafka-topics` job creates, and
//! its healthcheck path answers 200 on the real app. The `relay-slots`
//! one-shot creates the slots with the same configuration before any
//! service that writes an outbox can start. And docs/configuration.md
//! documents every key of `RelayConfig`.

use outbox_relay::{
    config::{RelayConfig, Secret, SourceConfig},
    startup::Application,
};
use test_support::{
    compose::{Compose, assert_health_answers},
    config_doc::assert_config_documented,
};

const SERVICE: &str = "outbox-relay";
const SLOTS_JOB: &str = "relay-slots";

/// Slots before writes (issue 19, item 4): `relay-slots` runs
/// `create-slots` with the relay's own configuration, needs only
/// PostgreSQL, and every container that writes to a database waits for it
/// to complete; the relay counts as healthy only once it streams (`/ready`).
#[test]
fn the_slots_job_runs_before_anything_writes_an_outbox_row() {
    let compose = Compose::load();
    let job = compose.service(SLOTS_JOB);
    assert_eq!(job.command(), ["create-slots"]);
    assert_eq!(job.restart().as_deref(), Some("no"));
    assert_eq!(job.build_arg("BIN").as_deref(), Some("outbox-relay"));
    assert_eq!(
        job.app_environment(),
        compose.service(SERVICE).app_environment(),
        "create-slots reads the relay's configuration"
    );
    let config = job.load_config(RelayConfig::load);
    assert_eq!(config.sources.len(), 4);
    assert_eq!(
        job.depends_on().into_iter().collect::<Vec<_>>(),
        [("postgres".to_owned(), "service_healthy".to_owned())],
        "the job needs only PostgreSQL (the services wait for it)"
    );

    let writers: Vec<_> = compose
        .services()
        .into_iter()
        .filter(|s| s.app_environment().contains_key("APP__DATABASE__URL"))
        .collect();
    let mut names: Vec<&str> = writers.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["delivery", "gateway", "order", "payment"]);
    for writer in &writers {
        assert_eq!(
            writer.depends_on().get(SLOTS_JOB).map(String::as_str),
            Some("service_completed_successfully"),
            "{} starts only after the slots exist",
            writer.name
        );
    }

    let (_, path) = compose
        .service(SERVICE)
        .healthcheck_http()
        .expect("the relay's healthcheck");
    assert_eq!(path, "/ready", "healthy = streaming every source");
}

#[tokio::test]
async fn the_compose_environment_configures_the_relay() {
    let compose = Compose::load();
    let container = compose.service(SERVICE);
    let config = container.load_config(RelayConfig::load);
    let health_path = container.assert_serves_published_http(&config.http.host, config.http.port);

    let sources: Vec<&str> = config.sources.keys().map(String::as_str).collect();
    assert_eq!(sources, ["delivery", "gateway", "order", "payment"]);
    let depends_on = container.depends_on();
    for (name, source) in &config.sources {
        // The service's migrations create the outbox and the publication.
        assert_eq!(
            depends_on.get(name.as_str()).map(String::as_str),
            Some("service_healthy"),
            "the relay starts after {name} migrated its database"
        );
        let url = source.url.expose();
        assert!(
            url.starts_with("postgres://outbox_relay:")
                && url.ends_with(&format!("@postgres:5432/commerce_{name}")),
            "source {name}: the replication role on commerce_{name}"
        );
        // The services' migrations create the publication `outbox_relay` on
        // `outbox`; the relay's defaults must name the same.
        assert_eq!(source.publication, "outbox_relay");
        assert_eq!(source.qualified_table(), ("public", "outbox"));
        assert!(source.slot.is_none(), "default slot outbox_relay_{name}");
    }

    assert_eq!(
        config.kafka.broker_list(),
        [compose.kafka_internal_address()]
    );
    let topics_job = compose.service("kafka-topics");
    assert_eq!(
        topics_job.environment()["KAFKA_PARTITIONS"],
        config.kafka.partitions.to_string(),
        "the relay creates missing topics with the partitions the topics job uses"
    );
    let script = topics_job.command().join("\n");
    let created = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("for topic in "))
        .and_then(|l| l.strip_suffix("; do"))
        .expect("the topics job loops over the topics");
    assert_eq!(
        created.split_whitespace().collect::<Vec<_>>(),
        config.kafka.topic_list(),
        "the topics job creates the topics the relay expects"
    );

    // The healthcheck path is a route of the real relay (no sources needed).
    let mut local = config;
    local.http.host = "127.0.0.1".into();
    local.http.port = 0;
    local.sources.clear();
    let app = Application::build(local).expect("the relay builds");
    let port = app.port();
    let server = tokio::spawn(app.run_until_stopped());
    assert_health_answers(port, &health_path).await;
    server.abort();
}

#[test]
fn every_setting_is_documented() {
    let mut defaults = RelayConfig::default();
    defaults.sources.insert(
        "<name>".into(),
        SourceConfig {
            url: Secret::new(""),
            slot: None,
            publication: "outbox_relay".into(),
            table: "outbox".into(),
        },
    );
    let defaults = serde_json::to_value(defaults).unwrap();
    assert_config_documented(SERVICE, &defaults, &["sources.<name>.url"]);
}

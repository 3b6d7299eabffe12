//! The `gateway` container of compose.yaml, checked against this crate: its
//! environment loads with the real `Config::load` (a misspelled key would
//! fail), names the port the healthcheck uses and the host publishes, the
//! `commerce_gateway` database, upstreams that are the other containers'
//! ports, and the key files the `keys` job writes; the healthcheck path
//! answers 200 on the real app. And docs/configuration.md documents every
//! key of `Config` with its default.

use commerce_common::config::{DatabaseConfig, HttpConfig, Secret};
use gateway::{config::Config, startup::Application};
use test_support::{
    compose::{Compose, assert_health_answers},
    config_doc::assert_config_documented,
    fresh_database, jwt_keys,
};

const SERVICE: &str = "gateway";

#[tokio::test]
async fn the_compose_environment_configures_the_gateway() {
    let compose = Compose::load();
    let container = compose.service(SERVICE);
    let config = container.load_config(Config::load);
    let health_path = container.assert_serves_published_http(&config.http.host, config.http.port);
    assert!(
        config
            .database
            .url
            .expose()
            .ends_with("@postgres:5432/commerce_gateway")
    );
    for (name, url) in config.upstreams.all() {
        let port = compose
            .service(name)
            .environment()
            .remove("APP__HTTP__PORT")
            .expect("the upstream sets its port");
        assert_eq!(url, format!("http://{name}:{port}"), "upstreams.{name}");
        assert!(
            container.depends_on().get(name).map(String::as_str) == Some("service_healthy"),
            "the gateway starts after {name} is healthy"
        );
    }
    let private = config
        .auth
        .private_key_file
        .clone()
        .expect("a private key file");
    compose.assert_reads_jwt_key(SERVICE, &private, "jwt.pem");
    let public = config
        .auth
        .public_key_file
        .clone()
        .expect("a public key file");
    compose.assert_reads_jwt_key(SERVICE, &public, "jwt.pub.pem");

    // The healthcheck path is a route of the real app and answers 200 once
    // the database is migrated.
    let db = fresh_database("gateway_compose").await;
    let mut local = config;
    local.http = HttpConfig::with_port(0);
    local.database = DatabaseConfig {
        max_connections: 2,
        ..DatabaseConfig::with_url(&db.url)
    };
    local.auth.private_key_file = None;
    local.auth.public_key_file = None;
    local.auth.private_key_pem = Some(Secret::new(jwt_keys().private_pem.clone()));
    let app = Application::build(local).await.expect("the gateway builds");
    let port = app.port();
    let server = tokio::spawn(app.run_until_stopped());
    assert_health_answers(port, &health_path).await;
    server.abort();
}

#[test]
fn every_setting_is_documented() {
    let defaults = serde_json::to_value(Config::default()).unwrap();
    assert_config_documented(SERVICE, &defaults, &[]);
}

/// The `keys` job's command (`generate-keys <dir> <public-dir>`) run with
/// the real binary: it writes a pair the gateway's own loader accepts, keeps
/// it on a second run, and the services' verifier accepts the tokens it
/// signs with the public copy, which is alone in its directory.
#[test]
fn the_keys_job_writes_a_key_pair_the_gateway_and_services_accept() {
    let compose = Compose::load();
    let mut command = compose.service("keys").command();
    let (_, container_dir) = compose.jwt_keys_location();
    let (_, container_public_dir) = compose.jwt_public_key_location();
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let public_dir = dir.path().join("public");
    for arg in &mut command {
        if *arg == container_dir {
            *arg = keys_dir.display().to_string();
        } else if *arg == container_public_dir {
            *arg = public_dir.display().to_string();
        }
    }
    let run = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(&command)
            .output()
            .expect("the gateway binary runs");
        assert!(
            output.status.success(),
            "gateway {command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let first = run();
    assert!(first.contains("generated"), "says what it did: {first}");
    let private = keys_dir.join("jwt.pem");
    let public = keys_dir.join("jwt.pub.pem");
    let private_pem = std::fs::read_to_string(&private).unwrap();
    let second = run();
    assert!(
        second.contains("kept"),
        "a second run keeps the pair: {second}"
    );
    assert_eq!(std::fs::read_to_string(&private).unwrap(), private_pem);

    let auth = gateway::config::AuthConfig {
        private_key_file: Some(private),
        public_key_file: Some(public.clone()),
        ..gateway::config::AuthConfig::default()
    };
    let (issuer, _) = gateway::auth::tokens::TokenIssuer::from_config(&auth)
        .expect("the gateway loads the pair (and checks they match)");
    let user = uuid::Uuid::new_v4();
    let token = issuer.issue(user).expect("a token").token;
    // The services mount the public directory: the public key, alone.
    assert!(!public_dir.join("jwt.pem").exists(), "no private key there");
    let services_key = std::fs::read(public_dir.join("jwt.pub.pem")).unwrap();
    assert_eq!(services_key, std::fs::read(&public).unwrap());
    let verifier = commerce_common::auth::JwtVerifier::from_public_pem(&services_key)
        .expect("the services load the public key");
    assert_eq!(verifier.verify(&token).expect("a valid token").sub, user);
}

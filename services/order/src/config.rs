//! The order service's configuration: defaults, then the `APP_CONFIG_FILE`
//! TOML file, then `APP__SECTION__KEY` environment variables.

use std::path::PathBuf;

use anyhow::Context;
use commerce_common::{
    auth::JwtVerifier,
    config::{DatabaseConfig, HttpConfig, KafkaConfig, Secret},
    consumer::ConsumerConfig,
};
use serde::{Deserialize, Serialize};

pub const SERVICE: &str = "order-service";
/// The consumer group: offsets, leases and the inbox are kept under it.
pub const CONSUMER_GROUP: &str = "order";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub auth: AuthConfig,
    /// Tuning of the consumer runtime; brokers, group and topics are filled
    /// in by the service.
    #[serde(default)]
    pub consumer: ConsumerConfig,
    #[serde(default)]
    pub saga: SagaConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: HttpConfig::with_port(8081),
            database: DatabaseConfig::with_url(
                "postgres://postgres@127.0.0.1:55432/commerce_order",
            ),
            kafka: KafkaConfig::default(),
            auth: AuthConfig::default(),
            consumer: ConsumerConfig::default(),
            saga: SagaConfig::default(),
        }
    }
}

impl Settings {
    pub fn load() -> anyhow::Result<Self> {
        commerce_common::config::load().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
    }
}

/// The gateway's Ed25519 public key, inline or from a file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub public_key_pem: Option<Secret>,
    pub public_key_file: Option<PathBuf>,
}

impl AuthConfig {
    pub fn verifier(&self) -> anyhow::Result<JwtVerifier> {
        let pem = match (&self.public_key_pem, &self.public_key_file) {
            (Some(pem), _) if !pem.expose().trim().is_empty() => pem.expose().as_bytes().to_vec(),
            (_, Some(path)) => std::fs::read(path)
                .with_context(|| format!("reading auth.public_key_file {}", path.display()))?,
            _ => anyhow::bail!("set auth.public_key_pem or auth.public_key_file"),
        };
        JwtVerifier::from_public_pem(&pem).context("auth: not an Ed25519 public key in PEM form")
    }
}

/// The order's side of the saga.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SagaConfig {
    /// Consume the `payments` and `deliveries` topics (off in tests that
    /// only exercise the HTTP API).
    pub enabled: bool,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

//! Typed configuration: defaults, then an optional TOML file, then the
//! environment (`APP__SECTION__KEY`). Validated once at start-up. The
//! loader, [`Secret`] and the [`duration`] format are `commerce_base`'s,
//! shared with the relay.

pub use commerce_base::config::{CONFIG_FILE_ENV, Secret, duration, load, load_renamed};
use serde::{Deserialize, Serialize};

/// Where a service listens for HTTP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub host: String,
    pub port: u16,
    /// HTTP worker threads; 0 (the default) means one per CPU core.
    #[serde(default)]
    pub workers: usize,
}

impl HttpConfig {
    pub fn with_port(port: u16) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
            workers: 0,
        }
    }

    /// The worker thread count to give actix (never 0).
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A service's own PostgreSQL database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/dbname`
    pub url: Secret,
    pub max_connections: usize,
}

impl DatabaseConfig {
    pub fn with_url(url: &str) -> Self {
        Self {
            url: Secret::new(url),
            max_connections: 10,
        }
    }
}

/// The Kafka cluster the service consumes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` bootstrap brokers.
    pub brokers: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
        }
    }
}

impl KafkaConfig {
    pub fn broker_list(&self) -> Vec<String> {
        commerce_base::config::split_list(&self.brokers)
    }
}

//! Typed configuration: defaults, then the TOML file named by
//! `APP_CONFIG_FILE`, then `APP__SECTION__KEY` environment variables, e.g.
//! `APP__SOURCES__ORDER__URL=postgres://...` adds the source `order`.
//! Validated once at start-up.

use std::collections::BTreeMap;
use std::time::Duration;

use commerce_base::config::split_list;
pub use commerce_base::config::{CONFIG_FILE_ENV, Secret};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration of source {source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
    #[error("configuration: {key} = {value} is invalid: {message}")]
    Setting {
        key: &'static str,
        value: String,
        message: &'static str,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    pub http: HttpConfig,
    pub kafka: KafkaConfig,
    pub replication: ReplicationConfig,
    /// Databases to stream, by name (the name labels metrics and the dashboard).
    pub sources: BTreeMap<String, SourceConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub host: String,
    pub port: u16,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8090,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` bootstrap brokers.
    pub brokers: String,
    /// Partitions of topics the relay creates.
    pub partitions: i32,
    /// Replicas of the topics the relay creates (dead-letter topics, a new
    /// aggregate type's topic): -1 takes the broker's
    /// `default.replication.factor`.
    pub replication_factor: i16,
    /// Comma-separated topics created at start-up when missing (others are
    /// created when their first event arrives).
    pub topics: String,
    /// Deadline of every broker request.
    pub produce_timeout_ms: u64,
    /// Records (per source) sent but not yet acknowledged before the relay
    /// stops reading WAL; bounds memory.
    pub max_in_flight_records: usize,
    /// Bytes of records (per source, by their approximate size) sent but
    /// not yet acknowledged: a record that would go past it waits, and
    /// reading WAL pauses, until acknowledgements make room. A record
    /// larger than this is sent alone, once nothing else is in flight.
    pub max_in_flight_bytes: usize,
    /// Largest record published; bigger rows go to the dead-letter topic.
    /// Keep it at or below the broker's `message.max.bytes`.
    pub max_record_bytes: usize,
    /// A partition that produced less than this long ago waits out the rest
    /// before its next batch, so that under load records travel in fewer,
    /// larger batches (less work per record for the broker and for every
    /// consumer's fetch). A quiet partition produces at once. 0 turns it off.
    pub busy_produce_interval_ms: u64,
    /// Produce attempts of a record the broker keeps answering with a
    /// retriable error (NOT_ENOUGH_REPLICAS, CORRUPT_MESSAGE, ...), with a
    /// growing pause between them (100 ms doubling, at most 10 s); after the
    /// last one the record goes to the dead-letter topic. Records the broker
    /// refuses for good go there at once. At least 1.
    pub max_produce_attempts: u32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            partitions: 3,
            topics: "users,orders,payments,deliveries".into(),
            produce_timeout_ms: 10_000,
            max_in_flight_records: 5_000,
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_record_bytes: 1_000_000,
            busy_produce_interval_ms: 5,
            max_produce_attempts: 10,
            replication_factor: -1,
        }
    }
}

impl KafkaConfig {
    pub fn broker_list(&self) -> Vec<String> {
        split_list(&self.brokers)
    }

    pub fn topic_list(&self) -> Vec<String> {
        split_list(&self.topics)
    }

    pub fn produce_timeout(&self) -> Duration {
        Duration::from_millis(self.produce_timeout_ms)
    }

    pub fn busy_produce_interval(&self) -> Duration {
        Duration::from_millis(self.busy_produce_interval_ms)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Interval of standby status updates.
    pub status_interval_ms: u64,
    /// A streaming session that received nothing from the server for this
    /// long (keepalives included) is presumed dead and restarted. After a
    /// third of it in silence, status updates ask the server for a reply,
    /// so a live server is never silent that long. Also the replication
    /// socket's `TCP_USER_TIMEOUT`.
    pub receive_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Deadline of IDENTIFY_SYSTEM, START_REPLICATION and of writing a
    /// status update; past it the command is cancelled and the session
    /// restarts.
    pub command_timeout_ms: u64,
    /// Deadline of CREATE_REPLICATION_SLOT, which waits until every
    /// transaction open in the cluster when it started has ended; past it
    /// the creation is cancelled and the error names the oldest open
    /// transaction's backend.
    pub create_slot_timeout_ms: u64,
    /// First and longest pause between reconnect attempts (jittered).
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// The reconnect backoff starts over only after a session streamed this
    /// long and made progress (confirmed a position past where it started,
    /// or had nothing to do); a failure that recurs sooner keeps backing off.
    pub healthy_session_ms: u64,
    /// How long shutdown waits for in-flight acknowledgements.
    pub shutdown_grace_ms: u64,
    /// How often the lag probe reads each source's slot (lag, `wal_status`,
    /// `safe_wal_size`) on a connection of its own, whatever the source's
    /// state.
    pub lag_probe_interval_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            status_interval_ms: 1_000,
            receive_timeout_ms: 60_000,
            connect_timeout_ms: 5_000,
            command_timeout_ms: 10_000,
            create_slot_timeout_ms: 30_000,
            backoff_initial_ms: 250,
            backoff_max_ms: 30_000,
            healthy_session_ms: 30_000,
            shutdown_grace_ms: 5_000,
            lag_probe_interval_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://user:password@host:port/dbname` (the role needs the
    /// REPLICATION attribute; creating the publication needs table ownership).
    pub url: Secret,
    /// Replication slot; defaults to `outbox_relay_<source name>`.
    #[serde(default)]
    pub slot: Option<String>,
    #[serde(default = "default_publication")]
    pub publication: String,
    /// `table` or `schema.table`; schema defaults to `public`.
    #[serde(default = "default_table")]
    pub table: String,
}

fn default_publication() -> String {
    "outbox_relay".into()
}

fn default_table() -> String {
    "outbox".into()
}

impl SourceConfig {
    pub fn slot_name(&self, source: &str) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| format!("outbox_relay_{source}"))
    }

    /// `(schema, table)` of the outbox table.
    pub fn qualified_table(&self) -> (&str, &str) {
        self.table
            .split_once('.')
            .unwrap_or(("public", &self.table))
    }
}

impl RelayConfig {
    /// Loads and validates the configuration.
    pub fn load() -> Result<Self, ConfigError> {
        let config: RelayConfig = commerce_base::config::load()?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, source) in &self.sources {
            let invalid = |message: String| ConfigError::Invalid {
                source_name: name.clone(),
                message,
            };
            let slot = source.slot_name(name);
            if slot.is_empty()
                || slot.len() > 63
                || !slot
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(invalid(format!(
                    "slot name {slot:?} must be 1-63 characters of a-z, 0-9 and _"
                )));
            }
            if !source.url.expose().starts_with("postgres") {
                return Err(invalid("url must be a postgres:// URL".into()));
            }
        }
        if self.kafka.broker_list().is_empty() {
            return Err(ConfigError::Invalid {
                source_name: "kafka".into(),
                message: "no brokers".into(),
            });
        }
        self.validate_settings()
    }

    /// Numbers that would make a source fail (or panic) only once it runs.
    fn validate_settings(&self) -> Result<(), ConfigError> {
        let (kafka, replication) = (&self.kafka, &self.replication);
        let above_zero: [(&'static str, u64); 8] = [
            ("kafka.produce_timeout_ms", kafka.produce_timeout_ms),
            (
                "replication.command_timeout_ms",
                replication.command_timeout_ms,
            ),
            (
                "replication.create_slot_timeout_ms",
                replication.create_slot_timeout_ms,
            ),
            (
                "replication.status_interval_ms",
                replication.status_interval_ms,
            ),
            (
                "replication.connect_timeout_ms",
                replication.connect_timeout_ms,
            ),
            (
                "replication.backoff_initial_ms",
                replication.backoff_initial_ms,
            ),
            (
                "replication.healthy_session_ms",
                replication.healthy_session_ms,
            ),
            (
                "replication.lag_probe_interval_ms",
                replication.lag_probe_interval_ms,
            ),
        ];
        for (key, value) in above_zero {
            if value == 0 {
                return Err(ConfigError::Setting {
                    key,
                    value: value.to_string(),
                    message: "must be above 0",
                });
            }
        }
        if kafka.partitions < 1 {
            return Err(ConfigError::Setting {
                key: "kafka.partitions",
                value: kafka.partitions.to_string(),
                message: "must be at least 1",
            });
        }
        if kafka.replication_factor == 0 || kafka.replication_factor < -1 {
            return Err(ConfigError::Setting {
                key: "kafka.replication_factor",
                value: kafka.replication_factor.to_string(),
                message: "must be at least 1, or -1 for the broker's default",
            });
        }
        if replication.receive_timeout_ms < 3 * replication.status_interval_ms {
            return Err(ConfigError::Setting {
                key: "replication.receive_timeout_ms",
                value: replication.receive_timeout_ms.to_string(),
                message: "must be at least 3 x replication.status_interval_ms (the stream's \
                          silence is checked, and a reply asked for, at each status update)",
            });
        }
        if replication.backoff_max_ms < replication.backoff_initial_ms {
            return Err(ConfigError::Setting {
                key: "replication.backoff_max_ms",
                value: replication.backoff_max_ms.to_string(),
                message: "must be at least replication.backoff_initial_ms",
            });
        }
        Ok(())
    }

    pub fn http_address(&self) -> String {
        format!("{}:{}", self.http.host, self.http.port)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

    #[test]
    fn sources_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP__SOURCES__ORDER__URL", "postgres://u@h/db");
            jail.set_env("APP__SOURCES__PAYMENT__URL", "postgres://u@h/pay");
            jail.set_env("APP__SOURCES__PAYMENT__SLOT", "custom_slot");
            jail.set_env("APP__KAFKA__BROKERS", "a:1, b:2");
            let config = RelayConfig::load().expect("loads");
            let order = &config.sources["order"];
            assert_eq!(order.slot_name("order"), "outbox_relay_order");
            assert_eq!(order.qualified_table(), ("public", "outbox"));
            assert_eq!(
                config.sources["payment"].slot_name("payment"),
                "custom_slot"
            );
            assert_eq!(config.kafka.broker_list(), vec!["a:1", "b:2"]);
            assert_eq!(config.kafka.partitions, 3);
            assert_eq!(config.http.port, 8090);
            Ok(())
        });
    }

    #[test]
    fn rejects_bad_slot_names() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP__SOURCES__ORDER__URL", "postgres://u@h/db");
            jail.set_env("APP__SOURCES__ORDER__SLOT", "Bad-Slot");
            assert!(matches!(
                RelayConfig::load(),
                Err(ConfigError::Invalid { .. })
            ));
            Ok(())
        });
    }

    #[test]
    fn rejects_a_zero_status_interval_by_name() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP__SOURCES__ORDER__URL", "postgres://u@h/db");
            jail.set_env("APP__REPLICATION__STATUS_INTERVAL_MS", "0");
            let error = RelayConfig::load().expect_err("0 is refused");
            assert_eq!(
                error.to_string(),
                "configuration: replication.status_interval_ms = 0 is invalid: must be above 0"
            );
            Ok(())
        });
    }

    #[test]
    fn the_defaults_are_valid() {
        RelayConfig::default().validate().expect("valid defaults");
    }
}

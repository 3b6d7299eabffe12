//! Typed configuration: defaults, then the TOML file named by
//! `APP_CONFIG_FILE`, then `APP__SECTION__KEY` environment variables, e.g.
//! `APP__SOURCES__ORDER__URL=postgres://...` adds the source `order`.
//! Durations are written with a unit (`"250ms"`, `"5s"`); the keys that
//! named their unit (`..._ms`) still load for a release ([`RENAMED_KEYS`]).
//! Validated once at start-up.

use std::collections::BTreeMap;
use std::time::Duration;

pub use commerce_base::config::{CONFIG_FILE_ENV, Secret};
use commerce_base::config::{duration, split_list};
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

/// The keys renamed when durations got units (`replication.status_interval_ms`
/// is now `replication.status_interval`): still read, with their meaning
/// (a number of milliseconds), for this release.
pub const RENAMED_KEYS: &[&str] = &[
    "kafka.produce_timeout_ms",
    "kafka.busy_produce_interval_ms",
    "replication.status_interval_ms",
    "replication.receive_timeout_ms",
    "replication.connect_timeout_ms",
    "replication.command_timeout_ms",
    "replication.create_slot_timeout_ms",
    "replication.backoff_initial_ms",
    "replication.backoff_max_ms",
    "replication.healthy_session_ms",
    "replication.shutdown_grace_ms",
    "replication.lag_probe_interval_ms",
];

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
    #[serde(with = "duration")]
    pub produce_timeout: Duration,
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
    /// 25 ms, with the consumers' `busy_fetch_interval` (docs/perf.md).
    #[serde(with = "duration")]
    pub busy_produce_interval: Duration,
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
            produce_timeout: Duration::from_secs(10),
            max_in_flight_records: 5_000,
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_record_bytes: 1_000_000,
            busy_produce_interval: Duration::from_millis(25),
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Interval of standby status updates.
    #[serde(with = "duration")]
    pub status_interval: Duration,
    /// A streaming session that received nothing from the server for this
    /// long (keepalives included) is presumed dead and restarted. After a
    /// third of it in silence, status updates ask the server for a reply,
    /// so a live server is never silent that long. Also the replication
    /// socket's `TCP_USER_TIMEOUT`.
    #[serde(with = "duration")]
    pub receive_timeout: Duration,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Deadline of IDENTIFY_SYSTEM, START_REPLICATION and of writing a
    /// status update; past it the command is cancelled and the session
    /// restarts.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// Deadline of CREATE_REPLICATION_SLOT, which waits until every
    /// transaction open in the cluster when it started has ended; past it
    /// the creation is cancelled and the error names the oldest open
    /// transaction's backend.
    #[serde(with = "duration")]
    pub create_slot_timeout: Duration,
    /// First and longest pause between reconnect attempts (jittered).
    #[serde(with = "duration")]
    pub backoff_initial: Duration,
    #[serde(with = "duration")]
    pub backoff_max: Duration,
    /// The reconnect backoff starts over only after a session streamed this
    /// long and made progress (confirmed a position past where it started,
    /// or had nothing to do); a failure that recurs sooner keeps backing off.
    #[serde(with = "duration")]
    pub healthy_session: Duration,
    /// How long shutdown waits for in-flight acknowledgements.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// How often the lag probe reads each source's slot (lag, `wal_status`,
    /// `safe_wal_size`) on a connection of its own, whatever the source's
    /// state.
    #[serde(with = "duration")]
    pub lag_probe_interval: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            status_interval: Duration::from_secs(1),
            receive_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
            create_slot_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            healthy_session: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            lag_probe_interval: Duration::from_secs(2),
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
        let config: RelayConfig = commerce_base::config::load_renamed(RENAMED_KEYS)?;
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
        let above_zero = [
            ("kafka.produce_timeout", kafka.produce_timeout),
            ("replication.command_timeout", replication.command_timeout),
            (
                "replication.create_slot_timeout",
                replication.create_slot_timeout,
            ),
            ("replication.status_interval", replication.status_interval),
            ("replication.connect_timeout", replication.connect_timeout),
            ("replication.backoff_initial", replication.backoff_initial),
            ("replication.healthy_session", replication.healthy_session),
            (
                "replication.lag_probe_interval",
                replication.lag_probe_interval,
            ),
        ];
        for (key, value) in above_zero {
            if value.is_zero() {
                return Err(ConfigError::Setting {
                    key,
                    value: duration::format(value),
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
        if replication.receive_timeout < 3 * replication.status_interval {
            return Err(ConfigError::Setting {
                key: "replication.receive_timeout",
                value: duration::format(replication.receive_timeout),
                message: "must be at least 3 x replication.status_interval (the stream's \
                          silence is checked, and a reply asked for, at each status update)",
            });
        }
        if replication.backoff_max < replication.backoff_initial {
            return Err(ConfigError::Setting {
                key: "replication.backoff_max",
                value: duration::format(replication.backoff_max),
                message: "must be at least replication.backoff_initial",
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
            jail.set_env("APP__REPLICATION__STATUS_INTERVAL", "0s");
            let error = RelayConfig::load().expect_err("0 is refused");
            assert_eq!(
                error.to_string(),
                "configuration: replication.status_interval = 0ms is invalid: must be above 0"
            );
            Ok(())
        });
    }

    #[test]
    fn durations_take_units_and_the_old_ms_keys_still_load() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP__SOURCES__ORDER__URL", "postgres://u@h/db");
            jail.set_env("APP__KAFKA__PRODUCE_TIMEOUT", "3s");
            jail.set_env("APP__REPLICATION__STATUS_INTERVAL_MS", "200");
            jail.set_env("APP__REPLICATION__BACKOFF_MAX_MS", "2000");
            let config = RelayConfig::load().expect("loads");
            assert_eq!(config.kafka.produce_timeout, Duration::from_secs(3));
            assert_eq!(
                config.replication.status_interval,
                Duration::from_millis(200)
            );
            assert_eq!(config.replication.backoff_max, Duration::from_secs(2));
            assert_eq!(config.replication.receive_timeout, Duration::from_secs(60));
            Ok(())
        });
    }

    #[test]
    fn every_renamed_key_names_a_duration_key() {
        let defaults = serde_json::to_value(RelayConfig::default()).unwrap();
        for old in RENAMED_KEYS {
            let new = old.strip_suffix("_ms").expect("an _ms key");
            let value = new.split('.').fold(&defaults, |v, k| &v[k]);
            assert!(value.is_string(), "{new} is a duration");
        }
    }

    #[test]
    fn the_defaults_are_valid() {
        RelayConfig::default().validate().expect("valid defaults");
    }
}

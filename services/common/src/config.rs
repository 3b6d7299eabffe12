//! Typed configuration: defaults, then an optional TOML file, then the
//! environment (`APP__SECTION__KEY`). Validated once at start-up.

use std::{fmt, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};

/// Environment variable naming an optional TOML config file.
pub const CONFIG_FILE_ENV: &str = "APP_CONFIG_FILE";

/// Loads `T` from its defaults, then the file named by `APP_CONFIG_FILE` (if
/// set), then `APP__...` environment variables (`__` separates sections).
pub fn load<T>() -> Result<T, Box<figment::Error>>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Ok(path) = std::env::var(CONFIG_FILE_ENV) {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Env::prefixed("APP__").split("__"))
        .extract()
        .map_err(Box::new)
}

/// A string that never prints (passwords, keys, database URLs with credentials).
#[derive(Clone, Default, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

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
        self.brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(String::from)
            .collect()
    }
}

/// Durations in config: `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"7d"` or a
/// number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let millis = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("invalid duration unit {other:?} in {text:?}")),
    };
    Ok(Duration::from_millis(number.saturating_mul(millis)))
}

/// Serde for `Duration` settings: written `"<n>ms"`, read as [`parse_duration`]
/// text or a number of milliseconds.
pub mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", duration.as_millis()))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
            Raw::Text(text) => super::parse_duration(&text).map_err(D::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("40"), Ok(Duration::from_millis(40)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }
}

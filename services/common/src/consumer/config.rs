//! The consumer's settings: its identity (brokers, group, topics), which
//! the service decides, apart from its tuning, which operators configure.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::duration;

/// Who consumes what: decided by the service, not configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `host:port` bootstrap brokers (the service's `kafka` section).
    pub brokers: Vec<String>,
    /// The consuming service's name; offsets, leases and the inbox are per group.
    pub group: String,
    /// The topics it consumes (unless [`ConsumerConfig::topics`] names others).
    pub topics: Vec<String>,
}

impl Identity {
    pub fn new<T: Into<String>>(
        brokers: Vec<String>,
        group: &str,
        topics: impl IntoIterator<Item = T>,
    ) -> Self {
        Self {
            brokers,
            group: group.into(),
            topics: topics.into_iter().map(Into::into).collect(),
        }
    }

    /// This identity, consuming `config.topics` instead when it names any.
    pub(super) fn configured(self, config: &ConsumerConfig) -> Self {
        if config.topics.is_empty() {
            self
        } else {
            Self {
                topics: config.topics.clone(),
                ..self
            }
        }
    }
}

/// How one consumer runs: in a service's config as section `consumer`.
/// Durations accept `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"7d"` or a number
/// of milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Topics to consume instead of the service's own (a test points a
    /// service at a topic of its own); empty: the service's.
    pub topics: Vec<String>,
    /// Unique per running process (default: host, pid and a random suffix).
    pub instance_id: String,
    /// How long a partition lease lives without renewal (renewed every third).
    #[serde(with = "duration")]
    pub lease_ttl: Duration,
    /// Fetch `max_wait` while a partition is idle (the last fetch brought
    /// nothing): how long the broker may hold a fetch open waiting for new
    /// records. Kafka answers a held fetch as soon as a record arrives, so
    /// this adds no latency; it only bounds how long an idle fetch waits
    /// (and so how often an idle partition is asked). 5 s: with 500 ms
    /// (seven partitions asked twice a second) the idle broker took 2.3-3.2%
    /// of a core against 1.8-2.0% (alternated idle runs, docs/perf.md).
    #[serde(with = "duration")]
    pub fetch_max_wait: Duration,
    /// While fetches bring records, the next one is sent no sooner than this
    /// after the previous one started and asks for what is there now
    /// (`max_wait` 0): the records of a busy partition that arrive in the
    /// meantime are fetched and applied together, in one transaction,
    /// instead of one fetch and one transaction per record. 25 ms, with the
    /// relay's `busy_produce_interval` at 25 ms too. 20 ms against 10 saved
    /// 16% of the stack CPU per order at 200 orders/s (6.2 against 7.3 ms)
    /// and 30% at 100/s (7.5 against 10.5), for a saga p50 of 65-75 ms at
    /// 200/s instead of 45; 25 against 20 ms, 2-11% at 200/s (4.51, 4.44
    /// against 5.08, 4.55 ms) for a p50 at 100/s of 68-77 ms instead of
    /// 55-58 and a p99 of 105-110 instead of 85-89 (alternated runs,
    /// docs/perf.md). 40 ms brought the p99 at 100/s to 133 ms.
    #[serde(with = "duration")]
    pub busy_fetch_interval: Duration,
    /// After a fetch whose records were all events the service does not act
    /// on (`EventHandler::wants`), the next comes no sooner than this after
    /// it: a partition busy with other services' events (delivery reads
    /// `orders` for cancellations only, payment reads `deliveries` for
    /// failures only) is read in batches of this long instead of every
    /// `busy_fetch_interval`. An event the service wants that arrives there
    /// then waits up to this long.
    #[serde(with = "duration")]
    pub skipped_fetch_interval: Duration,
    pub fetch_max_bytes: i32,
    /// Deadline of every broker call (on top of `fetch_max_wait` for fetches).
    #[serde(with = "duration")]
    pub broker_timeout: Duration,
    /// Cap of the exponential backoff between retries.
    #[serde(with = "duration")]
    pub max_backoff: Duration,
    /// Handled event ids are remembered this long.
    #[serde(with = "duration")]
    pub inbox_retention: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            instance_id: default_instance_id(),
            lease_ttl: Duration::from_secs(10),
            fetch_max_wait: Duration::from_secs(5),
            busy_fetch_interval: Duration::from_millis(25),
            skipped_fetch_interval: Duration::from_millis(200),
            fetch_max_bytes: 1024 * 1024,
            broker_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl ConsumerConfig {
    /// How often leases are renewed (and partitions rebalanced).
    pub(super) fn renew_interval(&self) -> Duration {
        (self.lease_ttl / 3).max(Duration::from_millis(50))
    }
}

fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "instance".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_serde() {
        let config = ConsumerConfig::default();
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["fetch_max_wait"], "5s");
        assert_eq!(json["busy_fetch_interval"], "25ms");
        let back: ConsumerConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, config);
        let partial: ConsumerConfig =
            serde_json::from_value(serde_json::json!({"lease_ttl": 2000})).unwrap();
        assert_eq!(partial.lease_ttl, Duration::from_secs(2));
    }

    #[test]
    fn the_removed_settings_are_rejected() {
        // `deny_unknown_fields`: a config file still setting them fails
        // loudly (brokers and group are the service's, not configured).
        for (key, value) in [
            ("quiet_after", "2s"),
            ("quiet_fetch_max_wait", "2s"),
            ("brokers", "[]"),
            ("group", "x"),
        ] {
            let old = serde_json::json!({ key: value });
            assert!(
                serde_json::from_value::<ConsumerConfig>(old).is_err(),
                "{key}"
            );
        }
    }

    #[test]
    fn configured_topics_replace_the_services() {
        let identity = Identity::new(vec!["b:1".into()], "payment", ["orders", "users"]);
        let default = ConsumerConfig::default();
        assert_eq!(identity.clone().configured(&default), identity);
        let private = ConsumerConfig {
            topics: vec!["private".into()],
            ..default
        };
        let configured = identity.configured(&private);
        assert_eq!(configured.topics, vec!["private"]);
        assert_eq!(configured.group, "payment");
    }
}

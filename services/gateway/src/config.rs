//! The gateway's typed configuration (defaults -> `APP_CONFIG_FILE` TOML ->
//! `APP__SECTION__KEY` environment), and its validation at start-up.
//! Durations are written with a unit (`"2s"`, `"15m"`); the keys that named
//! their unit (`..._ms`, `..._seconds`) still load for a release
//! ([`RENAMED_KEYS`]).

use std::{path::PathBuf, time::Duration};

use commerce_common::{
    config::{DatabaseConfig, HttpConfig, Secret},
    service::{CommonSettings, MetricsAt, ServiceSettings},
};
use serde::{Deserialize, Serialize};

/// The keys renamed when durations got units (`proxy.connect_timeout_ms` is
/// now `proxy.connect_timeout`): still read, with their meaning (a number
/// in the old name's unit), for this release.
pub const RENAMED_KEYS: &[&str] = &[
    "auth.token_ttl_seconds",
    "proxy.connect_timeout_ms",
    "proxy.request_timeout_ms",
    "proxy.pool_idle_timeout_ms",
    "proxy.probe_timeout_ms",
    "proxy.spec_cache_seconds",
    "login_throttle.window_seconds",
    "login_throttle.slow_down_interval_ms",
    "login_throttle.max_delay_ms",
    "rate_limit.login_per_address.per_seconds",
    "rate_limit.register_per_address.per_seconds",
    "rate_limit.global.per_seconds",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub upstreams: UpstreamsConfig,
    pub proxy: ProxyConfig,
    pub login_throttle: ThrottleConfig,
    pub rate_limit: RateLimitConfig,
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http: HttpConfig::with_port(8084),
            database: DatabaseConfig::with_url(
                "postgres://postgres@127.0.0.1:55432/commerce_gateway",
            ),
            auth: AuthConfig::default(),
            upstreams: UpstreamsConfig::default(),
            proxy: ProxyConfig::default(),
            login_throttle: ThrottleConfig::default(),
            rate_limit: RateLimitConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl ServiceSettings for Config {
    const RENAMED_KEYS: &'static [&'static str] = RENAMED_KEYS;

    /// `/metrics` on a listener of its own, or nowhere.
    fn common(&self) -> CommonSettings<'_> {
        let metrics = match self.metrics.port {
            None => MetricsAt::Nowhere,
            Some(port) => MetricsAt::Own {
                host: self.metrics.host.clone(),
                port,
            },
        };
        CommonSettings::new(&self.http, &self.database).metrics(metrics)
    }

    fn validate(&self) -> anyhow::Result<()> {
        Config::validate(self)
    }
}

impl Config {
    /// See [`ServiceSettings::load`].
    pub fn load() -> anyhow::Result<Self> {
        <Self as ServiceSettings>::load()
    }

    /// Checks what serde cannot; the message names the offending key.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (4..=31).contains(&self.auth.bcrypt_cost),
            "auth.bcrypt_cost must be between 4 and 31"
        );
        anyhow::ensure!(
            self.auth.token_ttl >= Duration::from_secs(1),
            "auth.token_ttl must be at least 1s (a token's exp is in whole seconds)"
        );
        anyhow::ensure!(
            self.auth.private_key_pem.is_some() || self.auth.private_key_file.is_some(),
            "auth.private_key_pem or auth.private_key_file is required (Ed25519, PKCS#8 PEM)"
        );
        for (name, url) in self.upstreams.all() {
            let uri: awc::http::Uri = url
                .parse()
                .map_err(|e| anyhow::anyhow!("upstreams.{name} is not a URL: {e}"))?;
            anyhow::ensure!(
                uri.scheme_str() == Some("http") && uri.host().is_some(),
                "upstreams.{name} must be an http://host:port base URL"
            );
        }
        anyhow::ensure!(
            self.proxy.body_limit_bytes > 0,
            "proxy.body_limit_bytes must be positive"
        );
        anyhow::ensure!(
            !self.login_throttle.window.is_zero(),
            "login_throttle.window must be positive"
        );
        anyhow::ensure!(
            self.login_throttle.max_tracked_keys > 0 && self.rate_limit.max_tracked_addresses > 0,
            "login_throttle.max_tracked_keys and rate_limit.max_tracked_addresses must be positive"
        );
        for (name, rate) in self.rate_limit.all() {
            anyhow::ensure!(
                rate.requests > 0 && !rate.per.is_zero(),
                "rate_limit.{name}: requests and per must be positive"
            );
        }
        for proxy in &self.rate_limit.trusted_proxies {
            crate::auth::client::IpNet::parse(proxy).map_err(|e| {
                anyhow::anyhow!(
                    "rate_limit.trusted_proxies: {proxy:?} is not an address or CIDR: {e}"
                )
            })?;
        }
        Ok(())
    }
}

/// Token issuing. Keys are Ed25519: the private key (PKCS#8 PEM) signs, the
/// public key (SPKI PEM) verifies; when no public key is configured it is
/// derived from the private one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub private_key_pem: Option<Secret>,
    pub private_key_file: Option<PathBuf>,
    pub public_key_pem: Option<String>,
    pub public_key_file: Option<PathBuf>,
    #[serde(with = "commerce_common::config::duration")]
    pub token_ttl: Duration,
    /// bcrypt work factor (4..=31); 12 in production, tests lower it.
    pub bcrypt_cost: u32,
    /// Reject requests to the services with a missing or invalid token at
    /// the edge (the services verify again either way).
    pub verify_at_edge: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            private_key_pem: None,
            private_key_file: None,
            public_key_pem: None,
            public_key_file: None,
            token_ttl: Duration::from_secs(3600),
            bcrypt_cost: 12,
            verify_at_edge: true,
        }
    }
}

/// Base URLs of the services the gateway routes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamsConfig {
    pub order: String,
    pub payment: String,
    pub delivery: String,
}

impl Default for UpstreamsConfig {
    fn default() -> Self {
        Self {
            order: "http://127.0.0.1:8081".into(),
            payment: "http://127.0.0.1:8082".into(),
            delivery: "http://127.0.0.1:8083".into(),
        }
    }
}

impl UpstreamsConfig {
    pub fn all(&self) -> [(&'static str, &str); 3] {
        [
            ("order", &self.order),
            ("payment", &self.payment),
            ("delivery", &self.delivery),
        ]
    }
}

/// Forwarding limits and timeouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Largest request body forwarded; larger ones get 413.
    pub body_limit_bytes: u64,
    /// TCP connect to a service.
    #[serde(with = "commerce_common::config::duration")]
    pub connect_timeout: Duration,
    /// From sending the request until the service's response head arrived.
    #[serde(with = "commerce_common::config::duration")]
    pub request_timeout: Duration,
    /// Idle pooled connections are closed after this; keep it below the
    /// services' keep-alive (actix: 5 s) so a reused connection is never stale.
    #[serde(with = "commerce_common::config::duration")]
    pub pool_idle_timeout: Duration,
    /// Connections per worker and service.
    pub pool_max_connections: usize,
    /// Per-service `/ready` and `/openapi.json` fetches.
    #[serde(with = "commerce_common::config::duration")]
    pub probe_timeout: Duration,
    /// How long a fetched service OpenAPI document is reused.
    #[serde(with = "commerce_common::config::duration")]
    pub spec_cache: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(4),
            pool_max_connections: 256,
            probe_timeout: Duration::from_secs(2),
            spec_cache: Duration::from_secs(30),
        }
    }
}

/// Failed-login throttling, all over one sliding window: a hard limit per
/// (email, client address) pair and per address, and a softer per-email
/// limit past which attempts on the account are spaced out (delayed, not
/// refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    #[serde(with = "commerce_common::config::duration")]
    pub window: Duration,
    /// Failures of one email from one client address before that pair gets 429.
    pub max_failures_per_email_and_address: usize,
    /// Failures from one client address (any email) before it gets 429.
    pub max_failures_per_address: usize,
    /// Failures of one email (any address) after which its attempts are spaced.
    pub slow_down_after_failures_per_email: usize,
    /// Spacing of the attempts on a slowed-down email.
    #[serde(with = "commerce_common::config::duration")]
    pub slow_down_interval: Duration,
    /// Longest wait for a slot; an attempt that would wait longer gets 429.
    #[serde(with = "commerce_common::config::duration")]
    pub max_delay: Duration,
    /// Keys remembered per kind (pairs, addresses, emails).
    pub max_tracked_keys: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(900),
            max_failures_per_email_and_address: 5,
            max_failures_per_address: 20,
            slow_down_after_failures_per_email: 10,
            slow_down_interval: Duration::from_secs(2),
            max_delay: Duration::from_secs(10),
            max_tracked_keys: 100_000,
        }
    }
}

/// `requests` per `per`, as a token bucket: a burst of `requests`,
/// refilled evenly over `per`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub requests: u32,
    #[serde(with = "commerce_common::config::duration")]
    pub per: Duration,
}

/// Request rate limits of the credential endpoints (each request costs a
/// bcrypt), successes included, and the client address they are keyed on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Peers (addresses or CIDRs) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// `POST /api/login` per client address.
    pub login_per_address: Rate,
    /// `POST /api/register` per client address.
    pub register_per_address: Rate,
    /// Login and registration together, all clients: bounds the bcrypt work.
    pub global: Rate,
    /// Addresses remembered per limit.
    pub max_tracked_addresses: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            login_per_address: Rate {
                requests: 30,
                per: Duration::from_secs(60),
            },
            register_per_address: Rate {
                requests: 20,
                per: Duration::from_secs(3_600),
            },
            global: Rate {
                requests: 20,
                per: Duration::from_secs(2),
            },
            max_tracked_addresses: 100_000,
        }
    }
}

impl RateLimitConfig {
    pub fn all(&self) -> [(&'static str, Rate); 3] {
        [
            ("login_per_address", self.login_per_address),
            ("register_per_address", self.register_per_address),
            ("global", self.global),
        ]
    }
}

/// `/metrics` has its own listener, never the public port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub host: String,
    /// Unset: metrics are not served.
    pub port: Option<u16>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_sections_and_keys_are_refused() {
        let base = serde_json::to_value(Config::default()).unwrap();
        assert!(serde_json::from_value::<Config>(base.clone()).is_ok());
        let mut foreign = base.clone();
        foreign["kafka"] = serde_json::json!({"brokers": "kafka:9092"});
        assert!(serde_json::from_value::<Config>(foreign).is_err());
        let mut typo = base;
        typo["proxy"]["body_limit"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Config>(typo).is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn the_old_duration_keys_load_in_their_units() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP__AUTH__PRIVATE_KEY_FILE", "/keys/jwt.pem");
            jail.set_env("APP__AUTH__TOKEN_TTL_SECONDS", "600");
            jail.set_env("APP__PROXY__REQUEST_TIMEOUT_MS", "1500");
            jail.set_env("APP__RATE_LIMIT__GLOBAL__PER_SECONDS", "10");
            jail.set_env("APP__LOGIN_THROTTLE__WINDOW", "15m");
            let config = Config::load().expect("loads");
            assert_eq!(config.auth.token_ttl, Duration::from_secs(600));
            assert_eq!(config.proxy.request_timeout, Duration::from_millis(1500));
            assert_eq!(config.rate_limit.global.per, Duration::from_secs(10));
            assert_eq!(config.rate_limit.global.requests, 20);
            assert_eq!(config.login_throttle.window, Duration::from_secs(900));
            Ok(())
        });
    }
}

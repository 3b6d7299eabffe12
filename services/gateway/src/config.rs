//! The gateway's typed configuration (defaults -> `APP_CONFIG_FILE` TOML ->
//! `APP__SECTION__KEY` environment), and its validation at start-up.

use std::{path::PathBuf, time::Duration};

use commerce_common::{
    config::{DatabaseConfig, HttpConfig, Secret},
    service::{CommonSettings, MetricsAt, ServiceSettings},
};
use serde::{Deserialize, Serialize};

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
            self.auth.token_ttl_seconds > 0,
            "auth.token_ttl_seconds must be positive"
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
            self.login_throttle.window_seconds > 0,
            "login_throttle.window_seconds must be positive"
        );
        anyhow::ensure!(
            self.login_throttle.max_tracked_keys > 0 && self.rate_limit.max_tracked_addresses > 0,
            "login_throttle.max_tracked_keys and rate_limit.max_tracked_addresses must be positive"
        );
        for (name, rate) in self.rate_limit.all() {
            anyhow::ensure!(
                rate.requests > 0 && rate.per_seconds > 0,
                "rate_limit.{name}: requests and per_seconds must be positive"
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
    pub token_ttl_seconds: u64,
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
            token_ttl_seconds: 3600,
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
    pub connect_timeout_ms: u64,
    /// From sending the request until the service's response head arrived.
    pub request_timeout_ms: u64,
    /// Idle pooled connections are closed after this; keep it below the
    /// services' keep-alive (actix: 5 s) so a reused connection is never stale.
    pub pool_idle_timeout_ms: u64,
    /// Connections per worker and service.
    pub pool_max_connections: usize,
    /// Per-service `/ready` and `/openapi.json` fetches.
    pub probe_timeout_ms: u64,
    /// How long a fetched service OpenAPI document is reused.
    pub spec_cache_seconds: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            connect_timeout_ms: 2_000,
            request_timeout_ms: 30_000,
            pool_idle_timeout_ms: 4_000,
            pool_max_connections: 256,
            probe_timeout_ms: 2_000,
            spec_cache_seconds: 30,
        }
    }
}

impl ProxyConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn pool_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_idle_timeout_ms)
    }
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }
    pub fn spec_cache(&self) -> Duration {
        Duration::from_secs(self.spec_cache_seconds)
    }
}

/// Failed-login throttling, all over one sliding window: a hard limit per
/// (email, client address) pair and per address, and a softer per-email
/// limit past which attempts on the account are spaced out (delayed, not
/// refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    pub window_seconds: u64,
    /// Failures of one email from one client address before that pair gets 429.
    pub max_failures_per_email_and_address: usize,
    /// Failures from one client address (any email) before it gets 429.
    pub max_failures_per_address: usize,
    /// Failures of one email (any address) after which its attempts are spaced.
    pub slow_down_after_failures_per_email: usize,
    /// Spacing of the attempts on a slowed-down email.
    pub slow_down_interval_ms: u64,
    /// Longest wait for a slot; an attempt that would wait longer gets 429.
    pub max_delay_ms: u64,
    /// Keys remembered per kind (pairs, addresses, emails).
    pub max_tracked_keys: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            window_seconds: 900,
            max_failures_per_email_and_address: 5,
            max_failures_per_address: 20,
            slow_down_after_failures_per_email: 10,
            slow_down_interval_ms: 2_000,
            max_delay_ms: 10_000,
            max_tracked_keys: 100_000,
        }
    }
}

/// `requests` per `per_seconds`, as a token bucket: a burst of `requests`,
/// refilled evenly over `per_seconds`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub requests: u32,
    pub per_seconds: u64,
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
                per_seconds: 60,
            },
            register_per_address: Rate {
                requests: 20,
                per_seconds: 3_600,
            },
            global: Rate {
                requests: 20,
                per_seconds: 2,
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
}

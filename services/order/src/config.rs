//! The order service's configuration: defaults, then the `APP_CONFIG_FILE`
//! TOML file, then `APP__SECTION__KEY` environment variables.

use commerce_common::service::{CommonSettings, ServiceSettings};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The consumer group: offsets, leases and the inbox are kept under it.
pub const CONSUMER_GROUP: &str = "order";

commerce_common::service_settings! {
    /// The order service's settings.
    pub struct Settings on port 8081, database "commerce_order" {
        pub saga: SagaConfig,
        pub idempotency: IdempotencyConfig,
        pub cancellation: CancellationConfig,
        pub redrive: RedriveConfig,
        pub quotas: QuotasConfig,
    }
}

impl ServiceSettings for Settings {
    /// The consumer runs with `saga.enabled` only.
    fn common(&self) -> CommonSettings<'_> {
        let common = CommonSettings::new(&self.http, &self.database).auth(&self.auth);
        match self.saga.enabled {
            true => common.consumer(&self.kafka, &self.consumer),
            false => common,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.quotas.validate()
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

/// Sagas that stopped moving are re-driven (crate::redrive).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedriveConfig {
    pub enabled: bool,
    /// An in-flight order that has not moved for this long has its request
    /// written again. Well above a saga's p99 under load (about a second at
    /// the saturation rate on 2 cores, docs/perf.md) and above what a crash
    /// costs a saga (a consumer's partitions move to its restarted process
    /// after `consumer.lease_ttl`, 10 s; Kafka restarts in about 15 s): a
    /// re-drive of a saga that is only slow costs a few events and changes
    /// nothing, but it is noise in the logs.
    #[serde(with = "commerce_common::config::duration")]
    pub after: Duration,
    /// Each further re-drive waits twice as long as the one before, at most
    /// this long.
    #[serde(with = "commerce_common::config::duration")]
    pub max_backoff: Duration,
    /// Re-drives without a move before the order counts as stuck (shown by
    /// `sagas_stuck` and `GET /admin/sagas/stuck`; no more re-drives until an
    /// operator asks).
    pub max_attempts: i32,
}

impl Default for RedriveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            after: Duration::from_secs(30),
            max_backoff: Duration::from_secs(300),
            max_attempts: 12,
        }
    }
}

impl RedriveConfig {
    pub fn schedule(&self) -> crate::store::redrive::Schedule {
        crate::store::redrive::Schedule {
            after_ms: self.after.as_millis() as i64,
            max_backoff_ms: self.max_backoff.as_millis() as i64,
            max_attempts: self.max_attempts,
        }
    }

    /// How often due orders are looked for: a re-drive is at most this late.
    pub fn scan_interval(&self) -> Duration {
        (self.after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }
}

/// What one customer may place (`POST /api/orders`); over a quota the
/// answer is 429 with `Retry-After` and nothing is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotasConfig {
    /// Orders the saga is still working on (PENDING or PAID) one customer
    /// may have; one more is 429 TOO_MANY_OPEN_ORDERS.
    pub max_open_orders: u32,
    /// `Retry-After` of TOO_MANY_OPEN_ORDERS: about how long a saga takes.
    #[serde(with = "commerce_common::config::duration")]
    pub open_orders_retry_after: Duration,
    /// Orders one customer may place within any `placement_interval`; one
    /// more is 429 ORDER_RATE_LIMITED, with `Retry-After` until the oldest
    /// of them is out of the interval.
    pub max_orders_per_interval: u32,
    #[serde(with = "commerce_common::config::duration")]
    pub placement_interval: Duration,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            max_open_orders: 20,
            open_orders_retry_after: Duration::from_secs(5),
            max_orders_per_interval: 10,
            placement_interval: Duration::from_secs(60),
        }
    }
}

impl QuotasConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_open_orders >= 1 && self.max_orders_per_interval >= 1,
            "quotas.max_open_orders and quotas.max_orders_per_interval must be at least 1"
        );
        anyhow::ensure!(
            !self.placement_interval.is_zero(),
            "quotas.placement_interval must be positive"
        );
        anyhow::ensure!(
            self.placement_interval <= Duration::from_secs(366 * 24 * 3600),
            "quotas.placement_interval must be at most 366 days"
        );
        Ok(())
    }
}

/// When a customer may still cancel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CancellationConfig {
    /// A DELIVERY_SCHEDULED order can be cancelled until this long before its
    /// delivery window starts; later, 409 TOO_LATE_TO_CANCEL (the parcel is
    /// on its way).
    #[serde(with = "commerce_common::config::duration")]
    pub cutoff_before_window: Duration,
}

impl Default for CancellationConfig {
    fn default() -> Self {
        Self {
            cutoff_before_window: Duration::from_secs(2 * 3600),
        }
    }
}

/// `Idempotency-Key`s of `POST /api/orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How long a key is remembered (at least; older keys are deleted every
    /// twenty-fourth of this, at most hourly). A retry with the key after
    /// that places a new order.
    #[serde(with = "commerce_common::config::duration")]
    pub retention: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

impl IdempotencyConfig {
    /// How often expired keys are deleted.
    pub fn purge_interval(&self) -> Duration {
        (self.retention / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }
}

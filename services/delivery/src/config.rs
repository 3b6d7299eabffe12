//! The delivery service's configuration: defaults, then the `APP_CONFIG_FILE`
//! TOML file, then `APP__SECTION__KEY` environment variables.

use commerce_common::{
    auth::PublicKeyConfig,
    config::{DatabaseConfig, HttpConfig, KafkaConfig},
    consumer::ConsumerConfig,
    service::{CommonSettings, ServiceSettings},
};
use serde::{Deserialize, Serialize};

pub const SERVICE: &str = "delivery-service";
/// The consumer group: offsets, leases and the inbox are kept under it.
pub const CONSUMER_GROUP: &str = "delivery";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub auth: PublicKeyConfig,
    /// Tuning of the consumer runtime. Brokers and group are filled in by
    /// the service; `topics` defaults to payments and orders.
    #[serde(default)]
    pub consumer: ConsumerConfig,
    #[serde(default)]
    pub windows: WindowsConfig,
    #[serde(default)]
    pub quotas: QuotasConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: HttpConfig::with_port(8083),
            database: DatabaseConfig::with_url(
                "postgres://postgres@127.0.0.1:55432/commerce_delivery",
            ),
            kafka: KafkaConfig::default(),
            auth: PublicKeyConfig::default(),
            consumer: ConsumerConfig::default(),
            windows: WindowsConfig::default(),
            quotas: QuotasConfig::default(),
        }
    }
}

impl Settings {
    /// See [`ServiceSettings::load`].
    pub fn load() -> anyhow::Result<Self> {
        <Self as ServiceSettings>::load()
    }
}

impl ServiceSettings for Settings {
    fn common(&self) -> CommonSettings<'_> {
        CommonSettings::new(&self.http, &self.database)
            .auth(&self.auth)
            .consumer(&self.kafka, &self.consumer)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.windows.validate()?;
        self.quotas.validate()
    }
}

/// The delivery windows offered: `per_day` windows of `length_minutes`
/// each day from `first_start_hour` (UTC), each taking `capacity`
/// deliveries, bookable from tomorrow on for `horizon_days` days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowsConfig {
    pub per_day: u32,
    pub first_start_hour: u32,
    pub length_minutes: u32,
    pub capacity: i32,
    pub horizon_days: u32,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        Self {
            per_day: 4,
            first_start_hour: 8,
            length_minutes: 120,
            capacity: 50,
            horizon_days: 7,
        }
    }
}

impl WindowsConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=96).contains(&self.per_day),
            "windows.per_day must be between 1 and 96"
        );
        anyhow::ensure!(
            self.length_minutes >= 1,
            "windows.length_minutes must be positive"
        );
        anyhow::ensure!(
            self.first_start_hour * 60 + self.per_day * self.length_minutes <= 24 * 60,
            "windows.first_start_hour + per_day * length_minutes must fit in one day"
        );
        anyhow::ensure!(self.capacity >= 0, "windows.capacity must not be negative");
        anyhow::ensure!(
            (1..=366).contains(&self.horizon_days),
            "windows.horizon_days must be between 1 and 366"
        );
        Ok(())
    }
}

/// What one customer may book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotasConfig {
    /// Windows one customer may book per UTC day, counted by when they were
    /// booked (a booking cancelled later still counts); a paid order over
    /// it gets `DeliveryFailed{DAILY_LIMIT}`, and is refunded and CANCELLED.
    pub bookings_per_customer_per_day: u32,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            bookings_per_customer_per_day: 10,
        }
    }
}

impl QuotasConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.bookings_per_customer_per_day >= 1,
            "quotas.bookings_per_customer_per_day must be at least 1"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_windows_are_valid_and_overflowing_days_are_not() {
        assert!(WindowsConfig::default().validate().is_ok());
        let too_long = WindowsConfig {
            per_day: 13,
            ..WindowsConfig::default()
        };
        assert!(too_long.validate().is_err());
        let no_horizon = WindowsConfig {
            horizon_days: 0,
            ..WindowsConfig::default()
        };
        assert!(no_horizon.validate().is_err());
    }
}

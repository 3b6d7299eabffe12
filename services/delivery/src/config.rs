//! The delivery service's configuration: defaults, then the `APP_CONFIG_FILE`
//! TOML file, then `APP__SECTION__KEY` environment variables.

use commerce_common::service::{CommonSettings, ServiceSettings};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The consumer group: offsets, leases and the inbox are kept under it.
pub const CONSUMER_GROUP: &str = "delivery";

commerce_common::service_settings! {
    /// The delivery service's settings.
    pub struct Settings on port 8083, database "commerce_delivery" {
        pub windows: WindowsConfig,
        pub quotas: QuotasConfig,
    }
}

impl ServiceSettings for Settings {
    const RENAMED_KEYS: &'static [&'static str] = RENAMED_KEYS;

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

/// The keys renamed when durations got units (`windows.length_minutes` is
/// now `windows.length`): still read, with their meaning (a number in the
/// old name's unit), for this release.
pub const RENAMED_KEYS: &[&str] = &["windows.length_minutes", "windows.horizon_days"];

/// The delivery windows offered: `per_day` windows of `length` each day
/// from `first_start_hour` (UTC), each taking `capacity` deliveries,
/// bookable from tomorrow on for `horizon` (whole days).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowsConfig {
    pub per_day: u32,
    pub first_start_hour: u32,
    #[serde(with = "commerce_common::config::duration")]
    pub length: Duration,
    pub capacity: i32,
    #[serde(with = "commerce_common::config::duration")]
    pub horizon: Duration,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        Self {
            per_day: 4,
            first_start_hour: 8,
            length: Duration::from_secs(2 * 3600),
            capacity: 50,
            horizon: Duration::from_secs(7 * 86_400),
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
            self.length >= Duration::from_secs(60)
                && self.length.as_millis().is_multiple_of(60_000),
            "windows.length must be a whole number of minutes, at least 1m"
        );
        anyhow::ensure!(
            u64::from(self.first_start_hour * 60)
                + u64::from(self.per_day) * self.length.as_secs() / 60
                <= 24 * 60,
            "windows.first_start_hour + per_day * length must fit in one day"
        );
        anyhow::ensure!(self.capacity >= 0, "windows.capacity must not be negative");
        anyhow::ensure!(
            self.horizon.as_millis().is_multiple_of(86_400_000)
                && (1..=366).contains(&self.horizon_days()),
            "windows.horizon must be whole days, between 1d and 366d"
        );
        Ok(())
    }

    /// The length of a window in minutes (validated whole, and within a day).
    pub fn length_minutes(&self) -> u32 {
        u32::try_from(self.length.as_secs() / 60).unwrap_or(u32::MAX)
    }

    /// How many days ahead windows are bookable (validated whole).
    pub fn horizon_days(&self) -> u32 {
        u32::try_from(self.horizon.as_secs() / 86_400).unwrap_or(u32::MAX)
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
            horizon: Duration::ZERO,
            ..WindowsConfig::default()
        };
        assert!(no_horizon.validate().is_err());
        let part_of_a_day = WindowsConfig {
            horizon: Duration::from_secs(36 * 3600),
            ..WindowsConfig::default()
        };
        assert!(part_of_a_day.validate().is_err());
        let seconds = WindowsConfig {
            length: Duration::from_secs(90),
            ..WindowsConfig::default()
        };
        assert!(seconds.validate().is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn the_old_window_keys_load_in_their_units() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP__WINDOWS__LENGTH_MINUTES", "90");
            jail.set_env("APP__WINDOWS__HORIZON_DAYS", "3");
            let settings = Settings::load().expect("loads");
            assert_eq!(settings.windows.length, Duration::from_secs(90 * 60));
            assert_eq!(settings.windows.horizon_days(), 3);
            Ok(())
        });
    }
}

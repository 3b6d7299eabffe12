//! The payment service's configuration: defaults, then the `APP_CONFIG_FILE`
//! TOML file, then `APP__SECTION__KEY` environment variables.

use commerce_common::{
    auth::PublicKeyConfig,
    config::{DatabaseConfig, HttpConfig, KafkaConfig},
    consumer::ConsumerConfig,
    service::{CommonSettings, ServiceSettings},
};
use serde::{Deserialize, Serialize};

pub const SERVICE: &str = "payment-service";
/// The consumer group: offsets, leases and the inbox are kept under it.
pub const CONSUMER_GROUP: &str = "payment";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub auth: PublicKeyConfig,
    /// Tuning of the consumer runtime. Brokers and group are filled in by
    /// the service; `topics` defaults to users, orders and deliveries.
    #[serde(default)]
    pub consumer: ConsumerConfig,
    #[serde(default)]
    pub wallet: WalletConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: HttpConfig::with_port(8082),
            database: DatabaseConfig::with_url(
                "postgres://postgres@127.0.0.1:55432/commerce_payment",
            ),
            kafka: KafkaConfig::default(),
            auth: PublicKeyConfig::default(),
            consumer: ConsumerConfig::default(),
            wallet: WalletConfig::default(),
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
        self.wallet.validate()
    }
}

/// Wallet rules (integer cents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalletConfig {
    /// What a new wallet starts with (default 100000 = 1000.00).
    pub initial_credit_cents: i64,
    /// Largest single top-up.
    pub max_top_up_cents: i64,
    /// A top-up may not raise the balance above this. Refunds are always
    /// credited in full (the customer's own money coming back), so they may:
    /// the limit caps what top-ups put in, not what comes back.
    pub max_balance_cents: i64,
}

impl Default for WalletConfig {
    fn default() -> Self {
        Self {
            initial_credit_cents: 100_000,
            max_top_up_cents: 10_000_000,
            max_balance_cents: 1_000_000_000_000,
        }
    }
}

impl WalletConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0..=self.max_balance_cents).contains(&self.initial_credit_cents),
            "wallet.initial_credit_cents must be between 0 and wallet.max_balance_cents"
        );
        anyhow::ensure!(
            self.max_top_up_cents > 0,
            "wallet.max_top_up_cents must be positive"
        );
        Ok(())
    }
}

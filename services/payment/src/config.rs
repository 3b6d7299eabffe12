//! The payment service's configuration: defaults, then the `APP_CONFIG_FILE`
//! TOML file, then `APP__SECTION__KEY` environment variables.

use commerce_common::service::{CommonSettings, ServiceSettings};
use serde::{Deserialize, Serialize};

/// The consumer group: offsets, leases and the inbox are kept under it.
pub const CONSUMER_GROUP: &str = "payment";

commerce_common::service_settings! {
    /// The payment service's settings.
    pub struct Settings on port 8082, database "commerce_payment" {
        pub wallet: WalletConfig,
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

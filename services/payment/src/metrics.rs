//! Prometheus metrics of the payment service: charges and refunds by
//! outcome and answers written again ([`ParticipantMetrics`]), top-ups. The
//! consumer runtime registers its own (lag per partition, records by
//! outcome) in the same registry.

use commerce_common::consumer::ParticipantMetrics;
use prometheus_client::{metrics::counter::Counter, registry::Registry};

#[derive(Clone, Default)]
pub struct PaymentMetrics {
    /// Charges and refunds by outcome: confirmed, failed, refunded.
    pub payments: ParticipantMetrics,
    pub top_ups: Counter,
}

impl PaymentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let payments = ParticipantMetrics::register(
            registry,
            "payments",
            "Payments by outcome (confirmed, failed, refunded)",
        );
        let top_ups = Counter::default();
        registry.register("wallet_top_ups", "Wallet top-ups", top_ups.clone());
        Self { payments, top_ups }
    }
}

//! Prometheus metrics of the payment service. The consumer runtime registers
//! its own (lag per partition, records by outcome) in the same registry.

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

type OutcomeLabel = [(&'static str, &'static str); 1];

#[derive(Clone, Default)]
pub struct PaymentMetrics {
    /// Charges and refunds by outcome: confirmed, failed, refunded.
    payments: Family<OutcomeLabel, Counter>,
    pub top_ups: Counter,
    /// Answers written again for a repeated request (a saga re-drive).
    pub announced_again: Counter,
}

impl PaymentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "payments",
            "Payments by outcome (confirmed, failed, refunded)",
            metrics.payments.clone(),
        );
        registry.register("wallet_top_ups", "Wallet top-ups", metrics.top_ups.clone());
        registry.register(
            "saga_answers_announced_again",
            "Answers written again because their request came again (a saga re-drive)",
            metrics.announced_again.clone(),
        );
        metrics
    }

    pub fn outcome(&self, outcome: &'static str) {
        self.payments.get_or_create(&[("outcome", outcome)]).inc();
    }
}

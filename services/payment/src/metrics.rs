//! Prometheus metrics of the payment service. The consumer runtime registers
//! its own (lag per partition, records by outcome) in the same registry.

use std::sync::Arc;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

type OutcomeLabel = [(&'static str, &'static str); 1];

#[derive(Clone, Default)]
pub struct PaymentMetrics {
    /// Charges and refunds by outcome: confirmed, failed, refunded.
    payments: Family<OutcomeLabel, Counter>,
    pub top_ups: Counter,
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
        metrics
    }

    pub fn outcome(&self, outcome: &'static str) {
        self.payments.get_or_create(&[("outcome", outcome)]).inc();
    }
}

/// The finished registry, shared with the `/metrics` handler.
#[derive(Clone)]
pub struct MetricsRegistry(pub Arc<Registry>);

impl MetricsRegistry {
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.0).expect("writing to a String cannot fail");
        text
    }
}

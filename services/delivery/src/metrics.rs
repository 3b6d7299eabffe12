//! Prometheus metrics of the delivery service. The consumer runtime
//! registers its own (lag per partition, records by outcome) in the same
//! registry.

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

type OutcomeLabel = [(&'static str, &'static str); 1];

#[derive(Clone, Default)]
pub struct DeliveryMetrics {
    deliveries: Family<OutcomeLabel, Counter>,
    /// Answers written again for a repeated request (a saga re-drive).
    pub announced_again: Counter,
}

impl DeliveryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "deliveries",
            "Booking decisions by outcome (scheduled, no_capacity, daily_limit, cancelled, cancelled_before_booking)",
            metrics.deliveries.clone(),
        );
        registry.register(
            "saga_answers_announced_again",
            "Answers written again because their request came again (a saga re-drive)",
            metrics.announced_again.clone(),
        );
        metrics
    }

    pub fn outcome(&self, outcome: &'static str) {
        self.deliveries.get_or_create(&[("outcome", outcome)]).inc();
    }
}

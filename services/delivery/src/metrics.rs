//! Prometheus metrics of the delivery service. The consumer runtime
//! registers its own (lag per partition, records by outcome) in the same
//! registry.

use std::sync::Arc;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

type OutcomeLabel = [(&'static str, &'static str); 1];

#[derive(Clone, Default)]
pub struct DeliveryMetrics {
    deliveries: Family<OutcomeLabel, Counter>,
}

impl DeliveryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "deliveries",
            "Booking decisions by outcome (scheduled, no_capacity, cancelled, cancelled_before_booking)",
            metrics.deliveries.clone(),
        );
        metrics
    }

    pub fn outcome(&self, outcome: &'static str) {
        self.deliveries.get_or_create(&[("outcome", outcome)]).inc();
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

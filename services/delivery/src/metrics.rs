//! Prometheus metrics of the delivery service: booking decisions by outcome
//! and answers written again ([`ParticipantMetrics`]). The consumer runtime
//! registers its own (lag per partition, records by outcome) in the same
//! registry.

use commerce_common::consumer::ParticipantMetrics;
use prometheus_client::registry::Registry;

pub fn register(registry: &mut Registry) -> ParticipantMetrics {
    ParticipantMetrics::register(
        registry,
        "deliveries",
        "Booking decisions by outcome (scheduled, no_capacity, daily_limit, cancelled, cancelled_before_booking)",
    )
}

//! Prometheus metrics of the order service. The consumer runtime registers
//! its own (lag per partition, records by outcome) in the same registry.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::domain::OrderStatus;

type StatusLabel = [(&'static str, &'static str); 1];

/// Metrics the service itself updates.
#[derive(Clone, Default)]
pub struct OrderMetrics {
    /// Orders created (idempotent replays not counted).
    pub orders_placed: Counter,
    /// Orders in the database per status, refreshed on every scrape.
    orders_by_status: Family<StatusLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    /// Status changes made by the saga, per target status.
    pub status_changes: Family<StatusLabel, Counter<u64, AtomicU64>>,
    /// Placements refused over a quota, per error code.
    quota_refusals: Family<CodeLabel, Counter<u64, AtomicU64>>,
    /// Orders re-driven, per saga step (crate::redrive).
    redrives: Family<StepLabel, Counter<u64, AtomicU64>>,
    /// In-flight orders and stuck ones, refreshed on every scrape.
    in_flight: Gauge<i64, std::sync::atomic::AtomicI64>,
    stuck: Gauge<i64, std::sync::atomic::AtomicI64>,
}

type StepLabel = [(&'static str, &'static str); 1];
type CodeLabel = [(&'static str, &'static str); 1];

impl OrderMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "orders_placed",
            "Orders created through POST /api/orders",
            metrics.orders_placed.clone(),
        );
        registry.register(
            "orders",
            "Orders in the database by status",
            metrics.orders_by_status.clone(),
        );
        registry.register(
            "order_status_changes",
            "Order status changes applied by the saga, by new status",
            metrics.status_changes.clone(),
        );
        registry.register(
            "order_quota_refusals",
            "Placements refused with 429 over a customer quota, by error code",
            metrics.quota_refusals.clone(),
        );
        registry.register(
            "saga_redrives",
            "Orders whose saga had stopped moving and whose request was written again, by step",
            metrics.redrives.clone(),
        );
        registry.register(
            "sagas_in_flight",
            "Orders a saga still works on (PENDING, PAID, cancellation under way)",
            metrics.in_flight.clone(),
        );
        registry.register(
            "sagas_stuck",
            "In-flight orders whose re-drives are exhausted (GET /admin/sagas/stuck)",
            metrics.stuck.clone(),
        );
        metrics
    }

    pub fn quota_refused(&self, code: &'static str) {
        self.quota_refusals.get_or_create(&[("code", code)]).inc();
    }

    pub fn redriven(&self, step: crate::redrive::Step) {
        self.redrives
            .get_or_create(&[("step", step.as_str())])
            .inc();
    }

    pub fn set_sagas(&self, in_flight: i64, stuck: i64) {
        self.in_flight.set(in_flight);
        self.stuck.set(stuck);
    }

    pub fn status_changed(&self, status: OrderStatus) {
        self.status_changes
            .get_or_create(&[("status", status.as_str())])
            .inc();
    }

    pub fn set_counts(&self, counts: &[(String, i64)]) {
        for status in OrderStatus::ALL {
            let count = counts
                .iter()
                .find(|(name, _)| name == status.as_str())
                .map_or(0, |(_, count)| *count);
            self.orders_by_status
                .get_or_create(&[("status", status.as_str())])
                .set(count);
        }
    }
}

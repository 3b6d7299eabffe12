//! Prometheus metrics of the gateway, served at `/metrics` on its own
//! listener (`metrics.port`).

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    /// Requests forwarded, by service and outcome (`ok`, `unavailable`, ...).
    pub proxied: Family<Labels, Counter>,
    /// Login attempts by outcome (`ok`, `invalid`, `throttled`).
    pub logins: Family<Labels, Counter>,
    /// Registrations by outcome (`ok`, `invalid`, `email_taken`).
    pub registrations: Family<Labels, Counter>,
}

impl Metrics {
    /// Registers them in `registry`, prefixed `gateway_`.
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("gateway");
        let proxied = Family::<Labels, Counter>::default();
        let logins = Family::<Labels, Counter>::default();
        let registrations = Family::<Labels, Counter>::default();
        registry.register(
            "proxy_requests",
            "Requests forwarded to a service",
            proxied.clone(),
        );
        registry.register("login_attempts", "Login attempts", logins.clone());
        registry.register(
            "registrations",
            "Registration attempts",
            registrations.clone(),
        );
        Self {
            proxied,
            logins,
            registrations,
        }
    }

    pub fn proxied(&self, upstream: &'static str, outcome: &'static str) {
        self.proxied
            .get_or_create(&vec![("upstream", upstream), ("outcome", outcome)])
            .inc();
    }

    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&vec![("outcome", outcome)]).inc();
    }

    pub fn registration(&self, outcome: &'static str) {
        self.registrations
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }
}

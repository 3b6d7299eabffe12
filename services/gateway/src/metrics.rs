//! Prometheus metrics of the gateway, served at `/metrics`.

use std::sync::Mutex;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Mutex<Registry>,
    /// Requests forwarded, by service and outcome (`ok`, `unavailable`, ...).
    pub proxied: Family<Labels, Counter>,
    /// Login attempts by outcome (`ok`, `invalid`, `throttled`).
    pub logins: Family<Labels, Counter>,
    /// Registrations by outcome (`ok`, `invalid`, `email_taken`).
    pub registrations: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gateway");
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
            registry: Mutex::new(registry),
            proxied,
            logins,
            registrations,
        }
    }
}

impl Metrics {
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

    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics lock");
        encode(&mut out, &registry).expect("writing to a String");
        out
    }
}

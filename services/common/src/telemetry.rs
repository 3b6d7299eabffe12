//! Logging: pretty on a terminal, JSON otherwise (containers), filtered by
//! `RUST_LOG` (default `info`). `LOG_FORMAT=json|pretty` overrides. See
//! `commerce_base::telemetry`.

/// Installs the global subscriber once; later calls are no-ops (tests).
pub fn init(service: &str) {
    commerce_base::telemetry::init(service, "info");
}

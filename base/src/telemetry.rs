//! Logging: pretty on a terminal, JSON otherwise (containers), filtered by
//! `RUST_LOG` (default: the binary's own directives). `LOG_FORMAT=json|pretty`
//! overrides.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber once; later calls are no-ops (tests).
/// `default_directives` apply when `RUST_LOG` is unset (e.g. `info`, or
/// `info,rskafka=warn` for a process whose rskafka logs are noise).
pub fn init(service: &str, default_directives: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directives));
    let json = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("pretty") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_target(false).try_init()
    };
    if installed.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}

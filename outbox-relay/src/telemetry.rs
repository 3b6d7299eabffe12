//! Logging: pretty on a terminal, JSON otherwise, filtered by `RUST_LOG`
//! (default `info`); `LOG_FORMAT=json|pretty` overrides.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rskafka=warn"));
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
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "outbox-relay starting");
    }
}

//! What the outbox relay and the services both need, kept free of any web
//! or database framework (no actix, diesel or paperclip) so that the relay
//! stays a light, generic CDC process: it depends on this crate and on
//! nothing of the services.
//!
//! - [`outbox`]: the outbox wire format (columns, record headers, the
//!   envelope, dead-letter topics), the one contract between the services
//!   that write outbox rows and read records and the relay between them
//! - [`config`]: the layered config loader, renamed keys, [`config::Secret`]
//!   and the one duration format of every binary's settings
//! - [`backoff`]: exponential backoff with jitter
//! - [`telemetry`]: logging set-up
//! - [`nodelay`]: `TCP_NODELAY` on the broker connections rskafka opens

pub mod backoff;
pub mod config;
pub mod nodelay;
pub mod outbox;
pub mod telemetry;

//! The small crate the services share: event contracts, config loading,
//! telemetry, HTTP error mapping, JWT verification, database plumbing, the
//! outbox writer and the Kafka consumer runtime. Nothing service-specific.

pub mod auth;
pub mod config;
pub mod consumer;
pub mod db;
pub mod events;
pub mod http;
pub mod outbox;
pub mod telemetry;

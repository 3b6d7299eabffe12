//! The small crate the services share: event contracts, config loading,
//! telemetry, HTTP error mapping, JWT verification, database plumbing, the
//! outbox writer, the Kafka consumer runtime and the service skeleton
//! (start-up, operational routes, shutdown, `main`). Nothing
//! service-specific.

pub mod auth;
pub mod config;
pub mod consumer;
pub mod db;
pub mod dead_letters;
pub mod events;
pub mod http;
pub mod outbox;
pub mod service;
pub mod telemetry;

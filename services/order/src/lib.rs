//! The order service: places and validates orders, owns the order state
//! machine, and follows the saga from the payment and delivery events.

pub mod catalog;
pub mod config;
pub mod domain;
pub mod metrics;
pub mod order_changes;
pub mod quotas;
pub mod redrive;
pub mod routes;
pub mod saga;
pub mod schema;
pub mod startup;
pub mod store;

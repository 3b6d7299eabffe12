//! The payment service: one wallet per customer, charged when an order is
//! created (saga.rs), refunded on compensation, readable and topped up by
//! its owner over HTTP (routes/).

pub mod config;
pub mod domain;
pub mod metrics;
pub mod routes;
pub mod saga;
pub mod schema;
pub mod startup;
pub mod store;

//! The delivery service: delivery windows with a capacity, booked when an
//! order's payment is confirmed (saga.rs), released when the order is
//! cancelled, readable by the order's owner over HTTP (routes/).

pub mod config;
pub mod domain;
pub mod metrics;
pub mod routes;
pub mod saga;
pub mod schema;
pub mod startup;
pub mod store;

//! HTTP routes: the orders and products API (in the OpenAPI document) and
//! the saga admin pages (the operational endpoints are mounted by
//! `commerce_common::service`).

pub mod admin;
mod extract;
pub mod orders;
pub mod products;
pub mod request_trace;
pub mod schemas;

pub use extract::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};

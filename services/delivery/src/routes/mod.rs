//! HTTP routes: the deliveries API (in the OpenAPI document). The
//! operational endpoints are mounted by `commerce_common::service`.

pub mod deliveries;
pub mod schemas;

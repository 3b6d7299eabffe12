//! HTTP routes: the wallet and payments API (in the OpenAPI document). The
//! operational endpoints are mounted by `commerce_common::service`.

pub mod payments;
pub mod schemas;
pub mod wallet;

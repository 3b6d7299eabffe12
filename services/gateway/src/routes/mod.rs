//! HTTP routes by resource, and the state they share.

pub mod auth;
pub mod docs;
pub mod health;
pub mod me;
pub mod proxy;

use std::sync::Arc;

use crate::{
    auth::{
        client::ClientAddresses, password::PasswordHasher, rate_limit::RateLimits,
        throttle::LoginThrottle, tokens::TokenIssuer,
    },
    config::UpstreamsConfig,
    metrics::Metrics,
};

/// What the gateway's own handlers need; shared by all workers (the
/// database pool is each worker's own `web::Data<DbPool>`).
pub struct AppState {
    pub hasher: PasswordHasher,
    pub issuer: TokenIssuer,
    pub throttle: LoginThrottle,
    pub rate_limits: RateLimits,
    pub clients: ClientAddresses,
    pub upstreams: UpstreamsConfig,
    pub metrics: Arc<Metrics>,
}

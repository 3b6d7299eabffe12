//! The gateway: the only public entry point. It owns users (registration,
//! login, JWT issuing), forwards `/api/...` to the service that owns the
//! resource, and serves one merged OpenAPI document with Swagger UI.

pub mod auth;
pub mod config;
pub mod domain;
pub mod keygen;
pub mod metrics;
pub mod request_id;
pub mod routes;
pub mod schema;
pub mod startup;

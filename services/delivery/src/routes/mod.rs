//! HTTP routes: the deliveries API (in the OpenAPI document) and
//! the operational endpoints (health, readiness, metrics).

pub mod deliveries;
pub mod schemas;

use actix_web::{HttpResponse, web};
use commerce_common::{db::DbPool, http};

use crate::{config::SERVICE, metrics::MetricsRegistry};

/// The newest migration version, which `/ready` expects to be applied.
#[derive(Clone)]
pub struct ExpectedMigration(pub String);

pub async fn health() -> HttpResponse {
    http::alive(SERVICE)
}

pub async fn ready(
    pool: web::Data<DbPool>,
    expected: web::Data<ExpectedMigration>,
) -> HttpResponse {
    http::readiness(
        SERVICE,
        commerce_common::db::ready(&pool, &expected.0).await,
    )
}

pub async fn metrics(registry: web::Data<MetricsRegistry>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(registry.render())
}

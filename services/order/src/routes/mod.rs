//! HTTP routes: the orders API (in the OpenAPI document) and the
//! operational endpoints (health, readiness, metrics).

mod extract;
pub mod orders;
pub mod request_trace;
pub mod schemas;

use actix_web::{HttpResponse, web};
use commerce_common::{db::DbPool, http};

pub use extract::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};

use crate::{
    config::SERVICE,
    metrics::{MetricsRegistry, OrderMetrics},
    store,
};

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

pub async fn metrics(
    pool: web::Data<DbPool>,
    registry: web::Data<MetricsRegistry>,
    order_metrics: web::Data<OrderMetrics>,
) -> HttpResponse {
    match pool.get().await {
        Ok(mut conn) => match store::count_by_status(&mut conn).await {
            Ok(counts) => order_metrics.set_counts(&counts),
            Err(error) => tracing::warn!(%error, "counting orders for /metrics"),
        },
        Err(error) => tracing::warn!(%error, "no connection for /metrics"),
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(registry.render())
}

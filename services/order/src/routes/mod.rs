//! HTTP routes: the orders and products API (in the OpenAPI document) and `/metrics`,
//! which refreshes the per-status gauges first (the other operational
//! endpoints are mounted by `commerce_common::service`).

pub mod admin;
mod extract;
pub mod orders;
pub mod products;
pub mod request_trace;
pub mod schemas;

use actix_web::{HttpResponse, web};
use commerce_common::{
    db::DbPool,
    service::{self, MetricsRegistry},
};

pub use extract::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};

use crate::{config::RedriveConfig, metrics::OrderMetrics, store};

pub async fn metrics(
    pool: web::Data<DbPool>,
    registry: web::Data<MetricsRegistry>,
    order_metrics: web::Data<OrderMetrics>,
    redrive: web::Data<RedriveConfig>,
) -> HttpResponse {
    match pool.get().await {
        Ok(mut conn) => {
            match store::count_by_status(&mut conn).await {
                Ok(counts) => order_metrics.set_counts(&counts),
                Err(error) => tracing::warn!(%error, "counting orders for /metrics"),
            }
            match store::redrive::count(&mut conn, redrive.schedule(), chrono::Utc::now()).await {
                Ok((in_flight, stuck)) => order_metrics.set_sagas(in_flight, stuck),
                Err(error) => tracing::warn!(%error, "counting sagas for /metrics"),
            }
        }
        Err(error) => tracing::warn!(%error, "no connection for /metrics"),
    }
    service::metrics(registry).await
}

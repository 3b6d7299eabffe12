//! What every service mounts before its own API: the pool and extractor
//! configs as app data, `/health` (alive), `/ready` (database and
//! migrations), `/metrics`, the 404 for unknown routes, and the header of
//! its OpenAPI document.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use paperclip::v2::models::{DefaultApiRaw, Info};
use prometheus_client::{encoding::text::encode, registry::Registry};

use super::Service;
use crate::{
    config::DatabaseConfig,
    db::{self, DbPool},
    http,
};

/// The finished metrics registry (the service's own metrics and the consumer
/// runtime's), shared with the `/metrics` handler.
#[derive(Clone)]
pub(super) struct MetricsRegistry(Arc<Registry>);

impl MetricsRegistry {
    fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.0).expect("writing to a String cannot fail");
        text
    }
}

/// The readiness check: the database answers and has the newest migration
/// this binary applied (`/ready`, and the gateway's `GET /api/health`).
pub struct Readiness {
    service: &'static str,
    pool: DbPool,
    expected_migration: String,
}

impl Readiness {
    pub async fn check(&self) -> Result<(), String> {
        db::ready(&self.pool, &self.expected_migration).await
    }
}

/// The app data and routes every service mounts before its own.
#[derive(Clone)]
pub(super) struct Operational {
    /// What each HTTP worker opens its own pool with.
    database: DatabaseConfig,
    readiness: web::Data<Readiness>,
    pub(super) registry: web::Data<MetricsRegistry>,
    json_limit: usize,
}

impl Operational {
    /// `pool` is the service's main one (for `/ready`), `database` what
    /// each HTTP worker's pool is opened with; `expected_migration` is what
    /// [`db::migrate`] returned; `json_limit` bounds request bodies.
    pub(super) fn new(
        service: &'static str,
        pool: DbPool,
        database: DatabaseConfig,
        expected_migration: String,
        registry: Registry,
        json_limit: usize,
    ) -> Self {
        Self {
            database,
            readiness: web::Data::new(Readiness {
                service,
                pool,
                expected_migration,
            }),
            registry: web::Data::new(MetricsRegistry(Arc::new(registry))),
            json_limit,
        }
    }

    /// Registers the worker's pool (`web::Data<DbPool>`), the readiness
    /// check, the metrics registry, the extractor configs, `/health` and
    /// `/ready`. Called on each HTTP worker's thread, inside its runtime:
    /// the pool opened here is the worker's own (see [`db::worker_pool`]).
    pub(super) fn configure(&self, cfg: &mut web::ServiceConfig) {
        let pool = db::worker_pool(&self.database)
            .expect("the same settings built the service's main pool");
        cfg.app_data(web::Data::new(pool))
            .app_data(self.readiness.clone())
            .app_data(self.registry.clone())
            .app_data(http::json_config(self.json_limit))
            .app_data(http::query_config())
            .app_data(http::path_config())
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready));
    }
}

async fn health(readiness: web::Data<Readiness>) -> HttpResponse {
    http::alive(readiness.service)
}

async fn ready(readiness: web::Data<Readiness>) -> HttpResponse {
    http::readiness(readiness.service, readiness.check().await)
}

/// `GET /metrics`: the registry in the OpenMetrics text format, after the
/// service brought its gauges up to date ([`Service::refresh_metrics`]).
pub(super) async fn metrics<S: Service>(
    service: web::Data<S>,
    registry: web::Data<MetricsRegistry>,
) -> HttpResponse {
    service.refresh_metrics().await;
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(registry.render())
}

/// Default service for unknown routes: 404 in the common error shape.
pub async fn unknown_route() -> Result<HttpResponse, http::ApiError> {
    Err(http::not_found().await)
}

/// The header of a service's OpenAPI document (the gateway merges them).
pub(super) fn api_spec(title: &str, description: Option<&str>) -> DefaultApiRaw {
    DefaultApiRaw {
        info: Info {
            title: title.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: description.map(Into::into),
            ..Default::default()
        },
        ..Default::default()
    }
}

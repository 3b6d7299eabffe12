//! The order service on the shared skeleton (`commerce_common::service`):
//! its migrations, its saga consumer, its background tasks (the order change
//! listener for long-polling, the idempotency key purge, the re-driver) and
//! its routes.

use std::sync::Arc;

use actix_web::{
    App,
    body::BoxBody,
    middleware::from_fn,
    web::{self as actix, Data},
};
use commerce_common::{
    db::{self, DbPool},
    events::topics,
    service::{self, AppFactory, Consumer, Context, Service},
};
use diesel_migrations::embed_migrations;
use paperclip::actix::web::{self, ServiceConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    catalog::Placement,
    config::{CONSUMER_GROUP, CancellationConfig, IdempotencyConfig, RedriveConfig, Settings},
    metrics::OrderMetrics,
    order_changes::OrderChanges,
    redrive,
    routes::{admin, orders, products, request_trace::trace_requests},
    saga::SagaHandler,
    store,
};

pub type Application = service::Application<OrderService>;

pub struct OrderService {
    pool: DbPool,
    metrics: Data<OrderMetrics>,
    changes: Data<OrderChanges>,
    cancellation: Data<CancellationConfig>,
    redrive: Data<RedriveConfig>,
    placement: Data<Placement>,
}

impl Service for OrderService {
    type Settings = Settings;
    const NAME: &'static str = "order-service";
    const API_DESCRIPTION: Option<&'static str> =
        Some("Orders: place, read, list, cancel; the product catalog they are priced from.");
    const MIGRATIONS: db::Migrations = db::Migrations::new(
        db::Runtime::OutboxAndConsumer,
        embed_migrations!("../../db/migrations/order"),
    );
    /// 100 lines fit many times over.
    const JSON_LIMIT: usize = 64 * 1024;

    async fn new(settings: &Settings, context: Context<'_>) -> anyhow::Result<Self> {
        Ok(Self {
            pool: context.pool.clone(),
            metrics: Data::new(OrderMetrics::register(context.registry)),
            changes: Data::new(OrderChanges::new(
                context.registry,
                context.shutdown.clone(),
            )),
            cancellation: Data::new(settings.cancellation.clone()),
            redrive: Data::new(settings.redrive.clone()),
            placement: Data::new(Placement::new(settings.quotas.clone())),
        })
    }

    fn consumer(&self) -> Option<Consumer> {
        Some(Consumer {
            group: CONSUMER_GROUP,
            topics: &[topics::PAYMENTS, topics::DELIVERIES],
            handler: Arc::new(SagaHandler::new(self.metrics.get_ref().clone())),
        })
    }

    fn spawn_tasks(
        &self,
        settings: &Settings,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let mut tasks = vec![
            self.changes
                .spawn_listener(settings.database.url.expose())?,
            tokio::spawn(purge_idempotency_keys(
                self.pool.clone(),
                settings.idempotency.clone(),
                shutdown.clone(),
            )),
        ];
        // Re-drives are answered through the saga consumer: without it they
        // would only fill the outbox.
        if settings.saga.enabled && settings.redrive.enabled {
            tasks.push(tokio::spawn(redrive::run(
                self.pool.clone(),
                settings.redrive.clone(),
                self.metrics.get_ref().clone(),
                shutdown.clone(),
            )));
        }
        Ok(tasks)
    }

    fn configure(&self, cfg: &mut actix::ServiceConfig) {
        cfg.app_data(self.cancellation.clone())
            .app_data(self.redrive.clone())
            .app_data(self.placement.clone())
            .app_data(self.metrics.clone())
            .app_data(self.changes.clone())
            .route("/admin/sagas", actix::get().to(admin::page))
            .route("/admin/sagas/stuck", actix::get().to(admin::stuck))
            .route(
                "/admin/sagas/{id}/redrive",
                actix::post().to(admin::redrive_now),
            );
    }

    fn api(&self, cfg: &mut ServiceConfig<'_>) {
        cfg.service(
            web::resource("/api/orders")
                .route(web::post().to(orders::place_order))
                .route(web::get().to(orders::list_orders)),
        )
        .service(web::resource("/api/orders/{id}").route(web::get().to(orders::get_order)))
        .service(
            web::resource("/api/orders/{id}/cancel").route(web::post().to(orders::cancel_order)),
        )
        .service(web::resource("/api/products").route(web::get().to(products::list_products)))
        .service(web::resource("/api/products/{sku}").route(web::get().to(products::get_product)));
    }

    fn wrap(app: App<impl AppFactory<Body = BoxBody>>) -> App<impl AppFactory> {
        app.wrap(from_fn(trace_requests))
    }

    /// The per-status and saga gauges are counted on every scrape.
    async fn refresh_metrics(&self) {
        let mut conn = match self.pool.get().await {
            Ok(conn) => conn,
            Err(error) => return tracing::warn!(%error, "no connection for /metrics"),
        };
        match store::count_by_status(&mut conn).await {
            Ok(counts) => self.metrics.set_counts(&counts),
            Err(error) => tracing::warn!(%error, "counting orders for /metrics"),
        }
        let schedule = self.redrive.schedule();
        match store::redrive::count(&mut conn, schedule, chrono::Utc::now()).await {
            Ok((in_flight, stuck)) => self.metrics.set_sagas(in_flight, stuck),
            Err(error) => tracing::warn!(%error, "counting sagas for /metrics"),
        }
    }
}

/// Deletes expired idempotency keys every `purge_interval` until shutdown.
async fn purge_idempotency_keys(
    pool: DbPool,
    config: IdempotencyConfig,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.purge_interval()) => {}
        }
        let purged = match pool.get().await {
            Ok(mut conn) => store::purge_idempotency_keys(&mut conn, config.retention)
                .await
                .map_err(anyhow::Error::from),
            Err(error) => Err(error.into()),
        };
        match purged {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired idempotency keys deleted"),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "deleting expired idempotency keys failed")
            }
        }
    }
}

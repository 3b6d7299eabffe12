//! Builds the service: migrations, pool, the saga consumer, the order
//! change listener (long-polling) and the HTTP server, bound (port 0
//! allowed) and ready to run.

use std::sync::Arc;

use actix_web::{App, HttpServer, middleware::from_fn, web as actix};
use anyhow::Context;
use commerce_common::{
    consumer, db, dead_letters,
    events::topics,
    service::{self, Operational, RunningService},
};
use diesel_migrations::embed_migrations;
use paperclip::actix::{OpenApiExt, web};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{CONSUMER_GROUP, IdempotencyConfig, SERVICE, Settings},
    metrics::OrderMetrics,
    order_changes::OrderChanges,
    redrive,
    routes::{self, admin, orders, products, request_trace::trace_requests},
    saga::SagaHandler,
    store,
};

pub const MIGRATIONS: db::Migrations = db::Migrations::new(
    db::Runtime::OutboxAndConsumer,
    embed_migrations!("../../db/migrations/order"),
);

/// Largest accepted JSON body (100 lines fit many times over).
const JSON_LIMIT: usize = 64 * 1024;

pub struct Application(RunningService);

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.quotas.validate()?;
        let verifier = settings.auth.verifier()?;
        let expected = db::migrate(&settings.database, MIGRATIONS)
            .await
            .context("migrating the order database")?;
        let pool = db::pool(&settings.database)?;

        let mut registry = Registry::default();
        let order_metrics = OrderMetrics::register(&mut registry);
        let shutdown = CancellationToken::new();
        let consumer = settings.saga.enabled.then(|| {
            let identity = consumer::Identity::new(
                settings.kafka.broker_list(),
                CONSUMER_GROUP,
                [topics::PAYMENTS, topics::DELIVERIES],
            );
            consumer::spawn(
                pool.clone(),
                identity,
                settings.consumer.clone(),
                Arc::new(SagaHandler::new(order_metrics.clone())),
                &mut registry,
                shutdown.clone(),
            )
        });

        let changes = OrderChanges::new(&mut registry, shutdown.clone());
        let change_listener = changes.spawn_listener(settings.database.url.expose())?;
        let key_purge = tokio::spawn(purge_idempotency_keys(
            pool.clone(),
            settings.idempotency.clone(),
            shutdown.clone(),
        ));
        // Re-drives are answered through the saga consumer: without it they
        // would only fill the outbox.
        let redriver = (settings.saga.enabled && settings.redrive.enabled).then(|| {
            tokio::spawn(redrive::run(
                pool.clone(),
                settings.redrive.clone(),
                order_metrics.clone(),
                shutdown.clone(),
            ))
        });
        // The running service awaits one background task on shutdown: the
        // consumer (releasing its leases), then the change listener and the
        // key purge.
        let background = tokio::spawn(async move {
            if let Some(consumer) = consumer {
                consumer.await.ok();
            }
            change_listener.await.ok();
            key_purge.await.ok();
            if let Some(redriver) = redriver {
                redriver.await.ok();
            }
        });

        let (listener, port) = service::bind(&settings.http.address())?;
        let operational = Operational::new(SERVICE, pool, expected, registry, JSON_LIMIT);
        let verifier = actix::Data::new(verifier);
        let order_metrics = actix::Data::new(order_metrics);
        let changes = actix::Data::new(changes);
        let cancellation = actix::Data::new(settings.cancellation.clone());
        let redrive_config = actix::Data::new(settings.redrive.clone());
        let quotas = actix::Data::new(settings.quotas.clone());
        let server = HttpServer::new(move || {
            App::new()
                .configure(|cfg| operational.configure(cfg))
                .app_data(verifier.clone())
                .app_data(cancellation.clone())
                .app_data(redrive_config.clone())
                .app_data(quotas.clone())
                .app_data(order_metrics.clone())
                .app_data(changes.clone())
                .route("/metrics", actix::get().to(routes::metrics))
                .route("/admin/sagas", actix::get().to(admin::page))
                .route("/admin/sagas/stuck", actix::get().to(admin::stuck))
                .route(
                    "/admin/sagas/{id}/redrive",
                    actix::post().to(admin::redrive_now),
                )
                .wrap(from_fn(trace_requests))
                .wrap_api_with_spec(service::api_spec(
                    SERVICE,
                    "Orders: place, read, list, cancel; the product catalog they are priced from.",
                ))
                .service(
                    web::resource("/api/orders")
                        .route(web::post().to(orders::place_order))
                        .route(web::get().to(orders::list_orders)),
                )
                .service(web::resource("/api/orders/{id}").route(web::get().to(orders::get_order)))
                .service(
                    web::resource("/api/orders/{id}/cancel")
                        .route(web::post().to(orders::cancel_order)),
                )
                .service(
                    web::resource("/api/products").route(web::get().to(products::list_products)),
                )
                .service(
                    web::resource("/api/products/{sku}")
                        .route(web::get().to(products::get_product)),
                )
                .with_json_spec_at("/openapi.json")
                .default_service(actix::to(service::unknown_route))
                .build()
        })
        .workers(settings.http.worker_threads())
        .disable_signals()
        .listen(listener)?
        .run();
        Ok(Self(RunningService::new(
            port,
            server,
            Some(background),
            shutdown,
        )))
    }

    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// Cancelling it stops the service as SIGINT/SIGTERM would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.0.shutdown_token()
    }

    /// See [`RunningService::run_until_stopped`].
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.0.run_until_stopped().await
    }
}

/// Deletes expired idempotency keys every `purge_interval` until shutdown.
async fn purge_idempotency_keys(
    pool: db::DbPool,
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

/// The `replay-dead-letters [ID]...` command: the consumer group's dead
/// letters run through the service's handler again (see
/// `commerce_common::dead_letters`).
pub async fn replay_dead_letters(settings: Settings, ids: &[String]) -> anyhow::Result<()> {
    let pool = db::pool(&settings.database)?;
    let handler = SagaHandler::new(OrderMetrics::register(&mut Registry::default()));
    dead_letters::replay_command(&pool, CONSUMER_GROUP, &handler, ids).await
}

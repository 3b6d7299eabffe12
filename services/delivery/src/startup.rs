//! Builds the service: migrations, pool, the saga consumer and the HTTP
//! server, bound (port 0 allowed) and ready to run.

use std::sync::Arc;

use actix_web::{App, HttpServer, web as actix};
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
    config::{CONSUMER_GROUP, SERVICE, Settings},
    metrics::DeliveryMetrics,
    routes::deliveries,
    saga::DeliverySaga,
};

pub const MIGRATIONS: db::Migrations = db::Migrations::new(
    db::Runtime::OutboxAndConsumer,
    embed_migrations!("../../db/migrations/delivery"),
);

const JSON_LIMIT: usize = 16 * 1024;

pub struct Application(RunningService);

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.windows.validate()?;
        settings.quotas.validate()?;
        let verifier = settings.auth.verifier()?;
        let expected = db::migrate(&settings.database, MIGRATIONS)
            .await
            .context("migrating the delivery database")?;
        let pool = db::pool(&settings.database)?;

        let mut registry = Registry::default();
        let delivery_metrics = DeliveryMetrics::register(&mut registry);
        let shutdown = CancellationToken::new();
        let identity = consumer::Identity::new(
            settings.kafka.broker_list(),
            CONSUMER_GROUP,
            [topics::PAYMENTS, topics::ORDERS],
        );
        let consumer = consumer::spawn(
            pool.clone(),
            identity,
            settings.consumer.clone(),
            Arc::new(DeliverySaga::new(
                settings.windows,
                settings.quotas,
                delivery_metrics.clone(),
            )),
            &mut registry,
            shutdown.clone(),
        );

        let (listener, port) = service::bind(&settings.http.address())?;
        let operational = Operational::new(SERVICE, pool, expected, registry, JSON_LIMIT);
        let verifier = actix::Data::new(verifier);
        let delivery_metrics = actix::Data::new(delivery_metrics);
        let server = HttpServer::new(move || {
            App::new()
                .configure(|cfg| operational.configure(cfg))
                .app_data(verifier.clone())
                .app_data(delivery_metrics.clone())
                .route("/metrics", actix::get().to(service::metrics))
                .wrap_api_with_spec(service::api_spec(
                    SERVICE,
                    "Deliveries of your orders: window and tracking number.",
                ))
                .service(
                    web::resource("/api/deliveries")
                        .route(web::get().to(deliveries::list_deliveries)),
                )
                .service(
                    web::resource("/api/deliveries/{order_id}")
                        .route(web::get().to(deliveries::get_delivery)),
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
            Some(consumer),
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

/// The `replay-dead-letters [ID]...` command: the consumer group's dead
/// letters run through the service's handler again (see
/// `commerce_common::dead_letters`).
pub async fn replay_dead_letters(settings: Settings, ids: &[String]) -> anyhow::Result<()> {
    let pool = db::pool(&settings.database)?;
    let handler = DeliverySaga::new(
        settings.windows,
        settings.quotas,
        DeliveryMetrics::register(&mut Registry::default()),
    );
    dead_letters::replay_command(&pool, CONSUMER_GROUP, &handler, ids).await
}

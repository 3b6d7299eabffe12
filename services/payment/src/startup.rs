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
    metrics::PaymentMetrics,
    routes::{payments, wallet},
    saga::PaymentSaga,
};

pub const MIGRATIONS: db::Migrations = db::Migrations::new(
    db::Runtime::OutboxAndConsumer,
    embed_migrations!("../../db/migrations/payment"),
);

const JSON_LIMIT: usize = 16 * 1024;

pub struct Application(RunningService);

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.wallet.validate()?;
        let verifier = settings.auth.verifier()?;
        let expected = db::migrate(&settings.database, MIGRATIONS)
            .await
            .context("migrating the payment database")?;
        let pool = db::pool(&settings.database)?;

        let mut registry = Registry::default();
        let payment_metrics = PaymentMetrics::register(&mut registry);
        let shutdown = CancellationToken::new();
        let identity = consumer::Identity::new(
            settings.kafka.broker_list(),
            CONSUMER_GROUP,
            [topics::USERS, topics::ORDERS, topics::DELIVERIES],
        );
        let consumer = consumer::spawn(
            pool.clone(),
            identity,
            settings.consumer.clone(),
            Arc::new(PaymentSaga::new(settings.wallet, payment_metrics.clone())),
            &mut registry,
            shutdown.clone(),
        );

        let (listener, port) = service::bind(&settings.http.address())?;
        let operational = Operational::new(SERVICE, pool, expected, registry, JSON_LIMIT);
        let verifier = actix::Data::new(verifier);
        let payment_metrics = actix::Data::new(payment_metrics);
        let wallet_config = actix::Data::new(settings.wallet);
        let server = HttpServer::new(move || {
            App::new()
                .configure(|cfg| operational.configure(cfg))
                .app_data(verifier.clone())
                .app_data(payment_metrics.clone())
                .app_data(wallet_config.clone())
                .route("/metrics", actix::get().to(service::metrics))
                .wrap_api_with_spec(service::api_spec(
                    SERVICE,
                    "Wallets and payments: balance, top-up, payments of your orders.",
                ))
                .service(web::resource("/api/wallet").route(web::get().to(wallet::get_wallet)))
                .service(web::resource("/api/wallet/top-up").route(web::post().to(wallet::top_up)))
                .service(
                    web::resource("/api/payments").route(web::get().to(payments::list_payments)),
                )
                .service(
                    web::resource("/api/payments/{order_id}")
                        .route(web::get().to(payments::get_payment)),
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
    let handler = PaymentSaga::new(
        settings.wallet,
        PaymentMetrics::register(&mut Registry::default()),
    );
    dead_letters::replay_command(&pool, CONSUMER_GROUP, &handler, ids).await
}

//! Builds the service: migrations, pool, the saga consumer and the HTTP
//! server, bound (port 0 allowed) and ready to run.

use std::{net::TcpListener, sync::Arc};

use actix_web::{App, HttpServer, dev::Server, web as actix};
use anyhow::Context;
use commerce_common::{consumer, db, events::topics, http};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use paperclip::{
    actix::{OpenApiExt, web},
    v2::models::{DefaultApiRaw, Info},
};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{CONSUMER_GROUP, SERVICE, Settings},
    metrics::{DeliveryMetrics, MetricsRegistry},
    routes::{self, ExpectedMigration, deliveries},
    saga::DeliverySaga,
};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../db/migrations/delivery");

const JSON_LIMIT: usize = 16 * 1024;

pub struct Application {
    port: u16,
    server: Server,
    consumer: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.windows.validate()?;
        let verifier = settings.auth.verifier()?;
        let expected = db::migrate(&settings.database, MIGRATIONS)
            .await
            .context("migrating the delivery database")?;
        let pool = db::pool(&settings.database)?;

        let mut registry = Registry::default();
        let delivery_metrics = DeliveryMetrics::register(&mut registry);
        let shutdown = CancellationToken::new();
        let topics: Vec<String> = if settings.consumer.topics.is_empty() {
            [topics::PAYMENTS, topics::ORDERS]
                .map(String::from)
                .to_vec()
        } else {
            settings.consumer.topics.clone()
        };
        let consumer_config = settings.consumer.clone().for_service(
            settings.kafka.broker_list(),
            CONSUMER_GROUP,
            topics,
        );
        let consumer = consumer::spawn(
            pool.clone(),
            consumer_config,
            Arc::new(DeliverySaga::new(
                settings.windows,
                delivery_metrics.clone(),
            )),
            &mut registry,
            shutdown.clone(),
        );

        let listener = TcpListener::bind(settings.http.address())
            .with_context(|| format!("binding {}", settings.http.address()))?;
        let port = listener.local_addr()?.port();

        let pool = actix::Data::new(pool);
        let verifier = actix::Data::new(verifier);
        let expected = actix::Data::new(ExpectedMigration(expected));
        let registry = actix::Data::new(MetricsRegistry(Arc::new(registry)));
        let delivery_metrics = actix::Data::new(delivery_metrics);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(pool.clone())
                .app_data(verifier.clone())
                .app_data(expected.clone())
                .app_data(registry.clone())
                .app_data(delivery_metrics.clone())
                .app_data(http::json_config(JSON_LIMIT))
                .app_data(http::query_config())
                .app_data(http::path_config())
                .route("/health", actix::get().to(routes::health))
                .route("/ready", actix::get().to(routes::ready))
                .route("/metrics", actix::get().to(routes::metrics))
                .wrap_api_with_spec(api_spec())
                .service(
                    web::resource("/api/deliveries")
                        .route(web::get().to(deliveries::list_deliveries)),
                )
                .service(
                    web::resource("/api/deliveries/{order_id}")
                        .route(web::get().to(deliveries::get_delivery)),
                )
                .with_json_spec_at("/openapi.json")
                .default_service(actix::to(unknown_route))
                .build()
        })
        .disable_signals()
        .listen(listener)?
        .run();
        Ok(Self {
            port,
            server,
            consumer,
            shutdown,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cancelling it stops the service as SIGINT/SIGTERM would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until SIGINT/SIGTERM or the shutdown token, then stops the
    /// HTTP server gracefully and lets the consumer release its leases.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let stop_reason = tokio::select! {
            result = &mut server => {
                self.shutdown.cancel();
                result??;
                "the HTTP server stopped"
            }
            () = self.shutdown.cancelled() => "shutdown requested",
            signal = shutdown_signal() => signal,
        };
        tracing::info!(reason = stop_reason, "stopping");
        self.shutdown.cancel();
        handle.stop(true).await;
        self.consumer.await.ok();
        Ok(())
    }
}

async fn unknown_route() -> Result<actix_web::HttpResponse, http::ApiError> {
    Err(http::not_found().await)
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn api_spec() -> DefaultApiRaw {
    DefaultApiRaw {
        info: Info {
            title: SERVICE.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: Some("Deliveries of your orders: window and tracking number.".into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

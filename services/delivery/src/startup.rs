//! The delivery service on the shared skeleton (`commerce_common::service`):
//! its migrations, its saga consumer and its routes.

use std::sync::Arc;

use actix_web::web::Data;
use commerce_common::{
    consumer::ParticipantMetrics,
    db,
    events::topics,
    service::{self, Consumer, Context, Service},
};
use diesel_migrations::embed_migrations;
use paperclip::actix::web::{self, ServiceConfig};

use crate::{
    config::{CONSUMER_GROUP, QuotasConfig, Settings, WindowsConfig},
    metrics,
    routes::deliveries,
    saga::DeliverySaga,
};

pub type Application = service::Application<DeliveryService>;

pub struct DeliveryService {
    metrics: Data<ParticipantMetrics>,
    windows: WindowsConfig,
    quotas: QuotasConfig,
}

impl Service for DeliveryService {
    type Settings = Settings;
    const NAME: &'static str = "delivery-service";
    const API_DESCRIPTION: Option<&'static str> =
        Some("Deliveries of your orders: window and tracking number.");
    const MIGRATIONS: db::Migrations = db::Migrations::new(
        db::Runtime::OutboxAndConsumer,
        embed_migrations!("../../db/migrations/delivery"),
    );

    async fn new(settings: &Settings, context: Context<'_>) -> anyhow::Result<Self> {
        Ok(Self {
            metrics: Data::new(metrics::register(context.registry)),
            windows: settings.windows,
            quotas: settings.quotas,
        })
    }

    fn consumer(&self) -> Option<Consumer> {
        let handler = DeliverySaga::new(self.windows, self.quotas, self.metrics.get_ref().clone());
        Some(Consumer {
            group: CONSUMER_GROUP,
            topics: &[topics::PAYMENTS, topics::ORDERS],
            handler: Arc::new(handler),
        })
    }

    fn api(&self, cfg: &mut ServiceConfig<'_>) {
        cfg.app_data(self.metrics.clone())
            .service(
                web::resource("/api/deliveries").route(web::get().to(deliveries::list_deliveries)),
            )
            .service(
                web::resource("/api/deliveries/{order_id}")
                    .route(web::get().to(deliveries::get_delivery)),
            );
    }
}

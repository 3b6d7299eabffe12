//! The payment service on the shared skeleton (`commerce_common::service`):
//! its migrations, its saga consumer and its routes.

use std::sync::Arc;

use actix_web::web::Data;
use commerce_common::{
    db,
    events::topics,
    service::{self, Consumer, Context, Service},
};
use diesel_migrations::embed_migrations;
use paperclip::actix::web::{self, ServiceConfig};

use crate::{
    config::{CONSUMER_GROUP, Settings, WalletConfig},
    metrics::PaymentMetrics,
    routes::{payments, wallet},
    saga::PaymentSaga,
};

pub type Application = service::Application<PaymentService>;

pub struct PaymentService {
    metrics: Data<PaymentMetrics>,
    wallet: Data<WalletConfig>,
}

impl Service for PaymentService {
    type Settings = Settings;
    const NAME: &'static str = "payment-service";
    const API_DESCRIPTION: Option<&'static str> =
        Some("Wallets and payments: balance, top-up, payments of your orders.");
    const MIGRATIONS: db::Migrations = db::Migrations::new(
        db::Runtime::OutboxAndConsumer,
        embed_migrations!("../../db/migrations/payment"),
    );

    async fn new(settings: &Settings, context: Context<'_>) -> anyhow::Result<Self> {
        Ok(Self {
            metrics: Data::new(PaymentMetrics::register(context.registry)),
            wallet: Data::new(settings.wallet),
        })
    }

    fn consumer(&self) -> Option<Consumer> {
        let handler = PaymentSaga::new(*self.wallet.get_ref(), self.metrics.payments.clone());
        Some(Consumer {
            group: CONSUMER_GROUP,
            topics: &[topics::USERS, topics::ORDERS, topics::DELIVERIES],
            handler: Arc::new(handler),
        })
    }

    fn api(&self, cfg: &mut ServiceConfig<'_>) {
        cfg.app_data(self.metrics.clone())
            .app_data(self.wallet.clone())
            .service(web::resource("/api/wallet").route(web::get().to(wallet::get_wallet)))
            .service(web::resource("/api/wallet/top-up").route(web::post().to(wallet::top_up)))
            .service(web::resource("/api/payments").route(web::get().to(payments::list_payments)))
            .service(
                web::resource("/api/payments/{order_id}")
                    .route(web::get().to(payments::get_payment)),
            );
    }
}

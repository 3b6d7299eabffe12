//! `GET /api/wallet`, `POST /api/wallet/top-up`.

use commerce_common::{
    auth::AuthUser,
    db::DbPool,
    http::{ApiError, FieldError},
};
use paperclip::actix::{api_v2_operation, web};

use super::schemas::{TopUpRequest, Wallet};
use crate::{
    config::WalletConfig,
    domain::TopUpAmount,
    metrics::PaymentMetrics,
    store::{self, TopUpError},
};

/// Your wallet
///
/// Opened with the initial credit the first time you are seen.
#[api_v2_operation(tags(Wallet))]
pub async fn get_wallet(
    user: AuthUser,
    pool: web::Data<DbPool>,
    config: web::Data<WalletConfig>,
) -> Result<web::Json<Wallet>, ApiError> {
    let mut conn = pool.get().await?;
    let wallet = store::wallet(&mut conn, user.user_id, config.initial_credit_cents).await?;
    Ok(web::Json(wallet.into()))
}

/// Top up your wallet
///
/// `amount_cents` from 1 to the configured maximum. A top-up may not raise
/// the balance above the configured limit (409 BALANCE_LIMIT). Refunds are
/// always credited in full, even above the limit (they return your own
/// money); until the balance is below the limit again, no top-up fits.
#[api_v2_operation(tags(Wallet))]
pub async fn top_up(
    user: AuthUser,
    body: web::Json<TopUpRequest>,
    pool: web::Data<DbPool>,
    config: web::Data<WalletConfig>,
    metrics: web::Data<PaymentMetrics>,
) -> Result<web::Json<Wallet>, ApiError> {
    let amount = TopUpAmount::parse(body.amount_cents, config.max_top_up_cents)
        .map_err(|e: FieldError| ApiError::validation(vec![e]))?;
    let mut conn = pool.get().await?;
    let wallet = store::top_up(
        &mut conn,
        user.user_id,
        amount,
        config.initial_credit_cents,
        config.max_balance_cents,
    )
    .await
    .map_err(|error| match error {
        TopUpError::BalanceLimit(limit) => ApiError::conflict(
            "BALANCE_LIMIT",
            format!("a top-up may not raise the balance above {limit} cents"),
        ),
        TopUpError::Database(e) => ApiError::from(e),
    })?;
    metrics.top_ups.inc();
    tracing::info!(customer_id = %user.user_id, amount_cents = amount.cents(), "wallet topped up");
    Ok(web::Json(wallet.into()))
}

//! `GET /api/payments`, `GET /api/payments/{order_id}`.

use commerce_common::{
    auth::AuthUser,
    db::DbPool,
    http::{ApiError, PageQuery},
};
use paperclip::actix::{api_v2_operation, web};
use uuid::Uuid;

use super::schemas::{Payment, PaymentPage};
use crate::store;

/// The payment of one of your orders
#[api_v2_operation(tags(Payments))]
pub async fn get_payment(
    user: AuthUser,
    path: web::Path<Uuid>,
    pool: web::Data<DbPool>,
) -> Result<web::Json<Payment>, ApiError> {
    let mut conn = pool.get().await?;
    store::payment(&mut conn, user.user_id, path.into_inner())
        .await?
        .map(|p| web::Json(p.into()))
        .ok_or_else(|| ApiError::not_found("payment"))
}

/// Your payments, newest first
#[api_v2_operation(tags(Payments))]
pub async fn list_payments(
    user: AuthUser,
    query: web::Query<PageQuery>,
    pool: web::Data<DbPool>,
) -> Result<web::Json<PaymentPage>, ApiError> {
    let requested = query.page()?;
    let mut conn = pool.get().await?;
    let (rows, total) =
        store::list_payments(&mut conn, user.user_id, requested.page, requested.page_size).await?;
    let items = rows.into_iter().map(Payment::from).collect();
    Ok(web::Json(PaymentPage::new(requested, items, total)))
}

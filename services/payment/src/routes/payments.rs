//! `GET /api/payments`, `GET /api/payments/{order_id}`.

use commerce_common::{
    auth::AuthUser,
    db::DbPool,
    http::{ApiError, Page},
};
use paperclip::actix::{api_v2_operation, web};
use uuid::Uuid;

use super::schemas::{ListQuery, Payment, PaymentPage};
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
    query: web::Query<ListQuery>,
    pool: web::Data<DbPool>,
) -> Result<web::Json<PaymentPage>, ApiError> {
    let requested = Page::parse(query.page, query.page_size)?;
    let mut conn = pool.get().await?;
    let (items, total_items) =
        store::list_payments(&mut conn, user.user_id, requested.page, requested.page_size).await?;
    Ok(web::Json(PaymentPage {
        items: items.into_iter().map(Payment::from).collect(),
        page: requested.page,
        page_size: requested.page_size,
        total_items,
        total_pages: requested.total_pages(total_items),
    }))
}

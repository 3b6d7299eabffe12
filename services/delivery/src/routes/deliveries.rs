//! `GET /api/deliveries`, `GET /api/deliveries/{order_id}`.

use commerce_common::{
    auth::AuthUser,
    db::DbPool,
    http::{ApiError, PageQuery},
};
use paperclip::actix::{api_v2_operation, web};
use uuid::Uuid;

use super::schemas::{Delivery, DeliveryPage};
use crate::store;

/// The delivery of one of your orders
#[api_v2_operation(tags(Deliveries))]
pub async fn get_delivery(
    user: AuthUser,
    path: web::Path<Uuid>,
    pool: web::Data<DbPool>,
) -> Result<web::Json<Delivery>, ApiError> {
    let mut conn = pool.get().await?;
    store::delivery(&mut conn, user.user_id, path.into_inner())
        .await?
        .map(|delivery| web::Json(delivery.into()))
        .ok_or_else(|| ApiError::not_found("delivery"))
}

/// Your deliveries, newest first
#[api_v2_operation(tags(Deliveries))]
pub async fn list_deliveries(
    user: AuthUser,
    query: web::Query<PageQuery>,
    pool: web::Data<DbPool>,
) -> Result<web::Json<DeliveryPage>, ApiError> {
    let requested = query.page()?;
    let mut conn = pool.get().await?;
    let (rows, total) =
        store::list_deliveries(&mut conn, user.user_id, requested.page, requested.page_size)
            .await?;
    let items = rows.into_iter().map(Delivery::from).collect();
    Ok(web::Json(DeliveryPage::new(requested, items, total)))
}

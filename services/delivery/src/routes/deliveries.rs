//! `GET /api/deliveries`, `GET /api/deliveries/{order_id}`.

use commerce_common::{
    auth::AuthUser,
    db::DbPool,
    http::{ApiError, FieldError},
};
use paperclip::actix::{api_v2_operation, web};
use uuid::Uuid;

use super::schemas::{Delivery, DeliveryPage, ListQuery};
use crate::store;

const DEFAULT_PAGE_SIZE: i64 = 20;
const MAX_PAGE_SIZE: i64 = 100;
const MAX_PAGE: i64 = 1_000_000;

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
    query: web::Query<ListQuery>,
    pool: web::Data<DbPool>,
) -> Result<web::Json<DeliveryPage>, ApiError> {
    let page = query.page.unwrap_or(1);
    let page_size = query.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
    let mut errors = Vec::new();
    if !(1..=MAX_PAGE).contains(&page) {
        errors.push(FieldError {
            field: "page".into(),
            code: "out_of_range".into(),
            message: format!("must be between 1 and {MAX_PAGE}"),
        });
    }
    if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
        errors.push(FieldError {
            field: "page_size".into(),
            code: "out_of_range".into(),
            message: format!("must be between 1 and {MAX_PAGE_SIZE}"),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let mut conn = pool.get().await?;
    let (items, total_items) =
        store::list_deliveries(&mut conn, user.user_id, page, page_size).await?;
    Ok(web::Json(DeliveryPage {
        items: items.into_iter().map(Delivery::from).collect(),
        page,
        page_size,
        total_items,
        total_pages: (total_items + page_size - 1) / page_size,
    }))
}

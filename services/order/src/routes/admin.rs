//! `/admin/sagas/...`: what an operator needs about sagas that stopped
//! moving (crate::redrive). Not under `/api`: the gateway does not route
//! them, and compose does not publish the service's port; they are for the
//! operator's network, like `/metrics`.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use commerce_common::{db::DbPool, http::ApiError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{config::RedriveConfig, redrive::Step, store::redrive};

/// Most stuck sagas listed at once.
const MAX_LIMIT: i64 = 1_000;

#[derive(Debug, Deserialize)]
pub struct StuckQuery {
    limit: Option<i64>,
}

/// One stuck saga.
#[derive(Debug, Serialize, Deserialize)]
pub struct StuckSaga {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub status: String,
    /// What the order waits for: payment, delivery, refund, cancellation.
    pub step: String,
    pub redrive_attempts: i32,
    pub last_redrive_at: Option<DateTime<Utc>>,
    /// The order's last move.
    pub updated_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StuckSagas {
    pub items: Vec<StuckSaga>,
    /// The settings they were judged by.
    pub max_attempts: i32,
}

/// `GET /admin/sagas/stuck[?limit=N]`: in-flight orders whose re-drives are
/// exhausted, longest stuck first.
pub async fn stuck(
    pool: web::Data<DbPool>,
    config: web::Data<RedriveConfig>,
    query: web::Query<StuckQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "INVALID_QUERY",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let mut conn = pool.get().await.map_err(ApiError::internal)?;
    let rows = redrive::stuck(&mut conn, config.schedule(), Utc::now(), limit)
        .await
        .map_err(ApiError::internal)?;
    let items = rows
        .iter()
        .map(|order| StuckSaga {
            order_id: order.order.id,
            customer_id: order.order.customer_id,
            status: order.order.status.clone(),
            step: Step::of(order).as_str().to_owned(),
            redrive_attempts: order.redrive_attempts,
            last_redrive_at: order.redriven_at,
            updated_at: order.order.updated_at,
            created_at: order.order.created_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(StuckSagas {
        items,
        max_attempts: config.max_attempts,
    }))
}

/// `POST /admin/sagas/{id}/redrive`: re-drive an in-flight order at once,
/// with a fresh count of attempts (after an operator fixed what kept it
/// stuck). 202; 404 `NOT_IN_FLIGHT` for an order no saga works on.
pub async fn redrive_now(
    pool: web::Data<DbPool>,
    config: web::Data<RedriveConfig>,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let order_id = path.into_inner();
    let mut conn = pool.get().await.map_err(ApiError::internal)?;
    let found = redrive::redrive_now(&mut conn, order_id, config.schedule(), Utc::now())
        .await
        .map_err(ApiError::internal)?;
    if !found {
        return Err(ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "NOT_IN_FLIGHT",
            format!("no saga is working on order {order_id} (unknown, or it has ended)"),
        ));
    }
    tracing::info!(%order_id, "re-drive asked for by an operator");
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "order_id": order_id,
        "redrive": "scheduled",
    })))
}

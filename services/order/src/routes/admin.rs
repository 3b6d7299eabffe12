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

/// `GET /admin/sagas`: the same for a person, as a page that refreshes
/// itself every 5 s: sagas in flight, stuck ones with their step, attempts
/// and last move, and the command that re-drives one.
pub async fn page(
    pool: web::Data<DbPool>,
    config: web::Data<RedriveConfig>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = pool.get().await.map_err(ApiError::internal)?;
    let now = Utc::now();
    let (in_flight, stuck_count) = redrive::count(&mut conn, config.schedule(), now)
        .await
        .map_err(ApiError::internal)?;
    let stuck = redrive::stuck(&mut conn, config.schedule(), now, 100)
        .await
        .map_err(ApiError::internal)?;
    let mut rows = String::new();
    for order in &stuck {
        // Every value is a UUID, a status, a step, a number or a time: no
        // markup can come from the database.
        rows.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            order.order.id,
            order.order.status,
            Step::of(order).as_str(),
            order.redrive_attempts,
            order
                .redriven_at
                .map_or_else(|| "-".to_owned(), |t| t.format("%F %T UTC").to_string()),
            order.order.updated_at.format("%F %T UTC"),
        ));
    }
    if rows.is_empty() {
        rows.push_str("<tr><td colspan=6>none: every saga is moving</td></tr>");
    }
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5>\
         <title>Sagas</title><style>body{{font-family:sans-serif;margin:2em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}\
         .bad{{color:#b00}}</style></head><body>\
         <h1>Sagas</h1><p>{in_flight} in flight; <span class={cls}>{stuck_count} stuck</span> \
         (re-driven {max} times without a move; re-drive after {after} s, backing off to \
         {backoff} s)</p>\
         <table><tr><th>order</th><th>status</th><th>waits for</th><th>re-drives</th>\
         <th>last re-drive</th><th>last move</th></tr>{rows}</table>\
         <p>Re-drive one after fixing the cause: \
         <code>curl -X POST http://&lt;order-service&gt;/admin/sagas/&lt;order&gt;/redrive</code>\
         </p></body></html>",
        cls = if stuck_count > 0 { "bad" } else { "" },
        max = config.max_attempts,
        after = config.after.as_secs(),
        backoff = config.max_backoff.as_secs(),
    );
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html))
}

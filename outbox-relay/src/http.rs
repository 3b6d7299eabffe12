//! The relay's HTTP face: Prometheus `/metrics`, the JSON `/api/status`, the
//! live replication-lag dashboard at `/` (assets embedded, no network),
//! `/health` (the process answers) and `/ready` (every source streams).

use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, dev::Server, http::header, web};
use serde::Serialize;

use crate::metrics::{Metrics, SourceSnapshot, SourceState};

const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");

#[derive(Serialize)]
struct Status {
    generated_at: chrono::DateTime<chrono::Utc>,
    sources: Vec<SourceSnapshot>,
}

/// Binds `address` and returns the server (not yet running) and its port.
pub fn serve(address: &str, metrics: Arc<Metrics>) -> std::io::Result<(Server, u16)> {
    let data = web::Data::from(metrics);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/", web::get().to(dashboard))
            .route("/dashboard.js", web::get().to(script))
            .route("/dashboard.css", web::get().to(stylesheet))
            .route("/api/status", web::get().to(status))
            .route("/metrics", web::get().to(prometheus))
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready))
    })
    .workers(1)
    .disable_signals()
    .bind(address)?;
    let port = server.addrs().first().map_or(0, |a| a.port());
    Ok((server.run(), port))
}

async fn dashboard() -> HttpResponse {
    asset("text/html; charset=utf-8", DASHBOARD_HTML)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

async fn stylesheet() -> HttpResponse {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn status(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok().json(Status {
        generated_at: chrono::Utc::now(),
        sources: metrics.snapshot(),
    })
}

async fn prometheus(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))
        .body(metrics.encode())
}

/// Liveness: the process answers.
async fn health() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

/// Readiness: every source is streaming (503 naming the others, with their
/// state and last error, otherwise).
async fn ready(metrics: web::Data<Metrics>) -> HttpResponse {
    let waiting: Vec<serde_json::Value> = metrics
        .snapshot()
        .into_iter()
        .filter(|s| s.state != SourceState::Streaming)
        .map(|s| serde_json::json!({"name": s.name, "state": s.state, "last_error": s.last_error}))
        .collect();
    if waiting.is_empty() {
        HttpResponse::Ok().body("ready")
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"not_streaming": waiting}))
    }
}

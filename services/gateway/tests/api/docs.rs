//! The merged OpenAPI document and the offline Swagger UI assets.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{app_with_upstream, spawn_app};
use test_support::SendExt;

/// Every public route the gateway serves, by method and path.
const GATEWAY_ROUTES: [(&str, &str); 4] = [
    ("post", "/api/register"),
    ("post", "/api/login"),
    ("get", "/api/me"),
    ("get", "/api/health"),
];

const SERVICE_ROUTES: [(&str, &str); 12] = [
    ("post", "/api/orders"),
    ("get", "/api/orders"),
    ("get", "/api/orders/{id}"),
    ("post", "/api/orders/{id}/cancel"),
    ("get", "/api/products"),
    ("get", "/api/products/{sku}"),
    ("get", "/api/wallet"),
    ("post", "/api/wallet/top-up"),
    ("get", "/api/payments"),
    ("get", "/api/payments/{order_id}"),
    ("get", "/api/deliveries"),
    ("get", "/api/deliveries/{order_id}"),
];

#[tokio::test]
async fn the_document_lists_every_route_with_bearer_auth_and_error_schemas() {
    let (app, _upstream) = app_with_upstream(|_| {}).await;
    let response = app.http.get(app.url("/openapi.json")).sent().await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in GATEWAY_ROUTES.iter().chain(SERVICE_ROUTES.iter()) {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} missing"
        );
    }
    let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
    listed.sort_unstable();
    assert!(
        listed.iter().all(|p| p.starts_with("/api/")),
        "non-public paths listed: {listed:?}"
    );
    assert!(doc.get("x-unavailable-services").is_none());

    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"],
        serde_json::json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "The token from /api/register or /api/login"})
    );
    assert_eq!(
        doc["paths"]["/api/me"]["get"]["security"],
        serde_json::json!([{"bearerAuth": []}])
    );
    assert!(
        doc["paths"]["/api/register"]["post"]
            .get("security")
            .is_none()
    );
    assert_eq!(
        doc["paths"]["/api/register"]["post"]["responses"]["409"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/ErrorBody"
    );
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(
        doc["paths"]["/api/register"]["post"]["requestBody"].is_object(),
        "register documents its body"
    );
}

#[tokio::test]
async fn an_unreachable_service_does_not_break_the_document() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/openapi.json")).sent().await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    for (method, path) in GATEWAY_ROUTES {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    assert_eq!(
        doc["x-unavailable-services"],
        serde_json::json!(["order", "payment", "delivery"])
    );
}

#[tokio::test]
async fn swagger_ui_is_served_from_bundled_assets() {
    let app = spawn_app().await;
    let page = app.http.get(app.url("/swagger-ui.html")).sent().await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("/openapi.json"));
    assert!(
        !html.contains("https://"),
        "the page must not load anything remote"
    );
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
    ] {
        let response = app
            .http
            .get(app.url(&format!("/swagger-ui/{asset}")))
            .sent()
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 1000);
    }
    let short = app.http.get(app.url("/swagger-ui")).sent().await;
    assert_eq!(short.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(short.headers()["location"], "/swagger-ui.html");
    // paperclip's asset handler panics on unknown names; they are 404 here.
    for missing in [
        "/swagger-ui/nope.js",
        "/swagger-ui/../Cargo.toml",
        "/swagger-ui/index.html",
    ] {
        let response = app.http.get(app.url(missing)).sent().await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{missing}");
    }
}

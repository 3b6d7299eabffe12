//! Response hygiene (issue 21, item 9): token answers are not cacheable,
//! `/api/health` does not show database errors, Swagger UI takes no
//! configuration from its address and keeps no token, `/metrics` is not on
//! the public port.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{app_with_upstream, spawn_app};
use test_support::SendExt;

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn token_responses_are_not_stored_by_caches() {
    let app = spawn_app().await;
    let registered = app.register("nora@example.com", PASSWORD, "Nora").await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    assert_eq!(registered.headers()["cache-control"], "no-store");
    let login = app.login("nora@example.com", PASSWORD).await;
    assert_eq!(login.status(), StatusCode::OK);
    assert_eq!(login.headers()["cache-control"], "no-store");
    assert_eq!(login.headers()["pragma"], "no-cache");
}

#[tokio::test]
async fn health_does_not_echo_database_errors() {
    let (app, _upstream) = app_with_upstream(|_| {}).await;
    let healthy = app.http.get(app.url("/api/health")).sent().await;
    assert_eq!(healthy.status(), StatusCode::OK);

    // Cut the gateway off its database: no new connections, existing ones
    // terminated. The raw errors name the database.
    let admin = test_support::admin_client().await;
    admin
        .execute(
            &format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false", app.db.name),
            &[],
        )
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&app.db.name],
        )
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let report: Value = loop {
        let response = app.http.get(app.url("/api/health")).sent().await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            break response.json().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/api/health never noticed the database is gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    admin
        .execute(
            &format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true", app.db.name),
            &[],
        )
        .await
        .unwrap();
    let gateway = &report["services"][0];
    assert_eq!(gateway["name"], "gateway");
    assert_eq!(gateway["status"], "unavailable");
    assert_eq!(gateway["detail"], "database unavailable", "{report}");
    assert!(!report.to_string().contains(&app.db.name), "{report}");
}

#[tokio::test]
async fn swagger_ui_takes_no_configuration_from_its_address_and_keeps_no_token() {
    let app = spawn_app().await;
    for query in [
        "?url=https://evil.example/spec.json",
        "?configUrl=https://evil.example/config.json",
        "?foo=1&url=//evil.example/spec.json",
    ] {
        let response = app
            .http
            .get(app.url(&format!("/swagger-ui.html{query}")))
            .sent()
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{query}");
        assert_eq!(response.headers()["location"], "/swagger-ui.html");
    }
    let page = app.http.get(app.url("/swagger-ui.html")).text_body().await;
    assert!(page.contains("queryConfigEnabled: false"), "{page}");
    assert!(page.contains("persistAuthorization: false"), "{page}");
    assert!(!page.contains("persistAuthorization: true"), "{page}");
}

#[tokio::test]
async fn metrics_are_served_on_their_own_port_only() {
    let app = spawn_app().await;
    app.login("nobody@example.com", "some password").await;
    let public = app.http.get(app.url("/metrics")).sent().await;
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let private = app
        .http
        .get(format!("{}/metrics", app.metrics_address))
        .sent()
        .await;
    assert_eq!(private.status(), StatusCode::OK);
    let text = private.text().await.unwrap();
    assert!(
        text.contains(r#"gateway_login_attempts_total{outcome="invalid"} 1"#),
        "{text}"
    );
    let other = app
        .http
        .get(format!("{}/api/health", app.metrics_address))
        .sent()
        .await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}

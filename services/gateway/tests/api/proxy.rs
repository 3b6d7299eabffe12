//! Forwarding to the services: path, query, headers and body through, the
//! hop-by-hop headers out, request ids, limits, and each failure mode.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use test_support::{SendExt, assert_error_code, mint_token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::helpers::{app_with_upstream, spawn_app_with};

fn bearer() -> String {
    format!("Bearer {}", mint_token(Uuid::new_v4()))
}

#[tokio::test]
async fn each_prefix_is_forwarded_with_method_path_query_headers_and_body() {
    let (app, upstream) = app_with_upstream(|_| {}).await;
    let token = bearer();
    for (method, path) in [
        ("POST", "/api/orders"),
        ("GET", "/api/orders?page=2&page_size=5"),
        ("POST", "/api/orders/0b6f/cancel"),
        ("GET", "/api/wallet"),
        ("POST", "/api/wallet/top-up"),
        ("GET", "/api/payments/abc?x=%20y"),
        ("GET", "/api/deliveries"),
    ] {
        let request = app
            .http
            .request(method.parse().unwrap(), app.url(path))
            .header("Authorization", &token)
            .header("Idempotency-Key", "key-1")
            .header("X-Forwarded-For", "203.0.113.9");
        let request = if method == "POST" {
            request
                .header("Content-Type", "application/json")
                .body(r#"{"amount_cents":500}"#)
        } else {
            request
        };
        let response = request.sent().await;
        assert_eq!(response.status(), StatusCode::OK, "{method} {path}");
        assert_eq!(response.headers()["x-upstream"], "echo");
        let echo: Value = response.json().await.unwrap();
        let (expected_path, expected_query) = path.split_once('?').unwrap_or((path, ""));
        assert_eq!(echo["method"], method);
        assert_eq!(echo["path"], expected_path);
        assert_eq!(echo["query"], expected_query);
        assert_eq!(echo["headers"]["authorization"], token.as_str());
        assert_eq!(echo["headers"]["idempotency-key"], "key-1");
        assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        if method == "POST" {
            assert_eq!(echo["body"], r#"{"amount_cents":500}"#);
            assert_eq!(echo["headers"]["content-length"], "20");
        }
    }
    assert_eq!(upstream.hits(), 7);
}

#[tokio::test]
async fn a_services_429_reaches_the_client_with_its_retry_after_and_code() {
    // The order service's quotas answer 429 with Retry-After: the client
    // must see both, not a gateway error.
    let (app, upstream) = app_with_upstream(|_| {}).await;
    let response = app
        .http
        .get(app.url("/api/orders/over-quota"))
        .header("Authorization", bearer())
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "42");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "ORDER_RATE_LIMITED");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn unknown_paths_are_not_forwarded() {
    let (app, upstream) = app_with_upstream(|_| {}).await;
    for path in ["/api/ordersx", "/api/other", "/internal"] {
        let response = app
            .http
            .get(app.url(path))
            .header("Authorization", bearer())
            .sent()
            .await;
        assert_error_code(response, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    }
    let wrong_method = app.http.get(app.url("/api/register")).sent().await;
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers()["allow"], "POST");
    let body: Value = wrong_method.json().await.unwrap();
    assert_eq!(body["code"], "METHOD_NOT_ALLOWED");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn invalid_tokens_are_refused_at_the_edge() {
    let (app, upstream) = app_with_upstream(|_| {}).await;
    let missing = app.http.get(app.url("/api/orders")).sent().await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let garbage = app
        .http
        .get(app.url("/api/orders"))
        .header("Authorization", "Bearer x.y.z")
        .sent()
        .await;
    assert_eq!(garbage.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn the_product_catalog_is_public_to_read_and_nothing_else_is() {
    let (app, upstream) = app_with_upstream(|_| {}).await;
    for path in [
        "/api/products",
        "/api/products?page=2&page_size=5",
        "/api/products/BOOK-1",
    ] {
        let response = app.http.get(app.url(path)).sent().await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "GET {path} without a token"
        );
        let echo: Value = response.json().await.unwrap();
        let (expected_path, expected_query) = path.split_once('?').unwrap_or((path, ""));
        assert_eq!(echo["path"], expected_path);
        assert_eq!(echo["query"], expected_query);
    }
    assert_eq!(upstream.hits(), 3);
    // Writes to the catalog, and everything else, still need a token.
    for (method, path, status) in [
        ("POST", "/api/products", StatusCode::UNAUTHORIZED),
        ("DELETE", "/api/products/BOOK-1", StatusCode::UNAUTHORIZED),
        ("GET", "/api/orders", StatusCode::UNAUTHORIZED),
        ("GET", "/api/productsx", StatusCode::NOT_FOUND),
    ] {
        let response = app
            .http
            .request(method.parse().unwrap(), app.url(path))
            .sent()
            .await;
        assert_eq!(response.status(), status, "{method} {path}");
    }
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways() {
    let (app, _upstream) = app_with_upstream(|_| {}).await;
    let response = app
        .http
        .get(app.url("/api/orders"))
        .header("Authorization", bearer())
        .header("Connection", "keep-alive, X-Hop-Secret")
        .header("X-Hop-Secret", "must not pass")
        .header("Keep-Alive", "timeout=30")
        .header("Proxy-Authorization", "Basic c2VjcmV0")
        .header("TE", "trailers")
        .header("Trailer", "x-checksum")
        .header("X-End-To-End", "kept")
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    for name in ["proxy-authenticate", "keep-alive", "trailer"] {
        assert!(!response.headers().contains_key(name), "{name} came back");
    }
    let echo: Value = response.json().await.unwrap();
    let seen = echo["headers"].as_object().unwrap();
    for name in [
        "x-hop-secret",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
    ] {
        assert!(!seen.contains_key(name), "{name} was forwarded: {seen:?}");
    }
    assert_eq!(seen["x-end-to-end"], "kept");
    assert_ne!(
        seen["host"].as_str(),
        Some(app.address.trim_start_matches("http://"))
    );
}

#[tokio::test]
async fn long_poll_preferences_pass_both_ways() {
    // GET /api/orders/{id} with `Prefer: wait=N` (the order service's
    // long-poll): the preference goes up, `Preference-Applied` comes back.
    let (app, _upstream) = app_with_upstream(|_| {}).await;
    assert!(
        gateway::config::ProxyConfig::default().request_timeout > Duration::from_secs(20),
        "by default the gateway must outwait the longest long-poll (20 s)"
    );
    let response = app
        .http
        .get(app.url("/api/orders/0b6f"))
        .header("Authorization", bearer())
        .header("Prefer", "wait=5")
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["preference-applied"], "wait=5");
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["prefer"], "wait=5");
}

#[tokio::test]
async fn request_ids_are_propagated_or_generated() {
    let (app, _upstream) = app_with_upstream(|_| {}).await;
    let given = app
        .http
        .get(app.url("/api/wallet"))
        .header("Authorization", bearer())
        .header("X-Request-Id", "req-12345")
        .sent()
        .await;
    assert_eq!(given.headers()["x-request-id"], "req-12345");
    let echo: Value = given.json().await.unwrap();
    assert_eq!(echo["headers"]["x-request-id"], "req-12345");

    let generated = app
        .http
        .get(app.url("/api/wallet"))
        .header("Authorization", bearer())
        .sent()
        .await;
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(Uuid::parse_str(&id).is_ok(), "{id}");
    let echo: Value = generated.json().await.unwrap();
    assert_eq!(echo["headers"]["x-request-id"], id.as_str());

    // The gateway's own answers carry one too, errors included.
    let own = app.http.get(app.url("/api/nothing-here")).sent().await;
    assert!(own.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_with_or_without_a_length() {
    let (app, upstream) = app_with_upstream(|c| c.proxy.body_limit_bytes = 1024).await;
    let token = bearer();
    let within = app
        .http
        .post(app.url("/api/orders"))
        .header("Authorization", &token)
        .body(vec![b'a'; 1024])
        .sent()
        .await;
    assert_eq!(within.status(), StatusCode::OK);
    let echo: Value = within.json().await.unwrap();
    assert_eq!(echo["body_len"], 1024);

    let over = app
        .http
        .post(app.url("/api/orders"))
        .header("Authorization", &token)
        .body(vec![b'a'; 1025])
        .sent()
        .await;
    assert_error_code(over, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;
    assert_eq!(
        upstream.hits(),
        1,
        "a body with a length over the limit is never forwarded"
    );

    // Chunked: no length up front, cut off while streaming.
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let chunk = "b".repeat(600);
    let request = format!(
        "POST /api/orders HTTP/1.1\r\nHost: {address}\r\nAuthorization: {token}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("an answer to the chunked request")
        .ok();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn a_service_that_is_down_is_503() {
    // Upstreams point at ports where nothing listens.
    let app = spawn_app_with(|_| {}).await;
    let response = app
        .http
        .get(app.url("/api/deliveries"))
        .header("Authorization", bearer())
        .sent()
        .await;
    assert_error_code(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
    )
    .await;
}

#[tokio::test]
async fn a_service_that_does_not_answer_in_time_is_504() {
    let (app, _upstream) =
        app_with_upstream(|c| c.proxy.request_timeout = Duration::from_millis(300)).await;
    let response = app
        .http
        .get(app.url("/api/orders/123/slow"))
        .header("Authorization", bearer())
        .sent()
        .await;
    assert_error_code(response, StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT").await;
}

#[tokio::test]
async fn health_reports_every_service() {
    let (app, _upstream) = app_with_upstream(|_| {}).await;
    let response = app.http.get(app.url("/api/health")).sent().await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    let names: Vec<&str> = body["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gateway", "order", "payment", "delivery"]);

    let down = spawn_app_with(|_| {}).await;
    let response = down.http.get(down.url("/api/health")).sent().await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    let services = body["services"].as_array().unwrap();
    assert_eq!(services[0]["status"], "ok");
    assert!(
        services[1..].iter().all(|s| s["status"] == "unavailable"),
        "{services:?}"
    );

    // The gateway's own probes.
    assert_eq!(
        down.http.get(down.url("/health")).sent().await.status(),
        StatusCode::OK
    );
    assert_eq!(
        down.http.get(down.url("/ready")).sent().await.status(),
        StatusCode::OK
    );
    down.login("nobody@example.com", "some password").await;
    let metrics = down
        .http
        .get(format!("{}/metrics", down.metrics_address))
        .text_body()
        .await;
    assert!(
        metrics.contains(r#"gateway_login_attempts_total{outcome="invalid"} 1"#),
        "{metrics}"
    );
}

//! Hostile text in every input of every gateway operation (issue 21, item 8):
//! NUL, lone UTF-16 surrogates escaped in JSON, 10 KB and 1 MB strings. The
//! operations come from the running app's `/openapi.json`, minus the routes
//! the gateway forwards (the services have their own tests); every answer is
//! a 4xx for a documented text input and never a 5xx.

use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::helpers::{app_with_upstream, spawn_app_with};
use test_support::{SendExt, assert_error_code};

const PASSWORD: &str = "correct horse battery";

/// JSON string literals (raw JSON text: a lone surrogate is not a Rust string).
fn hostile_literals() -> Vec<(String, String)> {
    vec![
        ("NUL".into(), r#""\u0000""#.into()),
        (
            "NUL inside".into(),
            r#""a\u0000b@example.com correct horse""#.into(),
        ),
        ("lone high surrogate".into(), r#""\ud800""#.into()),
        (
            "lone low surrogate".into(),
            r#""correct horse \udfff battery""#.into(),
        ),
        ("10 KB".into(), format!("\"{}\"", "a".repeat(10 * 1024))),
        ("1 MB".into(), format!("\"{}\"", "a".repeat(1024 * 1024))),
        (
            "1 MB with NUL".into(),
            format!("\"\\u0000{}\"", "a".repeat(1024 * 1024)),
        ),
    ]
}

/// A valid value for a body field, by its name.
fn valid(field: &str, n: usize) -> Value {
    if field.contains("email") {
        json!(format!("sweep{n}@example.com"))
    } else if field.contains("password") {
        json!(PASSWORD)
    } else {
        json!("Sweep")
    }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => doc
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or(schema),
        None => schema,
    }
}

#[tokio::test]
async fn hostile_text_in_every_gateway_operation_is_answered_4xx_never_5xx() {
    let (app, _upstream) = app_with_upstream(|c| {
        c.login_throttle.max_failures_per_email_and_address = 10_000;
        c.login_throttle.max_failures_per_address = 10_000;
        c.login_throttle.slow_down_after_failures_per_email = 10_000;
    })
    .await;
    let registered: Value = app
        .register("sweeper@example.com", PASSWORD, "Sweeper")
        .await
        .json()
        .await
        .unwrap();
    let token = registered["token"].as_str().unwrap().to_owned();
    let doc: Value = app.http.get(app.url("/openapi.json")).json_body().await;

    let mut operations = 0;
    let mut inputs = 0;
    let mut failures = Vec::new();
    let mut n = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let forwarded = gateway::routes::proxy::ROUTES
            .iter()
            .any(|(prefix, _)| path == prefix || path.starts_with(&format!("{prefix}/")));
        if forwarded {
            continue;
        }
        for (method, operation) in item.as_object().unwrap() {
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            operations += 1;
            let secured = operation.get("security").is_some();
            let request = |url: String| {
                let mut request = app.http.request(method.clone(), url);
                if secured {
                    request = request.bearer_auth(&token);
                }
                request
            };
            let fields: Vec<String> = operation
                .pointer("/requestBody/content/application~1json/schema")
                .map(|schema| resolve(&doc, schema))
                .and_then(|schema| schema.get("properties"))
                .and_then(Value::as_object)
                .map(|properties| {
                    properties
                        .iter()
                        .filter(|(_, p)| resolve(&doc, p)["type"] == "string")
                        .map(|(name, _)| name.clone())
                        .collect()
                })
                .unwrap_or_default();
            let mut check = |what: String, status: StatusCode, expect_4xx: bool| {
                let ok = if expect_4xx {
                    status.is_client_error()
                } else {
                    !status.is_server_error()
                };
                if !ok {
                    failures.push(format!("{method} {path} {what}: {status}"));
                }
            };
            for (label, literal) in hostile_literals() {
                for field in &fields {
                    inputs += 1;
                    n += 1;
                    let mut body = Map::new();
                    for other in &fields {
                        body.insert(other.clone(), valid(other, n));
                    }
                    body.insert(field.clone(), json!("@HOSTILE@"));
                    let text = Value::Object(body)
                        .to_string()
                        .replace("\"@HOSTILE@\"", &literal);
                    let status = request(app.url(path))
                        .header("Content-Type", "application/json")
                        .body(text)
                        .sent()
                        .await
                        .status();
                    check(format!("body field {field} = {label}"), status, true);
                }
                if fields.is_empty() && !label.contains("MB") {
                    // No documented text input: hostile text in the query is
                    // ignored or refused, never a 5xx.
                    let encoded = literal.trim_matches('"').replace("\\u0000", "%00");
                    let status = request(app.url(&format!("{path}?q={encoded}")))
                        .sent()
                        .await
                        .status();
                    check(format!("query q = {label}"), status, false);
                }
            }
        }
    }
    assert!(
        operations >= 4,
        "only {operations} gateway operations found"
    );
    assert!(inputs >= 5 * 7, "only {inputs} text inputs swept");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A NUL in the login email used to reach PostgreSQL (500, no failure
/// counted): now it is an unknown user (401) and counts against the throttle.
#[tokio::test]
async fn a_nul_in_the_login_email_is_401_and_counts_as_a_failure() {
    let app = spawn_app_with(|c| c.login_throttle.max_failures_per_email_and_address = 2).await;
    for _ in 0..2 {
        let response = app.login("ada\u{0}@example.com", PASSWORD).await;
        assert_error_code(response, StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS").await;
    }
    let blocked = app.login("ada\u{0}@example.com", PASSWORD).await;
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
}

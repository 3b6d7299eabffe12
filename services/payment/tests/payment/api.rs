//! The HTTP API: authentication, the wallet, top-up validation, owners only.

use crate::helpers::{INITIAL_CREDIT, spawn_app};
use commerce_common::events::{Event, OrderCreated};
use serde_json::{Value, json};
use test_support::{SendExt, assert_error_code};
use uuid::Uuid;

#[tokio::test]
async fn every_api_route_needs_a_valid_token() {
    let app = spawn_app().await;
    let order = Uuid::new_v4();
    for path in [
        "/api/wallet",
        "/api/payments",
        &format!("/api/payments/{order}"),
    ] {
        app.assert_needs_token(path).await;
    }
    let response = app
        .post("/api/wallet/top-up", None)
        .json(&json!({"amount_cents": 100}))
        .sent()
        .await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn operational_endpoints_answer() {
    let app = spawn_app().await;
    app.assert_operational_endpoints(&[
        "/api/wallet",
        "/api/wallet/top-up",
        "/api/payments",
        "/api/payments/{order_id}",
    ])
    .await;
    let response = app.get("/nope", None).sent().await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn a_new_wallet_starts_with_the_initial_credit_and_can_be_topped_up() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();
    let wallet: Value = app.get("/api/wallet", Some(user)).json_body().await;
    assert_eq!(wallet["balance_cents"], INITIAL_CREDIT);
    assert_eq!(wallet["customer_id"], user.to_string());

    let response = app
        .post("/api/wallet/top-up", Some(user))
        .json(&json!({"amount_cents": 2_500}))
        .sent()
        .await;
    assert_eq!(response.status(), 200);
    let wallet: Value = response.json().await.unwrap();
    assert_eq!(wallet["balance_cents"], INITIAL_CREDIT + 2_500);

    // Someone else's wallet is untouched.
    let other: Value = app
        .get("/api/wallet", Some(Uuid::new_v4()))
        .json_body()
        .await;
    assert_eq!(other["balance_cents"], INITIAL_CREDIT);
}

#[tokio::test]
async fn top_up_rejects_invalid_amounts_with_field_errors() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();
    let cases = [
        (json!({}), 422, "VALIDATION_FAILED", Some("required")),
        (
            json!({"amount_cents": 0}),
            422,
            "VALIDATION_FAILED",
            Some("must_be_positive"),
        ),
        (
            json!({"amount_cents": -100}),
            422,
            "VALIDATION_FAILED",
            Some("must_be_positive"),
        ),
        (
            json!({"amount_cents": 10_000_001}),
            422,
            "VALIDATION_FAILED",
            Some("too_large"),
        ),
        (
            json!({"amount_cents": i64::MAX}),
            422,
            "VALIDATION_FAILED",
            Some("too_large"),
        ),
        (json!({"amount_cents": "100"}), 422, "INVALID_BODY", None),
        (json!({"amount_cents": 1.5}), 422, "INVALID_BODY", None),
        (json!({"amount_cents": 1e30}), 422, "INVALID_BODY", None),
    ];
    for (body, status, code, field_code) in cases {
        let response = app
            .post("/api/wallet/top-up", Some(user))
            .json(&body)
            .sent()
            .await;
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], code, "{body}: {error}");
        if let Some(field_code) = field_code {
            assert_eq!(error["fields"][0]["field"], "amount_cents");
            assert_eq!(error["fields"][0]["code"], field_code, "{body}");
        }
    }
    let response = app
        .post("/api/wallet/top-up", Some(user))
        .header("content-type", "application/json")
        .body("{\"amount_cents\": ")
        .sent()
        .await;
    assert_error_code(response, 400, "MALFORMED_JSON").await;

    // Nothing was credited by any of that.
    let wallet: Value = app.get("/api/wallet", Some(user)).json_body().await;
    assert_eq!(wallet["balance_cents"], INITIAL_CREDIT);
}

#[tokio::test]
async fn the_balance_limit_is_a_conflict() {
    let app = spawn_app().await;
    let user = Uuid::new_v4();
    // Default limit 10^12 cents, top-ups of at most 10^7: set the balance
    // close to the limit directly.
    app.get("/api/wallet", Some(user)).sent().await;
    app.database
        .client()
        .await
        .execute(
            "UPDATE wallets SET balance_cents = 1000000000000 - 5 WHERE customer_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    let response = app
        .post("/api/wallet/top-up", Some(user))
        .json(&json!({"amount_cents": 6}))
        .sent()
        .await;
    assert_error_code(response, 409, "BALANCE_LIMIT").await;
}

#[tokio::test]
async fn payments_are_visible_to_their_owner_only() {
    let app = spawn_app().await;
    let owner = Uuid::new_v4();
    let order_id = Uuid::new_v4();
    app.publish(&Event::OrderCreated(OrderCreated {
        order_id,
        customer_id: owner,
        items: vec![],
        total_cents: 300,
        shipping_address: crate::helpers::address(),
    }))
    .await;
    crate::helpers::wait_for_value(&app.database, "SELECT count(*) FROM payments", 1).await;

    let path = format!("/api/payments/{order_id}");
    let payment: Value = app.get(&path, Some(owner)).json_body().await;
    assert_eq!(payment["status"], "CONFIRMED");
    assert_eq!(payment["amount_cents"], 300);
    let page: Value = app.get("/api/payments", Some(owner)).json_body().await;
    assert_eq!(page["total_items"], 1);
    assert_eq!(page["items"][0]["order_id"], order_id.to_string());

    let stranger = Uuid::new_v4();
    let response = app.get(&path, Some(stranger)).sent().await;
    assert_error_code(response, 404, "NOT_FOUND").await;
    let page: Value = app.get("/api/payments", Some(stranger)).json_body().await;
    assert_eq!(page["total_items"], 0);

    let response = app
        .get("/api/payments/not-a-uuid", Some(owner))
        .sent()
        .await;
    assert_eq!(response.status(), 404);
    let response = app
        .get("/api/payments?page_size=0", Some(owner))
        .sent()
        .await;
    assert_eq!(response.status(), 422);
    let response = app.get("/api/payments?page=abc", Some(owner)).sent().await;
    assert_eq!(response.status(), 400);
}

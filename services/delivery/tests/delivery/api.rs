//! The HTTP API: authentication, owners only, operational endpoints.

use crate::helpers::spawn_app;
use commerce_common::events::{Event, PaymentConfirmed};
use serde_json::Value;
use test_support::{SendExt, assert_error_code};
use uuid::Uuid;

#[tokio::test]
async fn every_api_route_needs_a_valid_token() {
    let app = spawn_app().await;
    let order = Uuid::new_v4();
    for path in ["/api/deliveries", &format!("/api/deliveries/{order}")] {
        app.assert_needs_token(path).await;
    }
}

#[tokio::test]
async fn operational_endpoints_answer() {
    let app = spawn_app().await;
    app.assert_operational_endpoints(&["/api/deliveries", "/api/deliveries/{order_id}"])
        .await;
}

#[tokio::test]
async fn deliveries_are_visible_to_their_owner_only() {
    let app = spawn_app().await;
    let owner = Uuid::new_v4();
    let order_id = Uuid::new_v4();
    app.publish(&Event::PaymentConfirmed(PaymentConfirmed {
        payment_id: Uuid::new_v4(),
        order_id,
        customer_id: owner,
        amount_cents: 100,
    }))
    .await;
    crate::helpers::wait_for_value(&app.database, "SELECT count(*) FROM deliveries", 1).await;

    let path = format!("/api/deliveries/{order_id}");
    let delivery: Value = app.get(&path, Some(owner)).json_body().await;
    assert_eq!(delivery["status"], "SCHEDULED");
    assert!(
        delivery["tracking_number"]
            .as_str()
            .unwrap()
            .starts_with("TRK-")
    );
    let page: Value = app.get("/api/deliveries", Some(owner)).json_body().await;
    assert_eq!(page["total_items"], 1);

    let stranger = Uuid::new_v4();
    let response = app.get(&path, Some(stranger)).sent().await;
    assert_error_code(response, 404, "NOT_FOUND").await;
    let page: Value = app.get("/api/deliveries", Some(stranger)).json_body().await;
    assert_eq!(page["total_items"], 0);
    let response = app.get("/api/deliveries/42", Some(owner)).sent().await;
    assert_eq!(response.status(), 404);
    let response = app
        .get("/api/deliveries?page_size=1000", Some(owner))
        .sent()
        .await;
    assert_eq!(response.status(), 422);
}

//! The HTTP API: authentication, owners only, operational endpoints.

use crate::helpers::spawn_app;
use commerce_common::events::{Event, PaymentConfirmed};
use serde_json::Value;
use uuid::Uuid;

#[tokio::test]
async fn every_api_route_needs_a_valid_token() {
    let app = spawn_app().await;
    let order = Uuid::new_v4();
    for path in ["/api/deliveries", &format!("/api/deliveries/{order}")] {
        let response = app.get(path, None).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "UNAUTHORIZED");
        let response = app
            .get(path, None)
            .bearer_auth("not.a.token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path} with a bad token");
    }
}

#[tokio::test]
async fn operational_endpoints_answer() {
    let app = spawn_app().await;
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let response = app.get(path, None).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let spec: Value = app
        .get("/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in ["/api/deliveries", "/api/deliveries/{order_id}"] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the spec: {spec}"
        );
    }
    test_support::wait_until(crate::helpers::WAIT, "consumer_lag in /metrics", || async {
        let metrics = app
            .get("/metrics", None)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metrics.contains("consumer_lag{").then_some(())
    })
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
    let delivery: Value = app
        .get(&path, Some(owner))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(delivery["status"], "SCHEDULED");
    assert!(
        delivery["tracking_number"]
            .as_str()
            .unwrap()
            .starts_with("TRK-")
    );
    let page: Value = app
        .get("/api/deliveries", Some(owner))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total_items"], 1);

    let stranger = Uuid::new_v4();
    let response = app.get(&path, Some(stranger)).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["code"], "NOT_FOUND");
    let page: Value = app
        .get("/api/deliveries", Some(stranger))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total_items"], 0);
    let response = app
        .get("/api/deliveries/42", Some(owner))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = app
        .get("/api/deliveries?page_size=1000", Some(owner))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
}

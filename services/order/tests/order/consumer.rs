//! The saga handler wired to the consumer runtime: events produced to the
//! test broker move the order, a record published twice applies once, and
//! the runtime's lag shows in /metrics.

use std::time::Duration;

use crate::helpers::{OutboxTap, payment_confirmed, placed_order, spawn_consuming_app};
use chrono::Utc;
use commerce_common::events::{DeliveryScheduled, Envelope, Event, topics};
use serde_json::Value;
use test_support::{ensure_topics, envelope, kafka_brokers, produce_envelope, wait_until};
use uuid::Uuid;

async fn publish(envelope: &Envelope) {
    produce_envelope(
        &kafka_brokers(),
        &envelope.aggregate_type,
        0,
        &envelope.aggregate_id,
        envelope,
    )
    .await;
}

#[tokio::test]
async fn payment_and_delivery_events_from_the_broker_move_the_order_once() {
    ensure_topics(&kafka_brokers(), &[topics::PAYMENTS, topics::DELIVERIES], 3).await;
    let app = spawn_consuming_app().await;
    let tap = OutboxTap::start(&app.db).await;
    let (customer, order_id) = placed_order(&app).await;

    let confirmed = payment_confirmed(order_id, &customer);
    // At-least-once: the same event at two offsets.
    publish(&confirmed).await;
    publish(&confirmed).await;
    let start = Utc::now();
    publish(&envelope(&Event::DeliveryScheduled(DeliveryScheduled {
        delivery_id: Uuid::new_v4(),
        order_id,
        customer_id: customer.id,
        window_start: start,
        window_end: start + chrono::Duration::hours(4),
        tracking_number: "TRK-C1".into(),
    })))
    .await;

    let id = order_id.to_string();
    let order: Value = wait_until(
        Duration::from_secs(30),
        "the order to be DELIVERY_SCHEDULED",
        || async {
            let order = app.order_json(&customer, &id).await;
            (order["status"] == "DELIVERY_SCHEDULED").then_some(order)
        },
    )
    .await;
    assert_eq!(order["delivery"]["tracking_number"], "TRK-C1");
    assert_eq!(order["payment"]["status"], "CONFIRMED");

    let events: Vec<_> = tap
        .events()
        .await
        .into_iter()
        .filter(|(t, _)| t == "OrderStatusChanged")
        .map(|(_, payload)| payload["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["PAID", "DELIVERY_SCHEDULED"]);

    let metrics = app.metrics().await;
    assert!(metrics.contains("consumer_lag"), "{metrics}");
    assert!(
        metrics.contains(r#"order_status_changes_total{status="PAID"} 1"#),
        "{metrics}"
    );
}

//! What the payment service publishes, read back from Kafka through the
//! real outbox relay: event types, payloads, keys and the trace id carried
//! over from the event that caused them; the outbox table stays empty.

use crate::helpers::{INITIAL_CREDIT, WAIT, spawn_app};
use commerce_common::events::{Event, OrderCreated, headers, topics};
use test_support::{KafkaReader, Relay, kafka_brokers};
use uuid::Uuid;

#[tokio::test]
async fn charges_failures_and_refunds_are_published_with_the_causing_trace_id() {
    let app = spawn_app().await;
    let _relay = Relay::start(&kafka_brokers(), &[("payment", &app.database)], WAIT).await;
    let mut payments = KafkaReader::new(&kafka_brokers(), topics::PAYMENTS).await;
    let customer = Uuid::new_v4();
    let order = |total_cents| OrderCreated {
        order_id: Uuid::new_v4(),
        customer_id: customer,
        items: vec![],
        total_cents,
        shipping_address: crate::helpers::address(),
    };
    let (affordable, too_expensive) = (order(400), order(INITIAL_CREDIT + 1));

    let cause = app.publish(&Event::OrderCreated(affordable.clone())).await;
    let confirmed = payments
        .wait_for(crate::helpers::WAIT, "PaymentConfirmed", |r| {
            r.key.as_deref() == Some(&affordable.order_id.to_string())
        })
        .await;
    assert_eq!(
        confirmed.header(headers::EVENT_TYPE),
        Some("PaymentConfirmed")
    );
    assert_eq!(
        confirmed.header(headers::TRACE_ID),
        Some(cause.trace_id.as_str())
    );
    let envelope = confirmed.envelope();
    assert_eq!(
        confirmed.header(headers::EVENT_ID),
        Some(envelope.event_id.to_string().as_str())
    );
    let Ok(Event::PaymentConfirmed(payload)) = envelope.event() else {
        panic!("not a PaymentConfirmed: {envelope:?}");
    };
    assert_eq!((payload.customer_id, payload.amount_cents), (customer, 400));

    app.publish(&Event::OrderCreated(too_expensive.clone()))
        .await;
    let failed = payments
        .wait_for(crate::helpers::WAIT, "PaymentFailed", |r| {
            r.key.as_deref() == Some(&too_expensive.order_id.to_string())
        })
        .await;
    let Ok(Event::PaymentFailed(payload)) = failed.envelope().event() else {
        panic!("not a PaymentFailed: {failed:?}");
    };
    assert_eq!(payload.reason, "INSUFFICIENT_FUNDS");

    app.request_cancellation(affordable.order_id, customer, "changed my mind")
        .await;
    let refunded = payments
        .wait_for(crate::helpers::WAIT, "PaymentRefunded", |r| {
            r.key.as_deref() == Some(&affordable.order_id.to_string())
        })
        .await;
    let Ok(Event::PaymentRefunded(payload)) = refunded.envelope().event() else {
        panic!("not a PaymentRefunded: {refunded:?}");
    };
    assert_eq!(payload.reason, "CUSTOMER_CANCELLED");
    assert_eq!(payload.amount_cents, 400);
    assert_eq!(payload.payment_id, {
        let Ok(Event::PaymentConfirmed(c)) = confirmed.envelope().event() else {
            unreachable!()
        };
        c.payment_id
    });
    // Three events went out through the outbox, which stays empty: its
    // trigger deletes each row in the transaction that wrote it.
    let outbox_rows: i64 = app
        .database
        .client()
        .await
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(outbox_rows, 0);
}

//! What the delivery service publishes, read back from Kafka through the
//! real outbox relay: event types, payloads, keys and the trace id carried
//! over from the event that caused them.

use crate::helpers::{WAIT, one_window, spawn_app_with};
use commerce_common::events::{Event, PaymentConfirmed, headers, topics};
use test_support::{KafkaReader, Relay, kafka_brokers};
use uuid::Uuid;

#[tokio::test]
async fn bookings_failures_and_releases_are_published_with_the_causing_trace_id() {
    let app = spawn_app_with(1, one_window(1)).await;
    let _relay = Relay::start(&kafka_brokers(), &[("delivery", &app.database)], WAIT).await;
    let mut deliveries = KafkaReader::new(&kafka_brokers(), topics::DELIVERIES).await;
    let customer = Uuid::new_v4();
    let paid = || PaymentConfirmed {
        payment_id: Uuid::new_v4(),
        order_id: Uuid::new_v4(),
        customer_id: customer,
        amount_cents: 100,
    };
    let (first, second) = (paid(), paid());
    let key_of = |order: &PaymentConfirmed| Some(order.order_id.to_string());

    let cause = app.publish(&Event::PaymentConfirmed(first.clone())).await;
    let scheduled = deliveries
        .wait_for(crate::helpers::WAIT, "DeliveryScheduled", |r| {
            r.key == key_of(&first)
        })
        .await;
    assert_eq!(
        scheduled.header(headers::EVENT_TYPE),
        Some("DeliveryScheduled")
    );
    assert_eq!(
        scheduled.header(headers::TRACE_ID),
        Some(cause.trace_id.as_str())
    );
    let Ok(Event::DeliveryScheduled(booking)) = scheduled.envelope().event() else {
        panic!("not a DeliveryScheduled: {scheduled:?}");
    };
    assert_eq!(booking.customer_id, customer);
    assert!(booking.window_end > booking.window_start);
    assert!(booking.tracking_number.starts_with("TRK-"));

    // The only window is full now.
    app.publish(&Event::PaymentConfirmed(second.clone())).await;
    let failed = deliveries
        .wait_for(crate::helpers::WAIT, "DeliveryFailed", |r| {
            r.key == key_of(&second)
        })
        .await;
    let Ok(Event::DeliveryFailed(failure)) = failed.envelope().event() else {
        panic!("not a DeliveryFailed: {failed:?}");
    };
    assert_eq!(failure.reason, "NO_CAPACITY");

    app.request_cancellation(first.order_id, customer, "changed my mind")
        .await;
    let cancelled = deliveries
        .wait_for(crate::helpers::WAIT, "DeliveryCancelled", |r| {
            r.key == key_of(&first)
        })
        .await;
    let Ok(Event::DeliveryCancelled(release)) = cancelled.envelope().event() else {
        panic!("not a DeliveryCancelled: {cancelled:?}");
    };
    assert_eq!(release.delivery_id, booking.delivery_id);
}

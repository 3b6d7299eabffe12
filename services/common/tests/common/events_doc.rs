//! docs/events.md documents the event contract of events.rs: every `Event`
//! variant has a row in the table of its topic, naming each payload field,
//! and the nested types' fields are listed. Adding a variant breaks the
//! exhaustive `match` below until it is documented here and in the doc.

use chrono::Utc;
use commerce_common::events::{
    Address, DeliveryCancelled, DeliveryFailed, DeliveryScheduled, Event,
    OrderCancellationRequested, OrderCreated, OrderLine, OrderStatusChanged, PaymentConfirmed,
    PaymentFailed, PaymentRefunded, UserRegistered, topics,
};
use uuid::Uuid;

/// One value of every variant. The `match` has no wildcard on purpose.
fn samples() -> Vec<Event> {
    let id = Uuid::nil;
    let address = Address {
        name: String::new(),
        street: String::new(),
        city: String::new(),
        postal_code: String::new(),
        country: String::new(),
    };
    let all = vec![
        Event::UserRegistered(UserRegistered {
            user_id: id(),
            email: String::new(),
            name: String::new(),
        }),
        Event::OrderCreated(OrderCreated {
            order_id: id(),
            customer_id: id(),
            items: vec![OrderLine {
                sku: String::new(),
                quantity: 1,
                unit_price_cents: 1,
            }],
            total_cents: 1,
            shipping_address: address,
        }),
        Event::OrderStatusChanged(OrderStatusChanged {
            order_id: id(),
            customer_id: id(),
            status: String::new(),
            reason: None,
        }),
        Event::OrderCancellationRequested(OrderCancellationRequested {
            order_id: id(),
            customer_id: id(),
            reason: String::new(),
        }),
        Event::PaymentConfirmed(PaymentConfirmed {
            payment_id: id(),
            order_id: id(),
            customer_id: id(),
            amount_cents: 1,
        }),
        Event::PaymentFailed(PaymentFailed {
            order_id: id(),
            customer_id: id(),
            amount_cents: 1,
            reason: String::new(),
        }),
        Event::PaymentRefunded(PaymentRefunded {
            payment_id: id(),
            order_id: id(),
            customer_id: id(),
            amount_cents: 1,
            reason: String::new(),
        }),
        Event::DeliveryScheduled(DeliveryScheduled {
            delivery_id: id(),
            order_id: id(),
            customer_id: id(),
            window_start: Utc::now(),
            window_end: Utc::now(),
            tracking_number: String::new(),
        }),
        Event::DeliveryFailed(DeliveryFailed {
            order_id: id(),
            customer_id: id(),
            reason: String::new(),
        }),
        Event::DeliveryCancelled(DeliveryCancelled {
            delivery_id: id(),
            order_id: id(),
            customer_id: id(),
        }),
    ];
    for event in &all {
        match event {
            Event::UserRegistered(_)
            | Event::OrderCreated(_)
            | Event::OrderStatusChanged(_)
            | Event::OrderCancellationRequested(_)
            | Event::PaymentConfirmed(_)
            | Event::PaymentFailed(_)
            | Event::PaymentRefunded(_)
            | Event::DeliveryScheduled(_)
            | Event::DeliveryFailed(_)
            | Event::DeliveryCancelled(_) => {}
        }
    }
    all
}

fn doc() -> String {
    let path = test_support::compose::workspace_root().join("docs/events.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines under `## <heading>` up to the next `## `.
fn section<'a>(doc: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = doc.lines().skip_while(|l| l.trim() != heading);
    assert!(lines.next().is_some(), "docs/events.md has `{heading}`");
    lines.take_while(|l| !l.starts_with("## ")).collect()
}

#[test]
fn every_event_is_documented_in_its_topics_table_with_its_payload_fields() {
    let doc = doc();
    let samples = samples();
    let mut documented_per_topic = std::collections::BTreeMap::new();
    for event in &samples {
        let (event_type, payload) = event.into_parts();
        let section = section(&doc, &format!("## Topic `{}`", event.topic()));
        let row = section
            .iter()
            .find(|l| l.starts_with(&format!("| `{event_type}` |")))
            .unwrap_or_else(|| {
                panic!(
                    "docs/events.md: no row for {event_type} under topic {}",
                    event.topic()
                )
            });
        for field in payload.as_object().expect("payloads are objects").keys() {
            assert!(
                row.contains(&format!("`{field}`")),
                "docs/events.md: {event_type} row lacks payload field `{field}`"
            );
        }
        *documented_per_topic.entry(event.topic()).or_insert(0) += 1;
    }
    // No stale rows: every event row of a topic table is a real variant.
    for topic in topics::ALL {
        let rows = section(&doc, &format!("## Topic `{topic}`"))
            .iter()
            .filter(|l| l.starts_with("| `"))
            .count();
        assert_eq!(
            rows,
            documented_per_topic.get(topic).copied().unwrap_or(0),
            "docs/events.md: event rows under topic {topic}"
        );
    }
}

#[test]
fn nested_types_and_envelope_fields_are_documented() {
    let doc = doc();
    let nested = serde_json::to_value(samples()[1].into_parts().1).unwrap();
    for (name, value) in [
        ("### Order line", &nested["items"][0]),
        ("### Address", &nested["shipping_address"]),
    ] {
        let table: Vec<&str> = doc
            .lines()
            .skip_while(|l| l.trim() != name)
            .skip(1)
            .take_while(|l| !l.starts_with('#'))
            .collect();
        for field in value.as_object().unwrap().keys() {
            assert!(
                table
                    .iter()
                    .any(|l| l.starts_with(&format!("| `{field}` |"))),
                "docs/events.md {name}: field `{field}`"
            );
        }
    }
    let envelope = section(&doc, "## The Kafka record");
    let sample = commerce_common::events::Envelope {
        event_id: Uuid::nil(),
        event_type: String::new(),
        aggregate_type: String::new(),
        aggregate_id: String::new(),
        occurred_at: Utc::now(),
        schema_version: commerce_common::events::SCHEMA_VERSION,
        trace_id: String::new(),
        payload: serde_json::Value::Null,
    };
    for field in serde_json::to_value(sample)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
    {
        assert!(
            envelope
                .iter()
                .any(|l| l.starts_with(&format!("| `{field}` |"))),
            "docs/events.md: envelope field `{field}`"
        );
    }
    for header in [
        commerce_common::events::headers::EVENT_ID,
        commerce_common::events::headers::EVENT_TYPE,
        commerce_common::events::headers::TRACE_ID,
    ] {
        assert!(
            envelope
                .iter()
                .any(|l| l.contains(&format!("header `{header}`"))),
            "docs/events.md: header `{header}`"
        );
    }
}

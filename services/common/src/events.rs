//! The event contract between services: topics, the envelope every Kafka
//! record carries, and the typed payload of every event. Documented in
//! docs/events.md; a change here is a change of the public contract.

use chrono::{DateTime, Utc};
use paperclip::actix::Apiv2Schema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Kafka topics, one per aggregate type. The outbox's `aggregate_type`
/// column holds the topic name.
pub mod topics {
    pub const USERS: &str = "users";
    pub const ORDERS: &str = "orders";
    pub const PAYMENTS: &str = "payments";
    pub const DELIVERIES: &str = "deliveries";
    pub const ALL: [&str; 4] = [USERS, ORDERS, PAYMENTS, DELIVERIES];
}

/// Kafka record header names set by the relay.
pub use commerce_base::outbox::headers;

/// Version of the envelope and payload schemas written by this code.
pub const SCHEMA_VERSION: i32 = 1;

/// The JSON value of every Kafka record, as the services read it (the wire
/// format is `commerce_base::outbox`'s); `envelope.event::<Event>()` is the
/// typed event inside, or why it cannot be read.
pub type Envelope = commerce_base::outbox::Envelope<Uuid, String, serde_json::Value>;

/// How long after an order id was made (its UUIDv7 time) an event about an
/// order that a service's own database cannot see yet is taken for one whose
/// commit is still being completed rather than for a stranger's.
///
/// A commit is not visible to other sessions at once: PostgreSQL writes and
/// flushes the commit record, and only then ends the transaction in its
/// shared state, while logical decoding streams what is flushed. A backend
/// descheduled between the two (a loaded machine) lets the event it wrote
/// travel through the broker, and an answer come back, before the row that
/// event is about can be read. Measured: 22 of 4,000 orders at 200/s on a
/// machine at load 7 stayed PENDING for good while the order service
/// ignored such answers (the inbox kept their ids, so re-drives were
/// skipped as repeats).
///
/// The gap closes within milliseconds of the commit; the window is wide to
/// cover an id made well before its placement commits (a placement queued
/// behind a busy pool on an overloaded machine). It also bounds how long an
/// event of another deployment sharing the broker, about an order this one
/// never had, holds its partition back before it is ignored.
pub const NOT_YET_VISIBLE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `order_id` (a UUIDv7) was made less than
/// [`NOT_YET_VISIBLE_WINDOW`] ago: a service that cannot see a row about it
/// should retry the event rather than ignore it. False for ids without a
/// time (UUIDv4).
pub fn made_recently(order_id: Uuid) -> bool {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    order_id.get_timestamp().is_some_and(|made| {
        let (seconds, nanos) = made.to_unix();
        let made = UNIX_EPOCH + Duration::new(seconds, nanos);
        SystemTime::now()
            .duration_since(made)
            .map_or(true, |age| age < NOT_YET_VISIBLE_WINDOW)
    })
}

/// Where an order goes: in `OrderCreated`, and as the orders API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Apiv2Schema)]
pub struct Address {
    pub name: String,
    pub street: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub shipping_address: Address,
}

/// An order moved along its state machine (PAID, DELIVERY_SCHEDULED,
/// REJECTED, CANCELLED); `reason` is set for REJECTED and CANCELLED.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatusChanged {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub status: String,
    pub reason: Option<String>,
}

/// The customer asked to cancel: payment refunds, delivery releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancellationRequested {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentConfirmed {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub amount_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub amount_cents: i64,
    /// `INSUFFICIENT_FUNDS`
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub amount_cents: i64,
    /// Why the money went back: `CUSTOMER_CANCELLED`, or the
    /// `DeliveryFailed`'s reason (`NO_CAPACITY`, `DAILY_LIMIT`).
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryScheduled {
    pub delivery_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub tracking_number: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFailed {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    /// `NO_CAPACITY` or `DAILY_LIMIT`
    pub reason: String,
}

/// A booked window was given back after the order was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCancelled {
    pub delivery_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
}

/// Every event of the system. Serialized adjacently tagged, so the tag is
/// the envelope's `event_type` and the content its `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload")]
pub enum Event {
    UserRegistered(UserRegistered),
    OrderCreated(OrderCreated),
    OrderStatusChanged(OrderStatusChanged),
    OrderCancellationRequested(OrderCancellationRequested),
    PaymentConfirmed(PaymentConfirmed),
    PaymentFailed(PaymentFailed),
    PaymentRefunded(PaymentRefunded),
    DeliveryScheduled(DeliveryScheduled),
    DeliveryFailed(DeliveryFailed),
    DeliveryCancelled(DeliveryCancelled),
}

impl Event {
    pub fn from_parts(
        event_type: &str,
        payload: serde_json::Value,
    ) -> Result<Self, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "event_type": event_type, "payload": payload }))
    }

    /// Splits into `(event_type, payload)` as stored in the outbox.
    pub fn into_parts(&self) -> (String, serde_json::Value) {
        let mut value = serde_json::to_value(self).expect("events serialize to JSON");
        let payload = value["payload"].take();
        let event_type = value["event_type"].as_str().unwrap_or_default().to_owned();
        (event_type, payload)
    }

    /// The topic (aggregate type) the event is published to.
    pub fn topic(&self) -> &'static str {
        match self {
            Event::UserRegistered(_) => topics::USERS,
            Event::OrderCreated(_)
            | Event::OrderStatusChanged(_)
            | Event::OrderCancellationRequested(_) => topics::ORDERS,
            Event::PaymentConfirmed(_) | Event::PaymentFailed(_) | Event::PaymentRefunded(_) => {
                topics::PAYMENTS
            }
            Event::DeliveryScheduled(_)
            | Event::DeliveryFailed(_)
            | Event::DeliveryCancelled(_) => topics::DELIVERIES,
        }
    }

    /// The record key: the user id for users, the order id for the saga, so
    /// every event of one order stays in one partition, in order.
    pub fn aggregate_id(&self) -> Uuid {
        match self {
            Event::UserRegistered(e) => e.user_id,
            Event::OrderCreated(e) => e.order_id,
            Event::OrderStatusChanged(e) => e.order_id,
            Event::OrderCancellationRequested(e) => e.order_id,
            Event::PaymentConfirmed(e) => e.order_id,
            Event::PaymentFailed(e) => e.order_id,
            Event::PaymentRefunded(e) => e.order_id,
            Event::DeliveryScheduled(e) => e.order_id,
            Event::DeliveryFailed(e) => e.order_id,
            Event::DeliveryCancelled(e) => e.order_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let event = Event::DeliveryFailed(DeliveryFailed {
            order_id: Uuid::new_v4(),
            customer_id: Uuid::new_v4(),
            reason: "NO_CAPACITY".into(),
        });
        let (event_type, payload) = event.into_parts();
        assert_eq!(event_type, "DeliveryFailed");
        assert_eq!(payload["reason"], "NO_CAPACITY");
        assert_eq!(Event::from_parts(&event_type, payload).unwrap(), event);
    }

    #[test]
    fn unknown_type_is_an_error() {
        assert!(Event::from_parts("Nope", serde_json::json!({})).is_err());
    }
}

//! The order's side of the saga: where an order becomes PAID, REJECTED,
//! DELIVERY_SCHEDULED or CANCELLED. Consumes the `payments` and
//! `deliveries` topics.
//!
//! Each event is first recorded as a fact on the order (what payment and
//! delivery said), then the status follows the facts along the state
//! machine ([`next_change`]). That makes the handler indifferent to order
//! *across* topics: a `DeliveryScheduled` read before its order's
//! `PaymentConfirmed` is remembered, and the order moves PENDING -> PAID ->
//! DELIVERY_SCHEDULED when the payment event arrives. Within a topic the
//! events of one order are ordered (the record key is the order id).
//!
//! - A repeated event changes nothing: facts are only ever set once per
//!   kind, and a status already reached is not reached again.
//! - An event for an order this database does not have is ignored with a
//!   warning (it belongs to another deployment sharing the broker), unless
//!   the order's id was made less than [`events::NOT_YET_VISIBLE_WINDOW`]
//!   ago: then the placement's commit may not be visible yet (its event
//!   can travel to payment and the answer come back before it is), so it
//!   is a transient error and the event is applied again after a pause.
//! - An event that contradicts what the order knows (a failure after a
//!   confirmation, another customer) is a permanent error: the consumer
//!   runtime moves it to the dead-letter table with the reason.

use std::collections::HashMap;

use commerce_common::{
    consumer::{BoxFuture, Concurrency, EventHandler, HandleError},
    events::{self, Envelope, Event},
    outbox,
};
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::{
    domain::{DeliveryState, OrderStatus, PaymentState, StatusChange},
    metrics::OrderMetrics,
    store::{self, LockedOrder, OrderRow, SagaFacts, StoreError},
};

/// Reason used when a payment failure or refund came without one.
const UNSPECIFIED: &str = "UNSPECIFIED";

#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// The event can never be applied; retrying cannot help.
    #[error("{0}")]
    Permanent(String),
    /// The database failed; the same event may succeed later.
    #[error(transparent)]
    Transient(anyhow::Error),
}

impl From<DieselError> for SagaError {
    fn from(error: DieselError) -> Self {
        SagaError::Transient(error.into())
    }
}

impl From<StoreError> for SagaError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Database(e) => SagaError::Transient(e.into()),
            StoreError::LostUpdate(_) => SagaError::Transient(error.into()),
            StoreError::IllegalTransition(_) | StoreError::CorruptStatus { .. } => {
                SagaError::Permanent(error.to_string())
            }
        }
    }
}

/// The consumer runtime's entry point: [`apply_events`] in the runtime's
/// transaction, a fetch's events at once, with metrics.
pub struct SagaHandler {
    metrics: OrderMetrics,
}

impl SagaHandler {
    pub fn new(metrics: OrderMetrics) -> Self {
        Self { metrics }
    }

    /// [`apply_events`] with metrics and the runtime's error kinds.
    async fn apply(
        &self,
        conn: &mut AsyncPgConnection,
        records: &[(&Envelope, Event)],
    ) -> Result<(), HandleError> {
        let events: Vec<(&Event, &str)> = records
            .iter()
            .map(|(envelope, event)| (event, envelope.trace_id.as_str()))
            .collect();
        let outcomes = apply_events(conn, &events)
            .await
            .map_err(|error| match error {
                SagaError::Permanent(reason) => HandleError::Permanent(reason),
                SagaError::Transient(error) => HandleError::Transient(error),
            })?;
        for outcome in outcomes {
            if let Outcome::Applied { transitions, .. } = outcome {
                for status in transitions {
                    self.metrics.status_changed(status);
                }
            }
        }
        Ok(())
    }
}

impl EventHandler for SagaHandler {
    /// The fetch's new events in two statements whatever their number: the
    /// orders locked at once, then every change and announcement written
    /// at once ([`apply_events`]).
    fn handle_all<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        records: Vec<(&'a Envelope, Event)>,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move { self.apply(conn, &records).await })
    }

    /// Payment and delivery events about an order; the others skip the inbox.
    fn wants(&self, event: &Event) -> bool {
        subject(event).is_some()
    }

    /// Every event is keyed by its order id and locks only that order's
    /// row (all of a fetch's in id order), so the payments and deliveries
    /// partitions may apply at once.
    fn concurrency(&self) -> Concurrency {
        Concurrency::ByKey
    }
}

/// What handling one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not a payment or delivery event about an order.
    NotForUs,
    /// No such order in this database.
    UnknownOrder(Uuid),
    /// The facts were recorded; the order moved through `transitions`
    /// (empty when the event changed no status, e.g. a repeat).
    Applied {
        order_id: Uuid,
        transitions: Vec<OrderStatus>,
    },
}

/// The order and customer an event is about, if it is one the order
/// service acts on.
fn subject(event: &Event) -> Option<(Uuid, Uuid)> {
    match event {
        Event::PaymentConfirmed(e) => Some((e.order_id, e.customer_id)),
        Event::PaymentFailed(e) => Some((e.order_id, e.customer_id)),
        Event::PaymentRefunded(e) => Some((e.order_id, e.customer_id)),
        Event::DeliveryScheduled(e) => Some((e.order_id, e.customer_id)),
        Event::DeliveryFailed(e) => Some((e.order_id, e.customer_id)),
        Event::DeliveryCancelled(e) => Some((e.order_id, e.customer_id)),
        Event::UserRegistered(_)
        | Event::OrderCreated(_)
        | Event::OrderStatusChanged(_)
        | Event::OrderCancellationRequested(_) => None,
    }
}

/// Applies one event to its order in one transaction: facts, status changes
/// and their `OrderStatusChanged` outbox rows.
pub async fn handle_event(
    conn: &mut AsyncPgConnection,
    event: &Event,
    trace_id: &str,
) -> Result<Outcome, SagaError> {
    let mut outcomes = conn
        .transaction::<_, SagaError, _>(async |conn| apply_events(conn, &[(event, trace_id)]).await)
        .await?;
    Ok(outcomes.pop().expect("one outcome per event"))
}

/// Applies events (each with its trace id), in order, in the caller's
/// transaction: every order they are about is locked in one statement, the
/// events are recorded and followed on the rows in memory, and the orders
/// they changed and the `OrderStatusChanged` events are written in one
/// more: two statements for a whole fetch of the consumer instead of two
/// per event. Several events of one order see each other's effects, as
/// they would one transaction after the other. One outcome per event.
pub async fn apply_events(
    conn: &mut AsyncPgConnection,
    events: &[(&Event, &str)],
) -> Result<Vec<Outcome>, SagaError> {
    let mut ids: Vec<Uuid> = events
        .iter()
        .filter_map(|(event, _)| subject(event).map(|(order_id, _)| order_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut orders: HashMap<Uuid, LockedOrder> = if ids.is_empty() {
        HashMap::new()
    } else {
        store::lock_orders(conn, &ids)
            .await?
            .into_iter()
            .map(|order| (order.row.id, order))
            .collect()
    };
    let mut announcements = Vec::new();
    let mut outcomes = Vec::with_capacity(events.len());
    for &(event, trace_id) in events {
        let Some((order_id, customer_id)) = subject(event) else {
            outcomes.push(Outcome::NotForUs);
            continue;
        };
        let Some(order) = orders.get_mut(&order_id) else {
            if events::made_recently(order_id) {
                return Err(SagaError::Transient(anyhow::anyhow!(
                    "order {order_id} is not visible yet (its placement's commit is being \
                     completed); the event is applied again after a pause"
                )));
            }
            tracing::warn!(%order_id, "event for an unknown order ignored");
            outcomes.push(Outcome::UnknownOrder(order_id));
            continue;
        };
        let row = &mut order.row;
        if row.customer_id != customer_id {
            return Err(SagaError::Permanent(format!(
                "event names customer {customer_id}, order {order_id} belongs to {}",
                row.customer_id
            )));
        }
        let before = row.facts.clone();
        record(&mut row.facts, event, row.total_cents)?;
        if row.facts != before {
            order.changed = true;
        }
        let mut transitions = Vec::new();
        while let Some(change) = next_change(row)? {
            let (status, announcement) = row.change_status(change)?;
            tracing::info!(%order_id, %status, reason = ?row.status_reason,
                %trace_id, "order status changed");
            transitions.push(status);
            announcements.push(outbox::NewRow::new(&announcement, trace_id));
            order.changed = true;
        }
        outcomes.push(Outcome::Applied {
            order_id,
            transitions,
        });
    }
    let changed: Vec<&LockedOrder> = orders.values().filter(|order| order.changed).collect();
    store::save_saga(conn, &changed, &announcements).await?;
    Ok(outcomes)
}

fn payment_state(facts: &SagaFacts) -> Result<Option<PaymentState>, SagaError> {
    facts
        .payment_status
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(SagaError::Permanent)
}

fn delivery_state(facts: &SagaFacts) -> Result<Option<DeliveryState>, SagaError> {
    facts
        .delivery_status
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(SagaError::Permanent)
}

fn contradiction(event: &Event, known: &str) -> SagaError {
    let (event_type, _) = event.into_parts();
    SagaError::Permanent(format!(
        "{event_type} contradicts what the order knows: {known}"
    ))
}

/// Records what `event` says in `facts`. Facts only move forward: a repeat
/// or a stale event leaves them unchanged.
pub fn record(facts: &mut SagaFacts, event: &Event, order_total: i64) -> Result<(), SagaError> {
    let payment = payment_state(facts)?;
    let delivery = delivery_state(facts)?;
    match event {
        Event::PaymentConfirmed(e) => match payment {
            None => {
                if e.amount_cents != order_total {
                    tracing::warn!(order_id = %e.order_id, charged = e.amount_cents, order_total,
                        "payment amount differs from the order total");
                }
                facts.payment_status = Some(PaymentState::Confirmed.as_str().into());
                facts.payment_id = Some(e.payment_id);
                facts.payment_amount_cents = Some(e.amount_cents);
            }
            Some(PaymentState::Confirmed | PaymentState::Refunded) => {}
            Some(PaymentState::Failed) => return Err(contradiction(event, "payment failed")),
        },
        Event::PaymentFailed(e) => match payment {
            None => {
                facts.payment_status = Some(PaymentState::Failed.as_str().into());
                facts.payment_amount_cents = Some(e.amount_cents);
                facts.payment_reason = Some(e.reason.clone());
            }
            Some(PaymentState::Failed) => {}
            Some(PaymentState::Confirmed | PaymentState::Refunded) => {
                return Err(contradiction(event, "payment confirmed"));
            }
        },
        Event::PaymentRefunded(e) => match payment {
            None | Some(PaymentState::Confirmed) => {
                facts.payment_status = Some(PaymentState::Refunded.as_str().into());
                facts.payment_id = Some(e.payment_id);
                facts.payment_amount_cents = Some(e.amount_cents);
                facts.payment_reason = Some(e.reason.clone());
            }
            Some(PaymentState::Refunded) => {}
            Some(PaymentState::Failed) => return Err(contradiction(event, "payment failed")),
        },
        Event::DeliveryScheduled(e) => {
            if delivery.is_none() {
                facts.delivery_status = Some(DeliveryState::Scheduled.as_str().into());
                facts.delivery_id = Some(e.delivery_id);
                facts.delivery_window_start = Some(e.window_start);
                facts.delivery_window_end = Some(e.window_end);
                facts.tracking_number = Some(e.tracking_number.clone());
            }
        }
        Event::DeliveryFailed(e) => {
            if delivery.is_none() {
                facts.delivery_status = Some(DeliveryState::Failed.as_str().into());
                facts.delivery_reason = Some(e.reason.clone());
            }
        }
        Event::DeliveryCancelled(e) => match delivery {
            None | Some(DeliveryState::Scheduled) => {
                facts.delivery_status = Some(DeliveryState::Cancelled.as_str().into());
                facts.delivery_id = Some(e.delivery_id);
                facts.delivery_reason = Some("WINDOW_RELEASED".into());
            }
            Some(DeliveryState::Cancelled | DeliveryState::Failed) => {}
        },
        Event::UserRegistered(_)
        | Event::OrderCreated(_)
        | Event::OrderStatusChanged(_)
        | Event::OrderCancellationRequested(_) => {}
    }
    Ok(())
}

/// The next move the facts call for, if any. Following it repeatedly walks
/// the order as far as the facts allow, along the state machine's edges.
pub fn next_change(row: &OrderRow) -> Result<Option<StatusChange>, SagaError> {
    let facts = &row.facts;
    let payment = payment_state(facts)?;
    let delivery = delivery_state(facts)?;
    let reason = || {
        facts
            .payment_reason
            .clone()
            .unwrap_or_else(|| UNSPECIFIED.into())
    };
    Ok(match (row.status()?, payment) {
        // A refund implies the payment went through first.
        (OrderStatus::Pending, Some(PaymentState::Confirmed | PaymentState::Refunded)) => {
            Some(StatusChange::Paid)
        }
        (OrderStatus::Pending, Some(PaymentState::Failed)) => {
            Some(StatusChange::Rejected { reason: reason() })
        }
        (OrderStatus::Paid | OrderStatus::DeliveryScheduled, Some(PaymentState::Refunded)) => {
            Some(StatusChange::Cancelled { reason: reason() })
        }
        (OrderStatus::Paid, _) if delivery == Some(DeliveryState::Scheduled) => {
            Some(StatusChange::DeliveryScheduled)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use commerce_common::events;

    use super::*;

    const TOTAL: i64 = 1_000;

    fn order(status: OrderStatus) -> OrderRow {
        OrderRow {
            id: Uuid::nil(),
            customer_id: Uuid::nil(),
            status: status.as_str().into(),
            status_reason: None,
            total_cents: TOTAL,
            shipping_name: "n".into(),
            shipping_street: "s".into(),
            shipping_city: "c".into(),
            shipping_postal_code: "p".into(),
            shipping_country: "x".into(),
            cancellation_requested_at: None,
            cancellation_note: None,
            facts: SagaFacts::default(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn confirmed() -> Event {
        Event::PaymentConfirmed(events::PaymentConfirmed {
            payment_id: Uuid::from_u128(1),
            order_id: Uuid::nil(),
            customer_id: Uuid::nil(),
            amount_cents: TOTAL,
        })
    }

    fn failed() -> Event {
        Event::PaymentFailed(events::PaymentFailed {
            order_id: Uuid::nil(),
            customer_id: Uuid::nil(),
            amount_cents: TOTAL,
            reason: "INSUFFICIENT_FUNDS".into(),
        })
    }

    fn refunded(reason: &str) -> Event {
        Event::PaymentRefunded(events::PaymentRefunded {
            payment_id: Uuid::from_u128(1),
            order_id: Uuid::nil(),
            customer_id: Uuid::nil(),
            amount_cents: TOTAL,
            reason: reason.into(),
        })
    }

    fn scheduled() -> Event {
        Event::DeliveryScheduled(events::DeliveryScheduled {
            delivery_id: Uuid::from_u128(2),
            order_id: Uuid::nil(),
            customer_id: Uuid::nil(),
            window_start: Utc::now(),
            window_end: Utc::now(),
            tracking_number: "TRK-1".into(),
        })
    }

    /// Records the events in turn and follows the facts; returns the
    /// statuses passed through.
    fn run(mut row: OrderRow, events: &[Event]) -> (OrderRow, Vec<OrderStatus>) {
        let mut path = Vec::new();
        for event in events {
            record(&mut row.facts, event, TOTAL).unwrap();
            while let Some(change) = next_change(&row).unwrap() {
                let to = row.status().unwrap().apply(&change).unwrap();
                row.status = to.as_str().into();
                row.status_reason = change.reason().map(Into::into);
                path.push(to);
            }
        }
        (row, path)
    }

    #[test]
    fn happy_path() {
        let (_, path) = run(order(OrderStatus::Pending), &[confirmed(), scheduled()]);
        assert_eq!(path, [OrderStatus::Paid, OrderStatus::DeliveryScheduled]);
    }

    #[test]
    fn delivery_before_payment_waits_for_the_payment() {
        let (_, path) = run(order(OrderStatus::Pending), &[scheduled()]);
        assert!(path.is_empty());
        let (_, path) = run(order(OrderStatus::Pending), &[scheduled(), confirmed()]);
        assert_eq!(path, [OrderStatus::Paid, OrderStatus::DeliveryScheduled]);
    }

    #[test]
    fn insufficient_funds_rejects_with_the_reason() {
        let (row, path) = run(order(OrderStatus::Pending), &[failed()]);
        assert_eq!(path, [OrderStatus::Rejected]);
        assert_eq!(row.status_reason.as_deref(), Some("INSUFFICIENT_FUNDS"));
    }

    #[test]
    fn refund_cancels_with_its_reason() {
        let (row, path) = run(
            order(OrderStatus::Pending),
            &[confirmed(), scheduled(), refunded("CUSTOMER_CANCELLED")],
        );
        assert_eq!(
            path,
            [
                OrderStatus::Paid,
                OrderStatus::DeliveryScheduled,
                OrderStatus::Cancelled
            ]
        );
        assert_eq!(row.status_reason.as_deref(), Some("CUSTOMER_CANCELLED"));
    }

    #[test]
    fn repeats_change_nothing() {
        let (row, _) = run(order(OrderStatus::Pending), &[confirmed()]);
        let (_, path) = run(row, &[confirmed(), confirmed()]);
        assert!(path.is_empty());
    }

    #[test]
    fn failure_after_confirmation_is_permanent() {
        let (mut row, _) = run(order(OrderStatus::Pending), &[confirmed()]);
        assert!(matches!(
            record(&mut row.facts, &failed(), TOTAL),
            Err(SagaError::Permanent(_))
        ));
    }

    #[test]
    fn terminal_orders_stay_put() {
        let (row, _) = run(order(OrderStatus::Pending), &[failed()]);
        let (_, path) = run(row, &[scheduled()]);
        assert!(path.is_empty());
    }
}

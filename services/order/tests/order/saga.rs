//! The saga handler's effects, calling it directly on a connection to the
//! test database (the consumer runtime around it is tested in the common
//! crate; the full saga over the broker in the e2e crate).

use crate::helpers::{Customer, OutboxTap, TestApp, VALID_TOTAL, spawn_app};
use chrono::{Duration, TimeZone, Utc};
use commerce_common::{
    events::{
        DeliveryCancelled, DeliveryFailed, DeliveryScheduled, Event, PaymentConfirmed,
        PaymentFailed, PaymentRefunded,
    },
    outbox,
};
use diesel_async::AsyncConnection;
use order_service::{
    domain::{OrderStatus, StatusChange},
    saga::{Outcome, SagaError, apply_events, handle_event},
    store::{self, StoreError},
};
use serde_json::{Value, json};
use test_support::assert_error;
use uuid::Uuid;

struct Order {
    id: Uuid,
    customer: Customer,
}

impl Order {
    async fn place(app: &TestApp) -> Self {
        let customer = Customer::new();
        let placed = app.place_ok(&customer).await;
        Self {
            id: placed["id"].as_str().unwrap().parse().unwrap(),
            customer,
        }
    }

    async fn json(&self, app: &TestApp) -> Value {
        app.order_json(&self.customer, &self.id.to_string()).await
    }

    fn confirmed(&self) -> Event {
        Event::PaymentConfirmed(PaymentConfirmed {
            payment_id: payment_id(self.id),
            order_id: self.id,
            customer_id: self.customer.id,
            amount_cents: VALID_TOTAL,
        })
    }

    fn failed(&self) -> Event {
        Event::PaymentFailed(PaymentFailed {
            order_id: self.id,
            customer_id: self.customer.id,
            amount_cents: VALID_TOTAL,
            reason: "INSUFFICIENT_FUNDS".into(),
        })
    }

    fn refunded(&self, reason: &str) -> Event {
        Event::PaymentRefunded(PaymentRefunded {
            payment_id: payment_id(self.id),
            order_id: self.id,
            customer_id: self.customer.id,
            amount_cents: VALID_TOTAL,
            reason: reason.into(),
        })
    }

    /// A window far ahead: always before the cancellation cutoff.
    fn scheduled(&self) -> Event {
        self.scheduled_at(Utc.with_ymd_and_hms(2099, 11, 27, 8, 0, 0).unwrap())
    }

    fn scheduled_at(&self, start: chrono::DateTime<Utc>) -> Event {
        Event::DeliveryScheduled(DeliveryScheduled {
            delivery_id: delivery_id(self.id),
            order_id: self.id,
            customer_id: self.customer.id,
            window_start: start,
            window_end: start + Duration::hours(24),
            tracking_number: "TRK-0042".into(),
        })
    }

    fn delivery_failed(&self) -> Event {
        Event::DeliveryFailed(DeliveryFailed {
            order_id: self.id,
            customer_id: self.customer.id,
            reason: "NO_CAPACITY".into(),
        })
    }

    fn delivery_cancelled(&self) -> Event {
        Event::DeliveryCancelled(DeliveryCancelled {
            delivery_id: delivery_id(self.id),
            order_id: self.id,
            customer_id: self.customer.id,
        })
    }
}

fn payment_id(order: Uuid) -> Uuid {
    Uuid::from_u128(order.as_u128() ^ 1)
}

fn delivery_id(order: Uuid) -> Uuid {
    Uuid::from_u128(order.as_u128() ^ 2)
}

async fn apply(app: &TestApp, event: &Event) -> Result<Outcome, SagaError> {
    let mut conn = app.connection().await;
    handle_event(&mut conn, event, "trace-test").await
}

async fn transitions(app: &TestApp, event: &Event) -> Vec<OrderStatus> {
    match apply(app, event).await.expect("the event applies") {
        Outcome::Applied { transitions, .. } => transitions,
        other => panic!("expected Applied, got {other:?}"),
    }
}

/// `(event_type, status)` of the outbox events since the last call.
async fn status_events(tap: &OutboxTap) -> Vec<(String, Option<String>)> {
    tap.events()
        .await
        .into_iter()
        .map(|(t, payload)| (t, payload["status"].as_str().map(str::to_owned)))
        .collect()
}

fn changed(status: &str) -> (String, Option<String>) {
    ("OrderStatusChanged".into(), Some(status.into()))
}

#[tokio::test]
async fn happy_path_records_payment_and_delivery_and_repeats_apply_once() {
    let app = spawn_app().await;
    let order = Order::place(&app).await;
    let tap = OutboxTap::start(&app.db).await;

    assert_eq!(
        transitions(&app, &order.confirmed()).await,
        [OrderStatus::Paid]
    );
    let paid = order.json(&app).await;
    assert_eq!(paid["status"], "PAID");
    assert_eq!(
        paid["payment"],
        json!({
            "status": "CONFIRMED",
            "payment_id": payment_id(order.id),
            "amount_cents": VALID_TOTAL,
            "reason": null,
        })
    );
    assert_eq!(status_events(&tap).await, [changed("PAID")]);

    // The same event again (another event id, as a relay replay could
    // produce): nothing changes, nothing is published.
    assert!(transitions(&app, &order.confirmed()).await.is_empty());
    assert!(status_events(&tap).await.is_empty());

    assert_eq!(
        transitions(&app, &order.scheduled()).await,
        [OrderStatus::DeliveryScheduled]
    );
    assert!(transitions(&app, &order.scheduled()).await.is_empty());
    let scheduled = order.json(&app).await;
    assert_eq!(scheduled["status"], "DELIVERY_SCHEDULED");
    assert_eq!(scheduled["reason"], Value::Null);
    assert_eq!(scheduled["delivery"]["status"], "SCHEDULED");
    assert_eq!(scheduled["delivery"]["tracking_number"], "TRK-0042");
    assert_eq!(
        scheduled["delivery"]["window_start"],
        "2099-11-27T08:00:00Z"
    );
    assert_eq!(scheduled["delivery"]["window_end"], "2099-11-28T08:00:00Z");
    assert_eq!(status_events(&tap).await, [changed("DELIVERY_SCHEDULED")]);
    assert!(tap.events().await.is_empty(), "no further events");
}

#[tokio::test]
async fn insufficient_funds_rejects_the_order_with_the_reason() {
    let app = spawn_app().await;
    let order = Order::place(&app).await;
    let tap = OutboxTap::start(&app.db).await;
    assert_eq!(
        transitions(&app, &order.failed()).await,
        [OrderStatus::Rejected]
    );
    let rejected = order.json(&app).await;
    assert_eq!(rejected["status"], "REJECTED");
    assert_eq!(rejected["reason"], "INSUFFICIENT_FUNDS");
    assert_eq!(rejected["payment"]["status"], "FAILED");
    assert_eq!(rejected["payment"]["reason"], "INSUFFICIENT_FUNDS");
    let events = tap.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1["status"], "REJECTED");
    assert_eq!(events[0].1["reason"], "INSUFFICIENT_FUNDS");
    assert_eq!(events[0].1["order_id"], order.id.to_string());
    assert_eq!(events[0].1["customer_id"], order.customer.id.to_string());

    // Terminal: later events are recorded at most, the status stays.
    assert!(transitions(&app, &order.scheduled()).await.is_empty());
    assert_eq!(order.json(&app).await["status"], "REJECTED");
    // A confirmation after a failure contradicts the record: dead letter.
    assert!(matches!(
        apply(&app, &order.confirmed()).await,
        Err(SagaError::Permanent(_))
    ));
}

#[tokio::test]
async fn no_capacity_waits_for_the_refund_then_cancels() {
    let app = spawn_app().await;
    let order = Order::place(&app).await;
    let tap = OutboxTap::start(&app.db).await;
    transitions(&app, &order.confirmed()).await;
    assert!(transitions(&app, &order.delivery_failed()).await.is_empty());
    let waiting = order.json(&app).await;
    assert_eq!(waiting["status"], "PAID");
    assert_eq!(waiting["delivery"]["status"], "FAILED");
    assert_eq!(waiting["delivery"]["reason"], "NO_CAPACITY");
    // The refund is already under way: the customer cannot cancel again.
    let cancel = app
        .cancel(&order.customer, &order.id.to_string(), None)
        .await;
    assert_error(cancel, 409, "ORDER_NOT_CANCELLABLE", &[]).await;

    assert_eq!(
        transitions(&app, &order.refunded("NO_CAPACITY")).await,
        [OrderStatus::Cancelled]
    );
    let cancelled = order.json(&app).await;
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["reason"], "NO_CAPACITY");
    assert_eq!(cancelled["payment"]["status"], "REFUNDED");
    assert_eq!(
        status_events(&tap).await,
        [changed("PAID"), changed("CANCELLED")]
    );
    assert!(
        transitions(&app, &order.refunded("NO_CAPACITY"))
            .await
            .is_empty()
    );
}

/// A scheduled order can be cancelled until the cutoff (2 h by default)
/// before its delivery window starts; later the parcel is on its way.
#[tokio::test]
async fn cancelling_closes_two_hours_before_the_delivery_window() {
    let app = spawn_app().await;
    for (starts_in, expected) in [(Duration::minutes(119), 409), (Duration::minutes(125), 202)] {
        let order = Order::place(&app).await;
        let id = order.id.to_string();
        transitions(&app, &order.confirmed()).await;
        transitions(&app, &order.scheduled_at(Utc::now() + starts_in)).await;
        let tap = OutboxTap::start(&app.db).await;
        let answer = app.cancel(&order.customer, &id, None).await;
        if expected == 409 {
            assert_error(answer, 409, "TOO_LATE_TO_CANCEL", &[]).await;
            assert!(tap.events().await.is_empty(), "nothing is written");
            let order = order.json(&app).await;
            assert_eq!(order["status"], "DELIVERY_SCHEDULED");
            assert!(order["cancellation"].is_null(), "{order}");
        } else {
            assert_eq!(answer.status(), 202, "{starts_in} before the window");
        }
    }
}

#[tokio::test]
async fn cancellation_rules() {
    let app = spawn_app().await;
    let order = Order::place(&app).await;
    let id = order.id.to_string();
    let tap = OutboxTap::start(&app.db).await;

    // PENDING: payment in progress, retry later.
    let pending = app.cancel(&order.customer, &id, None).await;
    assert_error(pending, 409, "ORDER_NOT_CANCELLABLE", &[]).await;

    transitions(&app, &order.confirmed()).await;
    transitions(&app, &order.scheduled()).await;
    tap.events().await;

    let bad = app
        .cancel(
            &order.customer,
            &id,
            Some(json!({"reason": "x".repeat(501)})),
        )
        .await;
    assert_error(bad, 422, "VALIDATION_FAILED", &[("reason", "invalid")]).await;
    let wrong_type = app
        .cancel(&order.customer, &id, Some(json!({"reason": 5})))
        .await;
    assert_error(wrong_type, 422, "INVALID_BODY", &[]).await;

    let accepted = app
        .cancel(
            &order.customer,
            &id,
            Some(json!({"reason": "changed my mind"})),
        )
        .await;
    assert_eq!(accepted.status(), 202);
    let accepted: Value = accepted.json().await.unwrap();
    assert_eq!(accepted["status"], "DELIVERY_SCHEDULED");
    assert_eq!(accepted["cancellation"]["note"], "changed my mind");
    let events = tap.events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "OrderCancellationRequested");
    assert_eq!(events[0].1["reason"], "CUSTOMER_CANCELLED");
    assert_eq!(events[0].1["customer_id"], order.customer.id.to_string());

    let again = app.cancel(&order.customer, &id, None).await;
    assert_error(again, 409, "CANCELLATION_ALREADY_REQUESTED", &[]).await;

    // Delivery releases the window, payment refunds: CANCELLED.
    assert!(
        transitions(&app, &order.delivery_cancelled())
            .await
            .is_empty()
    );
    assert_eq!(
        transitions(&app, &order.refunded("CUSTOMER_CANCELLED")).await,
        [OrderStatus::Cancelled]
    );
    let cancelled = order.json(&app).await;
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["reason"], "CUSTOMER_CANCELLED");
    assert_eq!(cancelled["delivery"]["status"], "CANCELLED");
    assert_eq!(cancelled["payment"]["status"], "REFUNDED");

    let terminal = app.cancel(&order.customer, &id, None).await;
    assert_error(terminal, 409, "ORDER_NOT_CANCELLABLE", &[]).await;

    // A PAID order (no delivery yet) is cancellable too, without a body.
    let paid = Order::place(&app).await;
    transitions(&app, &paid.confirmed()).await;
    let response = app.cancel(&paid.customer, &paid.id.to_string(), None).await;
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn events_across_topics_out_of_order_still_walk_the_state_machine() {
    let app = spawn_app().await;
    let order = Order::place(&app).await;
    let tap = OutboxTap::start(&app.db).await;
    // The deliveries topic was read before the payments topic.
    assert!(transitions(&app, &order.scheduled()).await.is_empty());
    let pending = order.json(&app).await;
    assert_eq!(pending["status"], "PENDING");
    assert_eq!(pending["delivery"]["status"], "SCHEDULED");
    assert_eq!(
        transitions(&app, &order.confirmed()).await,
        [OrderStatus::Paid, OrderStatus::DeliveryScheduled]
    );
    assert_eq!(
        status_events(&tap).await,
        [changed("PAID"), changed("DELIVERY_SCHEDULED")]
    );
}

/// Applies `event` like the consumer runtime does: a transient failure is
/// retried.
async fn apply_until_done(app: &TestApp, event: &Event) {
    for _ in 0..20 {
        match apply(app, event).await {
            Ok(_) => return,
            Err(SagaError::Transient(_)) => tokio::task::yield_now().await,
            Err(error) => panic!("{event:?} failed: {error}"),
        }
    }
    panic!("{event:?} kept failing");
}

#[tokio::test]
async fn payment_and_delivery_applied_at_the_same_time_both_count() {
    // The order service consumes `payments` and `deliveries` at once, so the
    // two events of one order often meet: neither may undo the other.
    let app = spawn_app().await;
    let mut orders = Vec::new();
    for _ in 0..30 {
        orders.push(Order::place(&app).await);
    }
    let apps = (&app, &app);
    futures::future::join_all(orders.iter().map(|order| async move {
        let (confirmed, scheduled) = (order.confirmed(), order.scheduled());
        tokio::join!(
            apply_until_done(apps.0, &confirmed),
            apply_until_done(apps.1, &scheduled)
        );
    }))
    .await;
    for order in &orders {
        let json = order.json(&app).await;
        assert_eq!(json["status"], "DELIVERY_SCHEDULED", "{json}");
        assert_eq!(json["payment"]["status"], "CONFIRMED", "{json}");
        assert_eq!(json["delivery"]["status"], "SCHEDULED", "{json}");
    }
}

#[tokio::test]
async fn unknown_orders_foreign_customers_and_other_events() {
    let app = spawn_app().await;
    let order = Order::place(&app).await;
    let stranger = Order {
        id: Uuid::new_v4(),
        customer: Customer::new(),
    };
    assert_eq!(
        apply(&app, &stranger.confirmed()).await.unwrap(),
        Outcome::UnknownOrder(stranger.id)
    );
    // An order id made a moment ago names an order whose placement may not
    // be visible yet: the event is applied again later, not dropped (the
    // inbox would keep its id and the order would stay PENDING for good).
    let not_visible_yet = Order {
        id: Uuid::now_v7(),
        customer: Customer::new(),
    };
    assert!(matches!(
        apply(&app, &not_visible_yet.confirmed()).await,
        Err(SagaError::Transient(_))
    ));
    let old = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        (chrono::Utc::now().timestamp() as u64)
            .saturating_sub(commerce_common::events::NOT_YET_VISIBLE_WINDOW.as_secs() + 60),
        0,
    ));
    let stranger_of_old = Order {
        id: old,
        customer: Customer::new(),
    };
    assert_eq!(
        apply(&app, &stranger_of_old.confirmed()).await.unwrap(),
        Outcome::UnknownOrder(old)
    );
    let impostor = Order {
        id: order.id,
        customer: Customer::new(),
    };
    assert!(matches!(
        apply(&app, &impostor.confirmed()).await,
        Err(SagaError::Permanent(_))
    ));
    assert_eq!(order.json(&app).await["status"], "PENDING");

    let user = Event::UserRegistered(commerce_common::events::UserRegistered {
        user_id: Uuid::new_v4(),
        email: "a@example.com".into(),
        name: "A".into(),
    });
    assert_eq!(apply(&app, &user).await.unwrap(), Outcome::NotForUs);
}

#[tokio::test]
async fn a_status_change_from_a_stale_read_writes_and_announces_nothing() {
    let app = spawn_app().await;
    let order = Order::place(&app).await;
    let tap = OutboxTap::start(&app.db).await;
    let mut conn = app.connection().await;
    let mut stale = store::lock_orders(&mut conn, &[order.id])
        .await
        .unwrap()
        .pop()
        .expect("the order exists");
    // Someone else changes the order after our read (outside our lock,
    // as a bug or an operator would).
    app.db
        .client()
        .await
        .execute(
            "UPDATE orders SET updated_at = updated_at + interval '1 millisecond' WHERE id = $1",
            &[&order.id],
        )
        .await
        .unwrap();

    let (_, event) = stale.row.change_status(StatusChange::Paid).unwrap();
    stale.changed = true;
    let announcement = outbox::NewRow::new(&event, "trace-test");
    let lost = store::save_saga(&mut conn, &[&stale], std::slice::from_ref(&announcement)).await;
    assert!(
        matches!(lost, Err(StoreError::LostUpdate(id)) if id == order.id),
        "{lost:?}"
    );
    assert_eq!(order.json(&app).await["status"], "PENDING");
    assert!(tap.events().await.is_empty(), "no OrderStatusChanged");

    // From a fresh read the same change goes through, with its event.
    let mut fresh = store::lock_orders(&mut conn, &[order.id])
        .await
        .unwrap()
        .pop()
        .unwrap();
    let (_, event) = fresh.row.change_status(StatusChange::Paid).unwrap();
    fresh.changed = true;
    let announcement = outbox::NewRow::new(&event, "trace-test");
    store::save_saga(&mut conn, &[&fresh], std::slice::from_ref(&announcement))
        .await
        .unwrap();
    assert_eq!(order.json(&app).await["status"], "PAID");
    assert_eq!(status_events(&tap).await, [changed("PAID")]);
}

#[tokio::test]
async fn a_fetch_of_events_applies_together_as_one_by_one() {
    let app = spawn_app().await;
    let (a, b, c) = (
        Order::place(&app).await,
        Order::place(&app).await,
        Order::place(&app).await,
    );
    let tap = OutboxTap::start(&app.db).await;
    // No such order here, and its id (v4) is not a fresh one.
    let stranger = Order {
        id: Uuid::new_v4(),
        customer: Customer::new(),
    };
    let events = [
        a.scheduled(),
        c.confirmed(),
        a.confirmed(),
        b.failed(),
        stranger.confirmed(),
        a.confirmed(),
    ];
    let traced: Vec<(&Event, &str)> = events.iter().map(|e| (e, "trace-test")).collect();
    let mut conn = app.connection().await;
    let outcomes = conn
        .transaction::<_, SagaError, _>(async |conn| apply_events(conn, &traced).await)
        .await
        .unwrap();
    let applied = |order: &Order, transitions: &[OrderStatus]| Outcome::Applied {
        order_id: order.id,
        transitions: transitions.to_vec(),
    };
    assert_eq!(
        outcomes,
        [
            applied(&a, &[]),
            applied(&c, &[OrderStatus::Paid]),
            applied(&a, &[OrderStatus::Paid, OrderStatus::DeliveryScheduled]),
            applied(&b, &[OrderStatus::Rejected]),
            Outcome::UnknownOrder(stranger.id),
            applied(&a, &[]),
        ]
    );
    let a_now = a.json(&app).await;
    assert_eq!(a_now["status"], "DELIVERY_SCHEDULED");
    assert_eq!(a_now["payment"]["status"], "CONFIRMED");
    assert_eq!(a_now["delivery"]["tracking_number"], "TRK-0042");
    assert_eq!(b.json(&app).await["status"], "REJECTED");
    assert_eq!(b.json(&app).await["reason"], "INSUFFICIENT_FUNDS");
    assert_eq!(c.json(&app).await["status"], "PAID");
    // Announced in the order the events came, each about its order.
    let announced: Vec<(String, String)> = tap
        .events()
        .await
        .into_iter()
        .map(|(_, payload)| {
            let field = |name: &str| payload[name].as_str().unwrap().to_owned();
            (field("order_id"), field("status"))
        })
        .collect();
    let said = |order: &Order, status: &str| (order.id.to_string(), status.to_owned());
    assert_eq!(
        announced,
        [
            said(&c, "PAID"),
            said(&a, "PAID"),
            said(&a, "DELIVERY_SCHEDULED"),
            said(&b, "REJECTED"),
        ]
    );
}

#[tokio::test]
async fn a_fetch_locks_its_orders_in_one_round_trip_with_its_plan_setting() {
    let app = spawn_app().await;
    let (a, b) = (Order::place(&app).await, Order::place(&app).await);
    let mut ids = vec![a.id, b.id];
    ids.sort_unstable();
    let (mut conn, statements) = app.db.counted_connection().await;
    let counts = || (statements.sent(), statements.round_trips());
    let (sent, round_trips) = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            // Once for the statements to be prepared on this connection.
            store::lock_orders(conn, &ids).await?;
            let before = counts();
            let locked = store::lock_orders(conn, &ids).await?;
            assert_eq!(
                locked.iter().map(|order| order.row.id).collect::<Vec<_>>(),
                ids
            );
            let after = counts();
            Ok((after.0 - before.0, after.1 - before.1))
        })
        .await
        .unwrap();
    // `SET LOCAL enable_seqscan` and the `SELECT ... FOR UPDATE`, pipelined.
    assert_eq!((sent, round_trips), (2, 1));
}

#[derive(diesel::QueryableByName)]
struct TableScans {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq_scan: i64,
}

#[tokio::test]
async fn a_fetch_finds_its_orders_by_index_while_the_table_is_small() {
    let app = spawn_app().await;
    let (a, b) = (Order::place(&app).await, Order::place(&app).await);
    // What the planner knows of a new deployment's table: a page or two.
    app.db
        .client()
        .await
        .batch_execute("ANALYZE orders")
        .await
        .unwrap();
    let events = [a.confirmed(), b.failed()];
    let traced: Vec<(&Event, &str)> = events.iter().map(|e| (e, "trace-test")).collect();
    let mut conn = app.connection().await;
    let scans = conn
        .transaction::<_, SagaError, _>(async |conn| {
            apply_events(conn, &traced).await?;
            let scans: TableScans = diesel_async::RunQueryDsl::get_result(
                diesel::sql_query(
                    "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'orders'",
                ),
                conn,
            )
            .await?;
            Ok(scans.seq_scan)
        })
        .await
        .unwrap();
    // A plan with a table scan would be kept while the table grows.
    assert_eq!(scans, 0, "sequential scans of orders");
    assert_eq!(a.json(&app).await["status"], "PAID");
    assert_eq!(b.json(&app).await["status"], "REJECTED");
}

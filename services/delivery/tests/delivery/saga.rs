//! The delivery side of the saga, driven by events produced straight to the
//! app's topic: earliest free window, no capacity, release on cancellation,
//! cancellation before payment, repeats, poison, and concurrent bookings
//! racing for the last places.

use std::time::Duration;

use crate::helpers::{TestApp, one_window, spawn_app_configured, spawn_app_with};
use chrono::{DateTime, Days, Utc};
use commerce_common::events::{Event, OrderCancellationRequested, PaymentConfirmed};
use delivery_service::{config::WindowsConfig, startup::Application};
use rskafka::{
    client::partition::{Compression, UnknownTopicHandling},
    record::Record,
};
use test_support::RunningApp;
use uuid::Uuid;

fn paid(customer_id: Uuid) -> PaymentConfirmed {
    PaymentConfirmed {
        payment_id: Uuid::new_v4(),
        order_id: Uuid::new_v4(),
        customer_id,
        amount_cents: 100,
    }
}

fn cancellation(order: &PaymentConfirmed) -> OrderCancellationRequested {
    OrderCancellationRequested {
        order_id: order.order_id,
        customer_id: order.customer_id,
        reason: "changed my mind".into(),
    }
}

/// How many places the windows have booked, all of them together.
async fn booked_places(app: &TestApp) -> i64 {
    app.query_i64("SELECT sum(booked)::bigint FROM delivery_windows")
        .await
}

async fn delivery_of(
    app: &TestApp,
    order_id: Uuid,
) -> (String, Option<String>, Option<DateTime<Utc>>) {
    let sql = "SELECT status, reason, window_start FROM deliveries WHERE order_id = $1";
    let row = app.query_one(sql, &[&order_id]).await;
    (row.get(0), row.get(1), row.get(2))
}

fn tomorrow_at(hour: u32) -> DateTime<Utc> {
    let day = Utc::now().date_naive() + Days::new(1);
    day.and_hms_opt(hour, 0, 0).unwrap().and_utc()
}

#[tokio::test]
async fn a_paid_order_gets_the_earliest_window_with_room() {
    let windows = WindowsConfig {
        capacity: 2,
        ..WindowsConfig::default()
    };
    let app = spawn_app_with(1, windows).await;
    let customer = Uuid::new_v4();
    let orders: Vec<_> = (0..3).map(|_| paid(customer)).collect();
    for order in &orders {
        app.publish(&Event::PaymentConfirmed(order.clone())).await;
    }
    app.drained(3).await;
    let first = delivery_of(&app, orders[0].order_id).await;
    assert_eq!(first.0, "SCHEDULED");
    assert_eq!(first.2, Some(tomorrow_at(8)));
    assert_eq!(
        delivery_of(&app, orders[1].order_id).await.2,
        Some(tomorrow_at(8))
    );
    assert_eq!(
        delivery_of(&app, orders[2].order_id).await.2,
        Some(tomorrow_at(10)),
        "the first window is full"
    );
    assert_eq!(
        app.query_i64("SELECT count(*) FROM delivery_windows").await,
        4 * 7,
        "windows for the whole horizon"
    );
}

#[tokio::test]
async fn no_window_left_fails_with_no_capacity() {
    let app = spawn_app_with(1, one_window(1)).await;
    let customer = Uuid::new_v4();
    let (first, second) = (paid(customer), paid(customer));
    app.publish(&Event::PaymentConfirmed(first.clone())).await;
    app.publish(&Event::PaymentConfirmed(second.clone())).await;
    app.drained(2).await;
    assert_eq!(delivery_of(&app, first.order_id).await.0, "SCHEDULED");
    assert_eq!(
        delivery_of(&app, second.order_id).await,
        ("FAILED".into(), Some("NO_CAPACITY".into()), None)
    );
}

#[tokio::test]
async fn a_customer_over_the_daily_booking_limit_fails_with_daily_limit() {
    let app = spawn_app_configured(1, one_window(10), |settings| {
        settings.quotas.bookings_per_customer_per_day = 2;
    })
    .await;
    let (customer, other) = (Uuid::new_v4(), Uuid::new_v4());
    let booked = [paid(customer), paid(customer)];
    for order in &booked {
        app.publish(&Event::PaymentConfirmed(order.clone())).await;
    }
    // A booking cancelled since still counts: cancelling frees the window,
    // not the day's quota.
    app.publish(&Event::OrderCancellationRequested(cancellation(&booked[0])))
        .await;
    let over = paid(customer);
    let others = paid(other);
    app.publish(&Event::PaymentConfirmed(over.clone())).await;
    app.publish(&Event::PaymentConfirmed(others.clone())).await;
    app.drained(5).await;

    assert_eq!(delivery_of(&app, booked[0].order_id).await.0, "CANCELLED");
    assert_eq!(delivery_of(&app, booked[1].order_id).await.0, "SCHEDULED");
    assert_eq!(
        delivery_of(&app, over.order_id).await,
        ("FAILED".into(), Some("DAILY_LIMIT".into()), None),
        "the third booking of the day"
    );
    assert_eq!(
        delivery_of(&app, others.order_id).await.0,
        "SCHEDULED",
        "another customer is not limited"
    );
    assert_eq!(
        booked_places(&app).await,
        2,
        "the refused order took no place"
    );
}

#[tokio::test]
async fn cancelling_releases_the_window_and_a_cancellation_first_books_nothing() {
    let app = spawn_app_with(1, one_window(1)).await;
    let customer = Uuid::new_v4();
    let booked = paid(customer);
    app.publish(&Event::PaymentConfirmed(booked.clone())).await;
    app.drained(1).await;
    assert_eq!(booked_places(&app).await, 1);

    app.publish(&Event::OrderCancellationRequested(cancellation(&booked)))
        .await;
    app.drained(2).await;
    assert_eq!(
        delivery_of(&app, booked.order_id).await.0,
        "CANCELLED",
        "the booked delivery is cancelled"
    );
    assert_eq!(booked_places(&app).await, 0);

    // Cancelled before the payment was confirmed: the confirmation books nothing.
    let early = paid(customer);
    app.publish(&Event::OrderCancellationRequested(cancellation(&early)))
        .await;
    app.publish(&Event::PaymentConfirmed(early.clone())).await;
    app.drained(4).await;
    assert_eq!(
        delivery_of(&app, early.order_id).await,
        ("CANCELLED".into(), Some("CUSTOMER_CANCELLED".into()), None)
    );
    assert_eq!(booked_places(&app).await, 0);

    // The released place is free for the next order.
    let next = paid(customer);
    app.publish(&Event::PaymentConfirmed(next.clone())).await;
    app.drained(5).await;
    assert_eq!(delivery_of(&app, next.order_id).await.0, "SCHEDULED");
}

#[tokio::test]
async fn every_event_delivered_twice_has_its_effects_once() {
    let app = spawn_app_with(2, one_window(10)).await;
    let customer = Uuid::new_v4();
    let orders: Vec<_> = (0..4).map(|_| paid(customer)).collect();
    let mut events: Vec<Event> = orders
        .iter()
        .cloned()
        .map(Event::PaymentConfirmed)
        .collect();
    events.push(Event::OrderCancellationRequested(cancellation(&orders[0])));
    let envelopes: Vec<_> = events.iter().map(test_support::envelope).collect();
    for envelope in &envelopes {
        app.send(envelope).await;
        app.send(envelope).await;
    }
    app.drained(2 * envelopes.len() as i64).await;
    assert_eq!(app.query_i64("SELECT count(*) FROM deliveries").await, 4);
    assert_eq!(
        app.query_i64("SELECT count(*) FROM deliveries WHERE status = 'SCHEDULED'")
            .await,
        3
    );
    assert_eq!(booked_places(&app).await, 3);
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_and_the_partition_moves_on() {
    let app = spawn_app_with(1, one_window(10)).await;
    let client = test_support::kafka_client(&test_support::kafka_brokers()).await;
    let partition = client
        .partition_client(app.topic.clone(), 0, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    let garbage = Record {
        key: None,
        value: Some(br#"{"event_id": "nope"}"#.to_vec()),
        headers: Default::default(),
        timestamp: Utc::now(),
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        partition.produce(vec![garbage], Compression::NoCompression),
    )
    .await
    .unwrap()
    .unwrap();
    let good = paid(Uuid::new_v4());
    app.publish(&Event::PaymentConfirmed(good.clone())).await;
    app.drained(2).await;
    assert_eq!(delivery_of(&app, good.order_id).await.0, "SCHEDULED");
    assert_eq!(app.query_i64("SELECT count(*) FROM dead_letters").await, 1);
    assert_eq!(
        app.query_i64("SELECT count(*) FROM dead_letters WHERE record_offset = 0 AND reason LIKE 'invalid envelope%'").await,
        1
    );
}

#[tokio::test]
async fn concurrent_bookings_racing_for_the_last_places_book_exactly_the_capacity() {
    const CAPACITY: i32 = 5;
    const ORDERS: i64 = 40;
    let app = spawn_app_with(8, one_window(CAPACITY)).await;
    // A second instance on the same database and topic: two processes'
    // worth of consumers booking at once.
    let second = RunningApp::spawn(
        Application::build(crate::helpers::settings(
            &app.database,
            &app.topic,
            "second",
            one_window(CAPACITY),
        ))
        .await
        .unwrap(),
    );
    test_support::wait_until(
        crate::helpers::WAIT,
        "both instances to own partitions",
        || async {
            let owners = test_support::try_query_i64(
                &app.database,
                "SELECT count(DISTINCT owner) FROM partition_leases WHERE expires_at > now()",
            )
            .await?;
            (owners == 2).then_some(())
        },
    )
    .await;

    // Produce everything first, so the consumers start on full partitions at once.
    let envelopes: Vec<_> = (0..ORDERS)
        .map(|_| test_support::envelope(&Event::PaymentConfirmed(paid(Uuid::new_v4()))))
        .collect();
    for envelope in &envelopes {
        app.send(envelope).await;
    }
    app.drained(ORDERS).await;

    assert_eq!(
        app.query_i64("SELECT count(*) FROM deliveries WHERE status = 'SCHEDULED'")
            .await,
        i64::from(CAPACITY)
    );
    assert_eq!(
        app.query_i64("SELECT count(*) FROM deliveries WHERE status = 'FAILED'")
            .await,
        ORDERS - i64::from(CAPACITY)
    );
    assert_eq!(
        app.query_i64("SELECT booked::bigint FROM delivery_windows")
            .await,
        i64::from(CAPACITY)
    );
    assert_eq!(
        app.query_i64("SELECT count(DISTINCT consumer_group || owner) FROM partition_leases")
            .await,
        2,
        "both instances took part"
    );
    drop(second);
}

#[tokio::test]
async fn a_fetch_of_bookings_takes_one_statement_per_order_and_a_fixed_few() {
    use commerce_common::consumer::{EventHandler, ParticipantMetrics};
    use delivery_service::{config::QuotasConfig, saga::DeliverySaga};
    use diesel_async::AsyncConnection;

    // The app runs the migrations; its consumer's topic stays empty.
    let app = spawn_app_with(1, one_window(10)).await;
    let quotas = QuotasConfig {
        bookings_per_customer_per_day: 2,
    };
    let saga = DeliverySaga::new(one_window(10), quotas, ParticipantMetrics::default());
    let (customer, other) = (Uuid::new_v4(), Uuid::new_v4());
    let orders = [
        paid(customer),
        paid(other),
        paid(customer),
        paid(customer),
        paid(Uuid::new_v4()),
    ];
    let mut events: Vec<Event> = orders
        .iter()
        .cloned()
        .map(Event::PaymentConfirmed)
        .collect();
    // The second order paid again (a re-drive's request, under a new id).
    events.push(Event::PaymentConfirmed(orders[1].clone()));
    let envelopes: Vec<_> = events.iter().map(test_support::envelope).collect();
    let records: Vec<_> = envelopes.iter().zip(events.clone()).collect();

    let (mut conn, statements) = app.database.counted_connection().await;
    let announced = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            saga.handle_all(conn, records).await.unwrap();
            let sent = statements.sent();
            // BEGIN; the orders locked; their deliveries and customers'
            // bookings read; the day's windows created (the first
            // booking of this process); a statement per new order (four
            // bookings, one failure); the answers written; the repeated
            // order's delivery read and its answer written again.
            assert_eq!(sent, 1 + 3 + orders.len() + 1 + 2, "statements sent");
            Ok(test_support::inserted_in_transaction(conn, "outbox").await)
        })
        .await
        .unwrap();
    assert_eq!(announced, 6, "five answers, one of them again");

    let status = |i: usize| delivery_of(&app, orders[i].order_id);
    assert_eq!(status(0).await.0, "SCHEDULED");
    assert_eq!(status(1).await.0, "SCHEDULED");
    assert_eq!(status(2).await.0, "SCHEDULED");
    assert_eq!(
        status(3).await,
        ("FAILED".into(), Some("DAILY_LIMIT".into()), None),
        "the customer's third booking of the fetch is over the day's limit"
    );
    assert_eq!(status(4).await.0, "SCHEDULED");
    assert_eq!(
        app.query_i64("SELECT count(*) FROM deliveries").await,
        5,
        "the order paid twice is booked once"
    );
    assert_eq!(booked_places(&app).await, 4);
}

//! The payment side of the saga, driven by events produced straight to the
//! app's topic: charges, insufficient funds, refunds, repeats, poison, and
//! two instances sharing the partitions while one is killed.

use std::{collections::BTreeMap, time::Duration};

use crate::helpers::{INITIAL_CREDIT, TestApp, spawn_app, spawn_app_configured, wait_for_value};
use commerce_common::events::{
    DeliveryFailed, Event, OrderCancellationRequested, OrderCreated, UserRegistered,
};
use rskafka::{
    client::partition::{Compression, UnknownTopicHandling},
    record::Record,
};
use serde_json::Value;
use test_support::{
    ChildProcess, SendExt, assert_error_code, free_port, fresh_database, kafka_brokers,
    kafka_client, query_i64,
};
use uuid::Uuid;

fn order_created(customer_id: Uuid, total_cents: i64) -> OrderCreated {
    OrderCreated {
        order_id: Uuid::new_v4(),
        customer_id,
        items: vec![],
        total_cents,
        shipping_address: crate::helpers::address(),
    }
}

async fn payment_of(app: &TestApp, order_id: Uuid) -> (String, Option<String>, i64) {
    let sql = "SELECT status, reason, amount_cents FROM payments WHERE order_id = $1";
    let row = app.query_one(sql, &[&order_id]).await;
    (row.get(0), row.get(1), row.get(2))
}

async fn balance(app: &TestApp, customer: Uuid) -> i64 {
    app.query_i64(&format!(
        "SELECT balance_cents FROM wallets WHERE customer_id = '{customer}'"
    ))
    .await
}

#[tokio::test]
async fn orders_are_charged_or_fail_for_insufficient_funds_and_refunds_are_paid_once() {
    let app = spawn_app().await;
    let customer = Uuid::new_v4();
    app.publish(&Event::UserRegistered(UserRegistered {
        user_id: customer,
        email: "ada@example.com".into(),
        name: "Ada".into(),
    }))
    .await;
    let first = order_created(customer, 600);
    let second = order_created(customer, 500);
    app.publish(&Event::OrderCreated(first.clone())).await;
    app.drained(2).await;
    app.publish(&Event::OrderCreated(second.clone())).await;
    app.drained(3).await;

    assert_eq!(
        payment_of(&app, first.order_id).await,
        ("CONFIRMED".into(), None, 600)
    );
    assert_eq!(
        payment_of(&app, second.order_id).await,
        ("FAILED".into(), Some("INSUFFICIENT_FUNDS".into()), 500)
    );
    assert_eq!(
        balance(&app, customer).await,
        INITIAL_CREDIT - 600,
        "a failed charge leaves the balance"
    );

    // The customer cancels: refund. Delivery failing later refunds nothing more.
    app.request_cancellation(first.order_id, customer, "changed my mind")
        .await;
    app.publish(&Event::DeliveryFailed(DeliveryFailed {
        order_id: first.order_id,
        customer_id: customer,
        reason: "NO_CAPACITY".into(),
    }))
    .await;
    // A failed payment is never refunded.
    app.request_cancellation(second.order_id, customer, "x")
        .await;
    app.drained(6).await;
    assert_eq!(
        payment_of(&app, first.order_id).await,
        ("REFUNDED".into(), Some("CUSTOMER_CANCELLED".into()), 600)
    );
    assert_eq!(payment_of(&app, second.order_id).await.0, "FAILED");
    assert_eq!(balance(&app, customer).await, INITIAL_CREDIT);

    // The owner sees it over HTTP.
    let payment: Value = app
        .get(&format!("/api/payments/{}", first.order_id), Some(customer))
        .json_body()
        .await;
    assert_eq!(payment["status"], "REFUNDED");
    assert_eq!(payment["reason"], "CUSTOMER_CANCELLED");
    assert!(payment["refunded_at"].is_string());
}

#[tokio::test]
async fn a_delivery_failure_refunds_with_the_deliverys_reason() {
    let app = spawn_app().await;
    let customer = Uuid::new_v4();
    let orders = [
        (order_created(customer, 250), "NO_CAPACITY"),
        (order_created(customer, 300), "DAILY_LIMIT"),
    ];
    for (order, reason) in &orders {
        app.publish(&Event::OrderCreated(order.clone())).await;
        app.publish(&Event::DeliveryFailed(DeliveryFailed {
            order_id: order.order_id,
            customer_id: customer,
            reason: (*reason).into(),
        }))
        .await;
    }
    app.drained(4).await;
    for (order, reason) in &orders {
        assert_eq!(
            payment_of(&app, order.order_id).await,
            ("REFUNDED".into(), Some((*reason).into()), order.total_cents)
        );
    }
    assert_eq!(balance(&app, customer).await, INITIAL_CREDIT);
}

#[tokio::test]
async fn a_refund_is_credited_in_full_above_the_balance_limit_and_top_ups_stay_capped() {
    // The limit bounds what top-ups put in; a refund gives back the
    // customer's own money, so it is never refused or cut.
    let app = spawn_app_configured(2, |settings| {
        settings.wallet.max_balance_cents = INITIAL_CREDIT;
    })
    .await;
    let customer = Uuid::new_v4();
    let top_up = |cents: i64| {
        app.post("/api/wallet/top-up", Some(customer))
            .json(&serde_json::json!({ "amount_cents": cents }))
            .send()
    };
    let order = order_created(customer, 600);
    app.publish(&Event::OrderCreated(order.clone())).await;
    app.drained(1).await;
    assert_eq!(top_up(600).await.unwrap().status(), 200, "up to the limit");
    assert_eq!(balance(&app, customer).await, INITIAL_CREDIT);
    assert_eq!(top_up(1).await.unwrap().status(), 409);

    app.publish(&Event::DeliveryFailed(DeliveryFailed {
        order_id: order.order_id,
        customer_id: customer,
        reason: "NO_CAPACITY".into(),
    }))
    .await;
    app.drained(2).await;
    assert_eq!(payment_of(&app, order.order_id).await.0, "REFUNDED");
    assert_eq!(
        balance(&app, customer).await,
        INITIAL_CREDIT + 600,
        "refunded in full, above the limit"
    );
    assert_eq!(
        app.query_i64(&format!(
            "SELECT sum(amount_cents)::bigint FROM wallet_entries WHERE customer_id = '{customer}'"
        ))
        .await,
        INITIAL_CREDIT + 600,
        "the ledger holds the refund"
    );
    // Above the limit, no top-up fits until the balance is below it again.
    let refused = top_up(1).await.unwrap();
    let error = assert_error_code(refused, 409, "BALANCE_LIMIT").await;
    assert_eq!(
        error["message"],
        format!("a top-up may not raise the balance above {INITIAL_CREDIT} cents")
    );
    let spend = order_created(customer, 1_500);
    app.publish(&Event::OrderCreated(spend.clone())).await;
    app.drained(3).await;
    assert_eq!(payment_of(&app, spend.order_id).await.0, "CONFIRMED");
    assert_eq!(top_up(900).await.unwrap().status(), 200);
    assert_eq!(balance(&app, customer).await, INITIAL_CREDIT);
}

#[tokio::test]
async fn one_order_under_two_event_ids_is_charged_once_even_for_a_new_customer() {
    let app = spawn_app().await;
    // No UserRegistered: the first charge opens the wallet.
    let customer = Uuid::new_v4();
    let order = order_created(customer, 400);
    // Two envelopes (two event ids, so the inbox lets both through) for
    // one order; then a second order that the balance cannot cover once the
    // first was charged. It is published only after the first two were
    // handled: with another key it may land on another partition, whose
    // worker would otherwise be free to charge it first.
    app.publish(&Event::OrderCreated(order.clone())).await;
    app.publish(&Event::OrderCreated(order.clone())).await;
    app.drained(2).await;
    let too_big = order_created(customer, INITIAL_CREDIT);
    app.publish(&Event::OrderCreated(too_big.clone())).await;
    app.drained(3).await;

    assert_eq!(
        payment_of(&app, order.order_id).await,
        ("CONFIRMED".into(), None, 400)
    );
    assert_eq!(
        payment_of(&app, too_big.order_id).await,
        (
            "FAILED".into(),
            Some("INSUFFICIENT_FUNDS".into()),
            INITIAL_CREDIT
        )
    );
    assert_eq!(balance(&app, customer).await, INITIAL_CREDIT - 400);
    assert_eq!(
        app.query_i64(&format!(
            "SELECT count(*) FROM wallet_entries WHERE customer_id = '{customer}' AND kind = 'CHARGE'"
        ))
        .await,
        1
    );
    // All three envelopes were handled, none dead-lettered.
    assert_eq!(app.query_i64("SELECT count(*) FROM inbox").await, 3);
    assert_eq!(app.query_i64("SELECT count(*) FROM dead_letters").await, 0);
}

#[tokio::test]
async fn every_event_delivered_twice_has_its_effects_once() {
    let app = spawn_app().await;
    let customer = Uuid::new_v4();
    let orders: Vec<_> = (0..4).map(|_| order_created(customer, 100)).collect();
    let mut events = vec![Event::UserRegistered(UserRegistered {
        user_id: customer,
        email: "b@example.com".into(),
        name: "B".into(),
    })];
    events.extend(orders.iter().cloned().map(Event::OrderCreated));
    events.push(Event::DeliveryFailed(DeliveryFailed {
        order_id: orders[0].order_id,
        customer_id: customer,
        reason: "NO_CAPACITY".into(),
    }));
    let envelopes: Vec<_> = events.iter().map(test_support::envelope).collect();
    for envelope in &envelopes {
        app.send(envelope).await;
        app.send(envelope).await;
    }
    // And the whole stream once more, as a relay restart would.
    for envelope in &envelopes {
        app.send(envelope).await;
    }
    app.drained(3 * envelopes.len() as i64).await;

    assert_eq!(app.query_i64("SELECT count(*) FROM payments").await, 4);
    assert_eq!(
        app.query_i64("SELECT count(*) FROM payments WHERE status = 'REFUNDED'")
            .await,
        1
    );
    assert_eq!(balance(&app, customer).await, INITIAL_CREDIT - 300);
    let entries = app
        .database
        .client()
        .await
        .query(
            "SELECT kind, count(*) FROM wallet_entries GROUP BY kind",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<BTreeMap<_, _>>();
    assert_eq!(
        entries,
        BTreeMap::from([
            ("CHARGE".into(), 4),
            ("INITIAL_CREDIT".into(), 1),
            ("REFUND".into(), 1)
        ])
    );
    assert_eq!(
        app.query_i64("SELECT count(*) FROM inbox").await,
        envelopes.len() as i64
    );
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_and_the_partition_moves_on() {
    let app = spawn_app_single_partition().await;
    let customer = Uuid::new_v4();

    let client = kafka_client(&kafka_brokers()).await;
    let partition = client
        .partition_client(app.topic.clone(), 0, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    let garbage = Record {
        key: Some(b"garbage".to_vec()),
        value: Some(b"\x00\x01 definitely not json".to_vec()),
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        partition.produce(vec![garbage], Compression::NoCompression),
    )
    .await
    .unwrap()
    .unwrap();
    // A well-formed envelope whose order has a negative total.
    let negative = app
        .publish(&Event::OrderCreated(order_created(customer, -5)))
        .await;
    let good = order_created(customer, 100);
    app.publish(&Event::OrderCreated(good.clone())).await;
    app.drained(3).await;

    assert_eq!(payment_of(&app, good.order_id).await.0, "CONFIRMED");
    let dead = app
        .database
        .client()
        .await
        .query(
            "SELECT record_offset, event_id, reason FROM dead_letters ORDER BY record_offset",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].get::<_, i64>(0), 0);
    assert!(dead[0].get::<_, String>(2).contains("invalid envelope"));
    assert_eq!(dead[1].get::<_, Option<Uuid>>(1), Some(negative.event_id));
    assert!(dead[1].get::<_, String>(2).contains("negative"));
    assert_eq!(app.query_i64("SELECT count(*) FROM payments").await, 1);
}

async fn spawn_app_single_partition() -> TestApp {
    crate::helpers::spawn_app_with(1).await
}

fn service_env(database_url: &str, topic: &str, instance: &str) -> Vec<(String, String)> {
    [
        ("APP__HTTP__PORT", free_port().to_string()),
        ("APP__DATABASE__URL", database_url.to_string()),
        ("APP__KAFKA__BROKERS", kafka_brokers()),
        (
            "APP__AUTH__PUBLIC_KEY_PEM",
            test_support::jwt_keys().public_pem.clone(),
        ),
        ("APP__CONSUMER__TOPICS", format!("[{topic}]")),
        ("APP__CONSUMER__INSTANCE_ID", instance.to_string()),
        ("APP__CONSUMER__LEASE_TTL", "1500ms".to_string()),
        (
            "APP__WALLET__INITIAL_CREDIT_CENTS",
            INITIAL_CREDIT.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[tokio::test]
async fn two_instances_split_the_partitions_and_the_survivor_finishes_after_a_kill() {
    let database = fresh_database("payment_ha").await;
    let topic = crate::helpers::fresh_topic(4).await;
    let bin = env!("CARGO_BIN_EXE_payment-service");
    let owned = |instance: &'static str| {
        let database = database.clone();
        async move {
            test_support::try_query_i64(
                &database,
                &format!(
                    "SELECT count(*) FROM partition_leases \
                     WHERE owner = '{instance}' AND expires_at > now()"
                ),
            )
            .await
            .unwrap_or(0)
        }
    };

    let mut a = ChildProcess::spawn("payment-a", bin, service_env(&database.url, &topic, "a"));
    test_support::wait_until(
        crate::helpers::WAIT,
        "instance a to own all partitions",
        || async { (owned("a").await == 4).then_some(()) },
    )
    .await;
    let _b = ChildProcess::spawn("payment-b", bin, service_env(&database.url, &topic, "b"));
    test_support::wait_until(
        crate::helpers::WAIT,
        "a and b to split the partitions",
        || async { (owned("a").await == 2 && owned("b").await == 2).then_some(()) },
    )
    .await;

    // 10 customers, 6 orders of 100 each: all affordable with 1000.
    let customers: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    let orders: Vec<OrderCreated> = (0..60)
        .map(|i| order_created(customers[i % customers.len()], 100))
        .collect();
    let producer = {
        let topic = topic.clone();
        let orders = orders.clone();
        tokio::spawn(async move {
            for order in orders {
                let envelope = test_support::envelope(&Event::OrderCreated(order.clone()));
                let key = order.order_id.to_string();
                let partition = test_support::partition_of(&key, 4);
                test_support::produce_envelope(
                    &kafka_brokers(),
                    &topic,
                    partition,
                    &key,
                    &envelope,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Kill a in the middle of the stream.
    crate::helpers::wait_for_value_at_least(&database, "SELECT count(*) FROM payments", 15).await;
    a.kill_hard();
    producer.await.unwrap();

    wait_for_value(&database, "SELECT count(*) FROM payments", 60).await;
    assert_eq!(owned("b").await, 4, "b took over a's partitions");
    assert_eq!(
        query_i64(
            &database,
            "SELECT count(*) FROM payments WHERE status = 'CONFIRMED'"
        )
        .await,
        60
    );
    assert_eq!(
        query_i64(
            &database,
            "SELECT count(*) FROM wallet_entries WHERE kind = 'CHARGE'"
        )
        .await,
        60,
        "no order charged twice"
    );
    assert_eq!(
        query_i64(&database, "SELECT sum(balance_cents)::bigint FROM wallets").await,
        10 * INITIAL_CREDIT - 60 * 100
    );
    let handled_by = query_i64(&database, "SELECT count(*) FROM inbox").await;
    assert_eq!(handled_by, 60);
}

/// The wallet-opening race: the HTTP path (`GET /api/wallet`, a top-up)
/// opens the customer's wallet while the consumer charges their first
/// order. The charge's debit finds no wallet, its own open waits for the
/// other one and inserts nothing; the wallet and its credit exist by then,
/// so the order is charged, not refused for insufficient funds.
#[tokio::test]
async fn a_wallet_opened_by_the_http_path_during_the_first_charge_pays_the_order() {
    let app = spawn_app().await;
    let customer = Uuid::new_v4();
    // The HTTP path's open, held uncommitted.
    let mut http_path = app.database.client().await;
    let opening = http_path.transaction().await.unwrap();
    opening
        .execute(
            "INSERT INTO wallets (customer_id, balance_cents) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
            &[&customer, &INITIAL_CREDIT],
        )
        .await
        .unwrap();

    let order = order_created(customer, 600);
    app.publish(&Event::OrderCreated(order.clone())).await;
    // The consumer's open of the same wallet waits for ours.
    wait_for_value(
        &app.database,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
        1,
    )
    .await;
    opening.commit().await.unwrap();

    app.drained(1).await;
    assert_eq!(
        payment_of(&app, order.order_id).await,
        ("CONFIRMED".to_owned(), None, 600)
    );
    assert_eq!(balance(&app, customer).await, INITIAL_CREDIT - 600);
}

/// A refund asked for by a delivery failure comes after this service
/// confirmed the charge; when the charge cannot be read yet (its commit is
/// still being completed on a loaded machine) the event is retried, not
/// taken for "nothing to refund": that would lose the customer's money.
/// A cancellation may come before any charge, so it is not retried.
#[tokio::test]
async fn a_delivery_failure_for_a_charge_not_visible_yet_is_retried() {
    use commerce_common::consumer::ParticipantMetrics;
    use commerce_common::consumer::{EventHandler, HandleError};
    use diesel_async::{AsyncConnection, AsyncPgConnection};
    use payment_service::{config::WalletConfig, saga::PaymentSaga};

    let app = spawn_app().await;
    let saga = PaymentSaga::new(WalletConfig::default(), ParticipantMetrics::default());
    let mut conn = AsyncPgConnection::establish(&app.database.url)
        .await
        .unwrap();
    let customer = Uuid::new_v4();
    let delivery_failed = |order_id| {
        Event::DeliveryFailed(DeliveryFailed {
            order_id,
            customer_id: customer,
            reason: "NO_CAPACITY".into(),
        })
    };
    let handle = async |conn: &mut AsyncPgConnection, event: Event| {
        let envelope = test_support::envelope(&event);
        saga.handle(conn, &envelope, event).await
    };

    let just_placed = Uuid::now_v7();
    assert!(matches!(
        handle(&mut conn, delivery_failed(just_placed)).await,
        Err(HandleError::Transient(_))
    ));
    let cancelled = Event::OrderCancellationRequested(OrderCancellationRequested {
        order_id: just_placed,
        customer_id: customer,
        reason: "CUSTOMER_REQUEST".into(),
    });
    handle(&mut conn, cancelled).await.unwrap();

    // An order of long ago that this service never charged belongs to
    // someone else: nothing to refund, and the partition moves on.
    let window = commerce_common::events::NOT_YET_VISIBLE_WINDOW.as_secs();
    let long_ago = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        (chrono::Utc::now().timestamp() as u64).saturating_sub(window + 60),
        0,
    ));
    handle(&mut conn, delivery_failed(long_ago)).await.unwrap();
    assert_eq!(
        app.query_i64("SELECT count(*) FROM outbox").await,
        0,
        "nothing was said about orders never charged"
    );
}

#[tokio::test]
async fn a_fetch_of_orders_is_charged_in_two_statements_and_its_exceptions_one_by_one() {
    use commerce_common::consumer::{EventHandler, ParticipantMetrics};
    use diesel_async::AsyncConnection;
    use payment_service::{config::WalletConfig, saga::PaymentSaga};

    // The app runs the migrations; its consumer's topic stays empty.
    let app = spawn_app().await;
    let wallet = WalletConfig {
        initial_credit_cents: INITIAL_CREDIT,
        ..WalletConfig::default()
    };
    let saga = PaymentSaga::new(wallet, ParticipantMetrics::default());
    let (a, b, c, d, e) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let (mut conn, statements) = app.database.counted_connection().await;
    let registered: Vec<Event> = [a, b, c, d]
        .into_iter()
        .map(|user_id| {
            Event::UserRegistered(UserRegistered {
                user_id,
                email: format!("{user_id}@example.com"),
                name: "Ada".into(),
            })
        })
        .collect();
    let envelopes: Vec<_> = registered.iter().map(test_support::envelope).collect();
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let records = envelopes.iter().zip(registered.clone()).collect();
        saga.handle_all(conn, records).await.unwrap();
        Ok(())
    })
    .await
    .unwrap();

    let orders = [
        order_created(a, 300),
        order_created(b, 200),
        order_created(a, 400),  // a's second: debited alone
        order_created(c, 5000), // short: fails
        order_created(d, 100),
        order_created(e, 100), // no wallet yet: opened, then debited
    ];
    let mut events: Vec<Event> = orders.iter().cloned().map(Event::OrderCreated).collect();
    // b's order again, under a new id (a re-drive's request).
    events.push(Event::OrderCreated(orders[1].clone()));
    let envelopes: Vec<_> = events.iter().map(test_support::envelope).collect();
    let before = statements.sent();
    let announced = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            let records = envelopes.iter().zip(events.clone()).collect();
            saga.handle_all(conn, records).await.unwrap();
            // BEGIN; the payment rows; the debits of a, b, d and e; a's
            // second order debited; c's wallet looked for, debited again,
            // the payment failed and announced; e's wallet opened with its
            // ledger entry, debited; b's order's answer read and written
            // again.
            assert_eq!(
                statements.sent() - before,
                1 + 2 + 1 + 4 + 3 + 2,
                "statements sent"
            );
            Ok(test_support::inserted_in_transaction(conn, "outbox").await)
        })
        .await
        .unwrap();
    assert_eq!(announced, 7, "six answers, one of them again");

    for (i, expected) in [(0, "CONFIRMED"), (1, "CONFIRMED"), (2, "CONFIRMED")] {
        assert_eq!(payment_of(&app, orders[i].order_id).await.0, expected);
    }
    assert_eq!(
        payment_of(&app, orders[3].order_id).await,
        ("FAILED".into(), Some("INSUFFICIENT_FUNDS".into()), 5000)
    );
    assert_eq!(payment_of(&app, orders[4].order_id).await.0, "CONFIRMED");
    assert_eq!(payment_of(&app, orders[5].order_id).await.0, "CONFIRMED");
    let balances = [
        (a, INITIAL_CREDIT - 700),
        (b, INITIAL_CREDIT - 200),
        (c, INITIAL_CREDIT),
        (d, INITIAL_CREDIT - 100),
        (e, INITIAL_CREDIT - 100),
    ];
    for (customer, expected) in balances {
        assert_eq!(balance(&app, customer).await, expected);
    }
    assert_eq!(
        app.query_i64("SELECT count(*) FROM payments").await,
        6,
        "b's order charged once"
    );
    assert_eq!(
        app.query_i64("SELECT count(*) FROM wallet_entries WHERE kind = 'CHARGE'")
            .await,
        5
    );
}

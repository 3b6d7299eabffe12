//! The whole saga, end to end: the order, payment and delivery services and
//! the outbox relay (the real binaries), each service on its own fresh
//! database, on a broker of the stack's own (`Stack`).
//!
//! Every consumer reads its topics from offset 0, and every payment and
//! delivery service acts on every order it sees. Two stacks on one broker
//! would therefore both charge and book each other's orders. Each stack
//! gets a Kafka node of its own (`StackBroker`, from the jars `cargo xtask
//! test` names); otherwise the stacks share `TEST_KAFKA_BROKERS` and run one
//! at a time.

use std::time::Duration;

use reqwest::{Method, Response};
use serde_json::{Value, json};
use test_support::{
    KafkaReader, SendExt, Service, Stack, TestDatabase, assert_error_code, delete_all_records,
    mint_token, query_i64, shipping_address, wait_until,
};
use uuid::Uuid;

const SAGA_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(30);

const INITIAL_CREDIT: i64 = 100_000;

struct StackOptions {
    /// Bookings per delivery window.
    window_capacity: i32,
    /// Windows one customer may book per day (the delivery service's quota).
    bookings_per_day: u32,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            window_capacity: 50,
            bookings_per_day: 10,
        }
    }
}

/// Re-drives in these tests: a second without a move, then every two
/// seconds, at most four times.
const REDRIVE_AFTER: &str = "1s";
const REDRIVE_MAX_BACKOFF: &str = "2s";
const REDRIVE_MAX_ATTEMPTS: i32 = 4;

/// A customer with a valid token.
struct Customer {
    token: String,
}

impl Customer {
    fn new() -> Self {
        Self {
            token: mint_token(Uuid::new_v4()),
        }
    }
}

/// The order service's API, as its customers and operators use it.
struct OrderApi {
    address: String,
    db: TestDatabase,
    http: reqwest::Client,
}

impl OrderApi {
    async fn send(
        &self,
        customer: &Customer,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Response {
        let request = self
            .http
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(&customer.token);
        match body {
            Some(body) => request.json(body),
            None => request,
        }
        .sent()
        .await
    }

    async fn place(&self, customer: &Customer, body: &Value) -> Response {
        self.send(customer, Method::POST, "/api/orders", Some(body))
            .await
    }

    async fn order_json(&self, customer: &Customer, id: &str) -> Value {
        let response = self
            .send(customer, Method::GET, &format!("/api/orders/{id}"), None)
            .await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    async fn cancel(&self, customer: &Customer, id: &str, body: Option<Value>) -> Response {
        let path = format!("/api/orders/{id}/cancel");
        self.send(customer, Method::POST, &path, body.as_ref())
            .await
    }

    /// The service's `/metrics` text.
    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.address))
            .text_body()
            .await
    }
}

/// Everything a saga needs, and shortcuts into it.
struct SagaStack {
    order: OrderApi,
    payment_db: TestDatabase,
    delivery_db: TestDatabase,
    brokers: String,
    http: reqwest::Client,
    stack: Stack,
}

impl SagaStack {
    async fn start(options: StackOptions) -> SagaStack {
        let stack = Stack::builder("e2e")
            .services(&[Service::Order, Service::Payment, Service::Delivery])
            .relay()
            .env(
                Service::Payment,
                "APP__WALLET__INITIAL_CREDIT_CENTS",
                INITIAL_CREDIT,
            )
            .env(
                Service::Delivery,
                "APP__WINDOWS__CAPACITY",
                options.window_capacity,
            )
            .env(
                Service::Delivery,
                "APP__QUOTAS__BOOKINGS_PER_CUSTOMER_PER_DAY",
                options.bookings_per_day,
            )
            .env(Service::Order, "APP__REDRIVE__AFTER", REDRIVE_AFTER)
            .env(
                Service::Order,
                "APP__REDRIVE__MAX_BACKOFF",
                REDRIVE_MAX_BACKOFF,
            )
            .env(
                Service::Order,
                "APP__REDRIVE__MAX_ATTEMPTS",
                REDRIVE_MAX_ATTEMPTS,
            )
            .start()
            .await;
        SagaStack {
            order: OrderApi {
                address: stack.address(Service::Order),
                db: stack.db(Service::Order).clone(),
                http: stack.http().clone(),
            },
            payment_db: stack.db(Service::Payment).clone(),
            delivery_db: stack.db(Service::Delivery).clone(),
            brokers: stack.brokers().to_owned(),
            http: stack.http().clone(),
            stack,
        }
    }

    async fn place(&self, customer: &Customer, body: &Value) -> String {
        let response = self.order.place(customer, body).await;
        assert_eq!(response.status(), 202);
        let order: Value = response.json().await.unwrap();
        assert_eq!(order["status"], "PENDING");
        order["id"].as_str().unwrap().to_owned()
    }

    /// Waits until the order reaches `status`; returns it.
    async fn wait_for_status(&self, customer: &Customer, id: &str, status: &str) -> Value {
        wait_until(
            SAGA_TIMEOUT,
            &format!("order {id} to be {status}"),
            || async {
                let order = self.order.order_json(customer, id).await;
                (order["status"] == status).then_some(order)
            },
        )
        .await
    }

    async fn get(&self, service: Service, customer: &Customer, path: &str) -> (u16, Value) {
        let response = self
            .http
            .request(Method::GET, self.stack.url(service, path))
            .bearer_auth(&customer.token)
            .sent()
            .await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn balance(&self, customer: &Customer) -> i64 {
        let (status, wallet) = self.get(Service::Payment, customer, "/api/wallet").await;
        assert_eq!(status, 200, "{wallet}");
        wallet["balance_cents"].as_i64().unwrap()
    }

    async fn payment_of(&self, customer: &Customer, order_id: &str) -> Value {
        let path = format!("/api/payments/{order_id}");
        let (status, payment) = self.get(Service::Payment, customer, &path).await;
        assert_eq!(status, 200, "{payment}");
        payment
    }

    async fn delivery_of(&self, customer: &Customer, order_id: &str) -> (u16, Value) {
        let path = format!("/api/deliveries/{order_id}");
        self.get(Service::Delivery, customer, &path).await
    }

    /// The consumer of `db` stops applying `topic`: a stranger holds its
    /// partitions' leases (what it fetches meanwhile is not applied).
    async fn pause(&self, db: &TestDatabase, topic: &str) {
        let client = db.client().await;
        wait_until(
            START_TIMEOUT,
            &format!("leases of {topic} in {}", db.name),
            || async {
                let held: i64 = client
                .query_one(
                    "SELECT count(*) FROM partition_leases WHERE topic = $1 AND owner IS NOT NULL",
                    &[&topic],
                )
                .await
                .unwrap()
                .get(0);
                (held == 3).then_some(())
            },
        )
        .await;
        client
            .execute(
                "UPDATE partition_leases SET owner = 'paused-by-test', \
                     expires_at = now() + interval '1 hour' WHERE topic = $1",
                &[&topic],
            )
            .await
            .unwrap();
    }

    /// The broker loses `event_type` of `order_id` in flight: once it is
    /// on the topic `reader` reads, every record of the topic is deleted,
    /// then the consumers `paused` on it resume (their offsets now lie
    /// before the log's start: they go on from there, the event never seen).
    /// Answers the lost event's id.
    async fn lose(
        &self,
        reader: &mut KafkaReader,
        event_type: &str,
        order_id: &str,
        paused: &[&TestDatabase],
    ) -> Uuid {
        let record = reader
            .wait_for(SAGA_TIMEOUT, &format!("{event_type} of {order_id}"), |r| {
                let envelope = r.envelope();
                envelope.event_type == event_type && envelope.aggregate_id == order_id
            })
            .await;
        let topic = record.topic.as_str();
        assert!(delete_all_records(&self.brokers, topic).await > 0);
        for db in paused {
            db.client()
                .await
                .execute(
                    "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity' \
                     WHERE topic = $1",
                    &[&topic],
                )
                .await
                .unwrap();
        }
        record.envelope().event_id
    }

    /// `(booked, scheduled deliveries)` of the window starting at `start`,
    /// read from the delivery database.
    async fn window_usage(&self, start: &str) -> (i32, i64) {
        let start: chrono::DateTime<chrono::Utc> = start.parse().unwrap();
        let client = self.delivery_db.client().await;
        let row = client
            .query_one(
                "SELECT w.booked, (SELECT count(*) FROM deliveries d \
                   WHERE d.window_id = w.id AND d.status = 'SCHEDULED') \
                 FROM delivery_windows w WHERE w.starts_at = $1",
                &[&start],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }
}

/// An order of `quantity` units at 10.00.
fn order_of(quantity: i64) -> Value {
    json!({
        "items": [{"sku": "E2E-1", "quantity": quantity, "unit_price_cents": 1000}],
        "shipping_address": shipping_address()
    })
}

#[tokio::test]
async fn happy_path_customer_cancellation_and_insufficient_funds() {
    let stack = SagaStack::start(StackOptions::default()).await;

    // Happy path: paid, then a window booked; the order shows both.
    let alice = Customer::new();
    let id = stack.place(&alice, &order_of(3)).await;
    let order = stack
        .wait_for_status(&alice, &id, "DELIVERY_SCHEDULED")
        .await;
    assert_eq!(order["reason"], Value::Null);
    assert_eq!(order["total_cents"], 3_000);
    assert_eq!(order["payment"]["status"], "CONFIRMED");
    assert_eq!(order["payment"]["amount_cents"], 3_000);
    let (status, delivery) = stack.delivery_of(&alice, &id).await;
    assert_eq!(status, 200, "{delivery}");
    assert_eq!(delivery["status"], "SCHEDULED");
    assert_eq!(order["delivery"]["status"], "SCHEDULED");
    assert_eq!(
        order["delivery"]["tracking_number"],
        delivery["tracking_number"]
    );
    assert_eq!(order["delivery"]["window_start"], delivery["window_start"]);
    assert_eq!(order["delivery"]["window_end"], delivery["window_end"]);
    assert_eq!(stack.balance(&alice).await, INITIAL_CREDIT - 3_000);
    assert_eq!(stack.payment_of(&alice, &id).await["status"], "CONFIRMED");

    // The customer cancels before dispatch: refund and window released.
    let window_start = delivery["window_start"].as_str().unwrap().to_owned();
    let response = stack.order.cancel(&alice, &id, None).await;
    assert_eq!(response.status(), 202);
    let order = stack.wait_for_status(&alice, &id, "CANCELLED").await;
    assert_eq!(order["reason"], "CUSTOMER_CANCELLED");
    assert_eq!(order["payment"]["status"], "REFUNDED");
    assert_eq!(stack.balance(&alice).await, INITIAL_CREDIT);
    assert_eq!(stack.payment_of(&alice, &id).await["status"], "REFUNDED");
    let (_, delivery) = wait_until(SAGA_TIMEOUT, "the delivery to be cancelled", || async {
        let delivery = stack.delivery_of(&alice, &id).await;
        (delivery.1["status"] == "CANCELLED").then_some(delivery)
    })
    .await;
    assert_eq!(delivery["reason"], "CUSTOMER_CANCELLED");
    let (booked, scheduled) = stack.window_usage(&window_start).await;
    assert_eq!(
        i64::from(booked),
        scheduled,
        "the window counts exactly its scheduled deliveries: the cancelled one was released"
    );
    let order = stack.wait_for_status(&alice, &id, "CANCELLED").await;
    assert_eq!(order["delivery"]["status"], "CANCELLED");

    // Insufficient funds: 2000.00 against a wallet of 1000.00.
    let bob = Customer::new();
    let id = stack.place(&bob, &order_of(200)).await;
    let order = stack.wait_for_status(&bob, &id, "REJECTED").await;
    assert_eq!(order["reason"], "INSUFFICIENT_FUNDS");
    assert_eq!(order["payment"]["status"], "FAILED");
    assert_eq!(order["delivery"], Value::Null);
    assert_eq!(
        stack.balance(&bob).await,
        INITIAL_CREDIT,
        "balance unchanged"
    );
    assert_eq!(stack.payment_of(&bob, &id).await["status"], "FAILED");
    let (status, _) = stack.delivery_of(&bob, &id).await;
    assert_eq!(status, 404, "nothing was booked for a rejected order");
}

#[tokio::test]
async fn no_delivery_capacity_cancels_the_order_with_a_refund() {
    let stack = SagaStack::start(StackOptions {
        window_capacity: 0,
        ..StackOptions::default()
    })
    .await;
    let customer = Customer::new();
    let id = stack.place(&customer, &order_of(2)).await;
    stack.wait_for_status(&customer, &id, "CANCELLED").await;
    // The refund (topic payments) may reach the order before the delivery's
    // failure (topic deliveries): the order shows both once each arrived.
    let order = wait_until(
        SAGA_TIMEOUT,
        "the order to record the failed delivery",
        || async {
            let order = stack.order.order_json(&customer, &id).await;
            (order["delivery"]["status"] == "FAILED").then_some(order)
        },
    )
    .await;
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["reason"], "NO_CAPACITY");
    assert_eq!(order["payment"]["status"], "REFUNDED");
    assert_eq!(order["payment"]["reason"], "NO_CAPACITY");
    assert_eq!(order["delivery"]["status"], "FAILED");
    assert_eq!(order["delivery"]["reason"], "NO_CAPACITY");
    assert_eq!(stack.balance(&customer).await, INITIAL_CREDIT, "refunded");
    let payment = stack.payment_of(&customer, &id).await;
    assert_eq!(payment["status"], "REFUNDED");
    let (status, delivery) = stack.delivery_of(&customer, &id).await;
    assert_eq!(status, 200);
    assert_eq!(delivery["status"], "FAILED");
}

/// Sagas heal themselves (services/order/src/redrive.rs). At each hop of
/// the saga the broker loses the event in flight (its consumer was paused,
/// then the topic's records were deleted), and every order still ends where
/// it should, with the money moved exactly once. Without the re-drive each
/// of these orders stays PENDING or PAID forever.
#[tokio::test]
async fn a_lost_event_at_any_step_is_healed_by_the_saga_re_drive() {
    let stack = SagaStack::start(StackOptions::default()).await;
    let brokers = stack.brokers.clone();
    let (order_db, payment_db, delivery_db) =
        (&stack.order.db, &stack.payment_db, &stack.delivery_db);
    let mut charged = Vec::new();

    // Placement -> payment: OrderCreated lost before payment read it. The
    // order service writes it again under its first id.
    let customer = Customer::new();
    stack.pause(payment_db, "orders").await;
    let mut reader = KafkaReader::new(&brokers, "orders").await;
    let id = stack.place(&customer, &order_of(1)).await;
    let lost = stack
        .lose(&mut reader, "OrderCreated", &id, &[payment_db])
        .await;
    stack
        .wait_for_status(&customer, &id, "DELIVERY_SCHEDULED")
        .await;
    let again = KafkaReader::new(&brokers, "orders")
        .await
        .wait_for(SAGA_TIMEOUT, "OrderCreated again", |r| {
            r.envelope().aggregate_id == id && r.envelope().event_type == "OrderCreated"
        })
        .await;
    assert_eq!(
        again.envelope().event_id,
        lost,
        "written again under its first id"
    );
    charged.push((customer, 1_000));

    // Payment -> delivery: PaymentConfirmed lost before delivery read it
    // (the order did: PAID). Payment announces it again.
    let customer = Customer::new();
    stack.pause(delivery_db, "payments").await;
    let mut reader = KafkaReader::new(&brokers, "payments").await;
    let id = stack.place(&customer, &order_of(2)).await;
    stack.wait_for_status(&customer, &id, "PAID").await;
    stack
        .lose(&mut reader, "PaymentConfirmed", &id, &[delivery_db])
        .await;
    stack
        .wait_for_status(&customer, &id, "DELIVERY_SCHEDULED")
        .await;
    charged.push((customer, 2_000));

    // Payment -> order: PaymentConfirmed lost before the order read it.
    // Payment announces it again under its first id.
    let customer = Customer::new();
    stack.pause(order_db, "payments").await;
    let mut reader = KafkaReader::new(&brokers, "payments").await;
    let id = stack.place(&customer, &order_of(3)).await;
    let lost = stack
        .lose(&mut reader, "PaymentConfirmed", &id, &[order_db])
        .await;
    stack
        .wait_for_status(&customer, &id, "DELIVERY_SCHEDULED")
        .await;
    let again = KafkaReader::new(&brokers, "payments")
        .await
        .wait_for(SAGA_TIMEOUT, "PaymentConfirmed again", |r| {
            r.envelope().aggregate_id == id && r.envelope().event_type == "PaymentConfirmed"
        })
        .await;
    assert_eq!(
        again.envelope().event_id,
        lost,
        "announced again under its first id"
    );
    charged.push((customer, 3_000));

    // Delivery -> order: DeliveryScheduled lost before the order read it.
    let customer = Customer::new();
    stack.pause(order_db, "deliveries").await;
    let mut reader = KafkaReader::new(&brokers, "deliveries").await;
    let id = stack.place(&customer, &order_of(4)).await;
    stack
        .lose(&mut reader, "DeliveryScheduled", &id, &[order_db])
        .await;
    stack
        .wait_for_status(&customer, &id, "DELIVERY_SCHEDULED")
        .await;
    charged.push((customer, 4_000));

    // Cancellation: OrderCancellationRequested lost before payment and
    // delivery read it. Refunded, window released.
    let customer = Customer::new();
    let id = stack.place(&customer, &order_of(5)).await;
    stack
        .wait_for_status(&customer, &id, "DELIVERY_SCHEDULED")
        .await;
    stack.pause(payment_db, "orders").await;
    stack.pause(delivery_db, "orders").await;
    let mut reader = KafkaReader::new(&brokers, "orders").await;
    assert_eq!(stack.order.cancel(&customer, &id, None).await.status(), 202);
    stack
        .lose(
            &mut reader,
            "OrderCancellationRequested",
            &id,
            &[payment_db, delivery_db],
        )
        .await;
    let order = stack.wait_for_status(&customer, &id, "CANCELLED").await;
    assert_eq!(order["reason"], "CUSTOMER_CANCELLED");
    wait_until(SAGA_TIMEOUT, "the window to be released", || async {
        let (_, delivery) = stack.delivery_of(&customer, &id).await;
        (delivery["status"] == "CANCELLED").then_some(())
    })
    .await;
    charged.push((customer, 0));

    // No window left from here on: every booking fails and is refunded.
    delivery_db
        .client()
        .await
        .execute("UPDATE delivery_windows SET capacity = booked", &[])
        .await
        .unwrap();

    // Delivery -> payment: DeliveryFailed lost before payment read it (the
    // order did): no refund yet. Delivery announces it again.
    let customer = Customer::new();
    stack.pause(payment_db, "deliveries").await;
    let mut reader = KafkaReader::new(&brokers, "deliveries").await;
    let id = stack.place(&customer, &order_of(6)).await;
    stack
        .lose(&mut reader, "DeliveryFailed", &id, &[payment_db])
        .await;
    let order = stack.wait_for_status(&customer, &id, "CANCELLED").await;
    assert_eq!(order["reason"], "NO_CAPACITY");
    charged.push((customer, 0));

    // Refund -> order: PaymentConfirmed and PaymentRefunded both lost
    // before the order read them.
    let customer = Customer::new();
    stack.pause(order_db, "payments").await;
    let mut reader = KafkaReader::new(&brokers, "payments").await;
    let id = stack.place(&customer, &order_of(7)).await;
    stack
        .lose(&mut reader, "PaymentRefunded", &id, &[order_db])
        .await;
    let order = stack.wait_for_status(&customer, &id, "CANCELLED").await;
    assert_eq!(order["reason"], "NO_CAPACITY");
    assert_eq!(order["payment"]["status"], "REFUNDED");
    charged.push((customer, 0));

    // The same loss for an order from before the request ids were kept: it
    // is re-driven under a new id, which payment has never seen; payment
    // finds the order charged (and refunded) and answers again all the same.
    let customer = Customer::new();
    stack.pause(order_db, "payments").await;
    let mut reader = KafkaReader::new(&brokers, "payments").await;
    let id = stack.place(&customer, &order_of(8)).await;
    order_db
        .client()
        .await
        .execute(
            "UPDATE orders SET placed_event_id = NULL WHERE id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    stack
        .lose(&mut reader, "PaymentRefunded", &id, &[order_db])
        .await;
    let order = stack.wait_for_status(&customer, &id, "CANCELLED").await;
    assert_eq!(order["reason"], "NO_CAPACITY");
    charged.push((customer, 0));

    // Every step was re-driven, and counted by step.
    let metrics = stack.order.metrics().await;
    for step in ["payment", "delivery", "refund", "cancellation"] {
        let line = format!("saga_redrives_total{{step=\"{step}\"}}");
        assert!(
            metrics.contains(&line),
            "no re-drive of step {step}:\n{metrics}"
        );
    }

    // Money moved once per outcome: each wallet holds its credit less what
    // its DELIVERY_SCHEDULED order cost, and no order was charged or
    // refunded twice.
    for (customer, cost) in &charged {
        assert_eq!(stack.balance(customer).await, INITIAL_CREDIT - cost);
    }
    let twice = query_i64(
        payment_db,
        "SELECT count(*) FROM (SELECT order_id, kind FROM wallet_entries \
         WHERE order_id IS NOT NULL GROUP BY order_id, kind HAVING count(*) > 1) twice",
    )
    .await;
    assert_eq!(twice, 0, "an order was charged or refunded twice");
}

/// A saga whose re-drives are exhausted is never silent: it is counted,
/// listed for the operator, and re-driven when the operator asks.
#[tokio::test]
async fn a_saga_that_stays_stuck_is_listed_and_re_driven_when_an_operator_asks() {
    let stack = SagaStack::start(StackOptions::default()).await;
    let customer = Customer::new();
    // Payment applies nothing of `orders` while the order is re-driven.
    stack.pause(&stack.payment_db, "orders").await;
    let mut reader = KafkaReader::new(&stack.brokers, "orders").await;
    let id = stack.place(&customer, &order_of(1)).await;
    let stuck = wait_until(SAGA_TIMEOUT, "the order to be listed as stuck", || async {
        let list: Value = stack
            .http
            .get(format!("{}/admin/sagas/stuck", stack.order.address))
            .json_body()
            .await;
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|saga| saga["order_id"] == id.as_str())
            .cloned()
    })
    .await;
    assert_eq!(stuck["status"], "PENDING");
    assert_eq!(stuck["step"], "payment");
    assert_eq!(stuck["redrive_attempts"], REDRIVE_MAX_ATTEMPTS);
    assert!(stack.order.metrics().await.contains("sagas_stuck 1"));
    let page = stack
        .http
        .get(format!("{}/admin/sagas", stack.order.address))
        .text_body()
        .await;
    assert!(page.contains("1 stuck"), "{page}");
    assert!(page.contains(&id), "the page lists the stuck order: {page}");

    // The broker loses what was written, payment reads again, and nothing
    // re-drives the order any more until the operator asks.
    stack
        .lose(&mut reader, "OrderCreated", &id, &[&stack.payment_db])
        .await;
    let redrive = |order_id: &str| {
        let url = format!("{}/admin/sagas/{order_id}/redrive", stack.order.address);
        let http = stack.http.clone();
        async move { http.post(url).sent().await }
    };
    assert_eq!(redrive(&id).await.status(), 202);
    stack
        .wait_for_status(&customer, &id, "DELIVERY_SCHEDULED")
        .await;
    assert!(stack.order.metrics().await.contains("sagas_stuck 0"));
    assert_eq!(stack.balance(&customer).await, INITIAL_CREDIT - 1_000);

    // An order no saga works on any more cannot be re-driven.
    let response = redrive(&id).await;
    assert_error_code(response, 404, "NOT_IN_FLIGHT").await;
}

#[tokio::test]
async fn a_booking_over_the_daily_limit_cancels_the_order_with_daily_limit_and_a_refund() {
    let stack = SagaStack::start(StackOptions {
        bookings_per_day: 1,
        ..StackOptions::default()
    })
    .await;
    let customer = Customer::new();
    let first = stack.place(&customer, &order_of(1)).await;
    stack
        .wait_for_status(&customer, &first, "DELIVERY_SCHEDULED")
        .await;

    let second = stack.place(&customer, &order_of(2)).await;
    stack.wait_for_status(&customer, &second, "CANCELLED").await;
    let order = wait_until(
        SAGA_TIMEOUT,
        "the order to record the failed delivery",
        || async {
            let order = stack.order.order_json(&customer, &second).await;
            (order["delivery"]["status"] == "FAILED").then_some(order)
        },
    )
    .await;
    assert_eq!(order["reason"], "DAILY_LIMIT", "{order}");
    assert_eq!(order["payment"]["status"], "REFUNDED");
    assert_eq!(order["payment"]["reason"], "DAILY_LIMIT");
    assert_eq!(order["delivery"]["reason"], "DAILY_LIMIT");
    assert_eq!(
        stack.balance(&customer).await,
        INITIAL_CREDIT - 1_000,
        "the second order's money is back; the first one's is spent"
    );
    let (status, delivery) = stack.delivery_of(&customer, &second).await;
    assert_eq!(status, 200);
    assert_eq!(delivery["status"], "FAILED");
    assert_eq!(delivery["reason"], "DAILY_LIMIT");
}

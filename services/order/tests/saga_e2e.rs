//! The whole saga, end to end: the order service (in process), the payment
//! and delivery services and the outbox relay (the real binaries, as child
//! processes), each service on its own fresh database, all through the
//! test broker. Nothing is faked: events travel outbox -> WAL -> relay ->
//! Kafka -> consumer runtime.
//!
//! Every consumer reads its topics from offset 0, and every payment and
//! delivery service acts on every order it sees. Two stacks on one broker
//! would therefore both charge and book each other's orders. Each stack
//! gets a Kafka node of its own (`StackBroker`, from the jars `cargo xtask
//! test` names); otherwise the stacks share `TEST_KAFKA_BROKERS` and run one
//! at a time.

mod common;

use std::time::Duration;

use common::{Customer, TestApp, spawn_app_with, valid_order};
use reqwest::Method;
use serde_json::Value;
use test_support::{
    ChildProcess, Relay, StackBroker, TestDatabase, bin_path, free_port, fresh_database, jwt_keys,
    wait_for_http_ok, wait_until,
};

const SAGA_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(30);

const INITIAL_CREDIT: i64 = 100_000;

struct StackOptions {
    /// Bookings per delivery window.
    window_capacity: i32,
}

/// A service binary and its port.
struct Service {
    port: u16,
    _process: ChildProcess,
}

impl Service {
    async fn start(
        name: &str,
        db: &TestDatabase,
        brokers: &str,
        extra: Vec<(String, String)>,
    ) -> Service {
        let port = free_port();
        let mut env = vec![
            ("APP__HTTP__PORT".to_owned(), port.to_string()),
            ("APP__DATABASE__URL".to_owned(), db.url.clone()),
            ("APP__DATABASE__MAX_CONNECTIONS".to_owned(), "4".to_owned()),
            ("APP__KAFKA__BROKERS".to_owned(), brokers.to_owned()),
            (
                "APP__AUTH__PUBLIC_KEY_FILE".to_owned(),
                jwt_keys().public_key_file.display().to_string(),
            ),
            (
                "APP__CONSUMER__FETCH_MAX_WAIT".to_owned(),
                "20ms".to_owned(),
            ),
            ("RUST_LOG".to_owned(), "info,rskafka=error".to_owned()),
            ("LOG_FORMAT".to_owned(), "pretty".to_owned()),
        ];
        env.extend(extra);
        let process = ChildProcess::spawn(name, bin_path(name), env);
        wait_for_http_ok(&format!("http://127.0.0.1:{port}/ready"), START_TIMEOUT).await;
        Service {
            port,
            _process: process,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Everything a saga needs. Field order is drop order: the relay goes
/// first (then its slots), then the services, the broker last.
struct Stack {
    _relay: Relay,
    order: TestApp,
    payment: Service,
    delivery: Service,
    delivery_db: TestDatabase,
    http: reqwest::Client,
    _broker: StackBroker,
}

impl Stack {
    async fn start(options: StackOptions) -> Stack {
        let broker = StackBroker::start().await;
        let brokers = broker.brokers.clone();
        let payment_db = fresh_database("order_e2e_payment").await;
        let delivery_db = fresh_database("order_e2e_delivery").await;
        let payment = Service::start(
            "payment-service",
            &payment_db,
            &brokers,
            vec![(
                "APP__WALLET__INITIAL_CREDIT_CENTS".to_owned(),
                INITIAL_CREDIT.to_string(),
            )],
        )
        .await;
        let delivery = Service::start(
            "delivery-service",
            &delivery_db,
            &brokers,
            vec![(
                "APP__WINDOWS__CAPACITY".to_owned(),
                options.window_capacity.to_string(),
            )],
        )
        .await;
        let order = spawn_app_with(|settings| {
            settings.saga.enabled = true;
            settings.kafka.brokers = brokers.clone();
            settings.consumer.fetch_max_wait = Duration::from_millis(20);
        })
        .await;
        let relay = Relay::start(
            &brokers,
            &[
                ("order", &order.db),
                ("payment", &payment_db),
                ("delivery", &delivery_db),
            ],
            START_TIMEOUT,
        )
        .await;
        Stack {
            _relay: relay,
            order,
            payment,
            delivery,
            delivery_db,
            http: reqwest::Client::new(),
            _broker: broker,
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

    async fn get(&self, service: &Service, customer: &Customer, path: &str) -> (u16, Value) {
        let response = self
            .http
            .request(Method::GET, service.url(path))
            .bearer_auth(&customer.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn balance(&self, customer: &Customer) -> i64 {
        let (status, wallet) = self.get(&self.payment, customer, "/api/wallet").await;
        assert_eq!(status, 200, "{wallet}");
        wallet["balance_cents"].as_i64().unwrap()
    }

    async fn payment_of(&self, customer: &Customer, order_id: &str) -> Value {
        let path = format!("/api/payments/{order_id}");
        let (status, payment) = self.get(&self.payment, customer, &path).await;
        assert_eq!(status, 200, "{payment}");
        payment
    }

    async fn delivery_of(&self, customer: &Customer, order_id: &str) -> (u16, Value) {
        let path = format!("/api/deliveries/{order_id}");
        self.get(&self.delivery, customer, &path).await
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
    let mut body = valid_order();
    body["items"] = serde_json::json!([
        {"sku": "E2E-1", "quantity": quantity, "unit_price_cents": 1000}
    ]);
    body
}

#[tokio::test]
async fn happy_path_customer_cancellation_and_insufficient_funds() {
    let stack = Stack::start(StackOptions {
        window_capacity: 50,
    })
    .await;

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
    let stack = Stack::start(StackOptions { window_capacity: 0 }).await;
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

//! The whole saga, end to end: the order service (in process), the payment
//! and delivery services and the outbox relay (the real binaries, as child
//! processes), each service on its own fresh database, all through the
//! test broker. Nothing is faked: events travel outbox -> WAL -> relay ->
//! Kafka -> consumer runtime.

mod common;

use std::time::Duration;

use common::{Customer, TestApp, spawn_app_with, valid_order};
use reqwest::Method;
use serde_json::Value;
use test_support::{
    ChildProcess, TestDatabase, bin_path, free_port, fresh_database, jwt_keys, kafka_brokers,
    wait_for_http_ok, wait_until,
};
use uuid::Uuid;

const SAGA_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(30);

struct StackOptions {
    initial_credit_cents: i64,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            initial_credit_cents: 100_000,
        }
    }
}

/// A service binary and its port.
struct Service {
    port: u16,
    _process: ChildProcess,
}

impl Service {
    async fn start(name: &str, db: &TestDatabase, extra: Vec<(String, String)>) -> Service {
        let port = free_port();
        let mut env = vec![
            ("APP__HTTP__PORT".to_owned(), port.to_string()),
            ("APP__DATABASE__URL".to_owned(), db.url.clone()),
            ("APP__DATABASE__MAX_CONNECTIONS".to_owned(), "4".to_owned()),
            ("APP__KAFKA__BROKERS".to_owned(), kafka_brokers()),
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

/// The relay binary with one slot per database. Dropping it kills the
/// process, then drops the slots (a forgotten slot pins WAL forever).
struct Relay {
    process: ChildProcess,
    slots: Vec<(String, String)>,
}

impl Relay {
    async fn start(sources: &[(&str, &TestDatabase)]) -> Relay {
        let port = free_port();
        let mut env = vec![
            ("APP__HTTP__PORT".to_owned(), port.to_string()),
            ("APP__KAFKA__BROKERS".to_owned(), kafka_brokers()),
            (
                "APP__REPLICATION__STATUS_INTERVAL_MS".to_owned(),
                "200".to_owned(),
            ),
            ("RUST_LOG".to_owned(), "info,rskafka=error".to_owned()),
            ("LOG_FORMAT".to_owned(), "pretty".to_owned()),
        ];
        let mut slots = Vec::new();
        for (name, db) in sources {
            let slot = format!("order_e2e_{}", &Uuid::new_v4().simple().to_string()[..12]);
            let key = name.to_uppercase();
            env.push((format!("APP__SOURCES__{key}__URL"), db.url.clone()));
            env.push((format!("APP__SOURCES__{key}__SLOT"), slot.clone()));
            slots.push((db.url.clone(), slot));
        }
        let relay = Relay {
            process: ChildProcess::spawn("outbox-relay", bin_path("outbox-relay"), env),
            slots,
        };
        let expected = sources.len();
        let http = reqwest::Client::new();
        let status_url = format!("http://127.0.0.1:{port}/api/status");
        wait_until(START_TIMEOUT, "every relay source to stream", || async {
            let status: Value = http.get(&status_url).send().await.ok()?.json().await.ok()?;
            let sources = status["sources"].as_array()?;
            (sources.len() == expected && sources.iter().all(|s| s["state"] == "streaming"))
                .then_some(())
        })
        .await;
        relay
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.process.kill_hard();
        let slots = std::mem::take(&mut self.slots);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                for (url, slot) in slots {
                    drop_slot(&url, &slot).await;
                }
            });
        })
        .join();
    }
}

async fn drop_slot(url: &str, slot: &str) {
    let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        return;
    };
    tokio::spawn(connection);
    // The walsender notices its client's death after a moment.
    for _ in 0..100 {
        let _ = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await;
        let gone = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map(|row| row.is_none())
            .unwrap_or(true);
        if gone {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything a saga needs. Field order is drop order: the relay goes
/// first (then its slots), then the services.
struct Stack {
    _relay: Relay,
    order: TestApp,
    payment: Service,
    http: reqwest::Client,
}

impl Stack {
    async fn start(options: StackOptions) -> Stack {
        let payment_db = fresh_database("order_e2e_payment").await;
        let payment = Service::start(
            "payment-service",
            &payment_db,
            vec![(
                "APP__WALLET__INITIAL_CREDIT_CENTS".to_owned(),
                options.initial_credit_cents.to_string(),
            )],
        )
        .await;
        let order = spawn_app_with(|settings| {
            settings.saga.enabled = true;
            settings.kafka.brokers = kafka_brokers();
            settings.consumer.fetch_max_wait = Duration::from_millis(20);
        })
        .await;
        let relay = Relay::start(&[("order", &order.db), ("payment", &payment_db)]).await;
        Stack {
            _relay: relay,
            order,
            payment,
            http: reqwest::Client::new(),
        }
    }

    async fn place(&self, customer: &Customer, body: &Value) -> String {
        let response = self.order.place(customer, body).await;
        assert_eq!(response.status(), 202);
        let order: Value = response.json().await.unwrap();
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

    async fn payment_api(&self, customer: &Customer, path: &str) -> Value {
        self.http
            .request(Method::GET, self.payment.url(path))
            .bearer_auth(&customer.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn insufficient_funds_rejects_the_order_and_leaves_the_balance() {
    let stack = Stack::start(StackOptions {
        initial_credit_cents: 1_000,
    })
    .await;
    let customer = Customer::new();
    // valid_order() costs 3097 cents, more than the wallet holds.
    let id = stack.place(&customer, &valid_order()).await;
    let order = stack.wait_for_status(&customer, &id, "REJECTED").await;
    assert_eq!(order["reason"], "INSUFFICIENT_FUNDS");
    assert_eq!(order["payment"]["status"], "FAILED");
    assert_eq!(order["delivery"], Value::Null);

    let wallet = stack.payment_api(&customer, "/api/wallet").await;
    assert_eq!(wallet["balance_cents"], 1_000, "{wallet}");
    let payment = stack
        .payment_api(&customer, &format!("/api/payments/{id}"))
        .await;
    assert_eq!(payment["status"], "FAILED", "{payment}");
}

//! Shared test helpers: the real app on port 0 against a fresh database,
//! authenticated requests, and a logical-decoding slot that shows which
//! events reached the outbox (its rows are deleted in the same transaction,
//! so the WAL is the only place to see them).

use std::time::Duration;

use commerce_common::config::{DatabaseConfig, HttpConfig, Secret};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use order_service::{config::Settings, startup::Application};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use test_support::{
    RunningApp, SendExt, TestDatabase, assert_error, fresh_database, jwt_keys, mint_token,
    shipping_address,
};
use uuid::Uuid;

pub struct TestApp {
    pub address: String,
    pub db: TestDatabase,
    pub http: reqwest::Client,
    _app: RunningApp,
}

/// The app without the saga consumer: HTTP only, no broker needed.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The app consuming `payments` and `deliveries` from the test broker.
pub async fn spawn_consuming_app() -> TestApp {
    spawn_app_with(|settings| {
        settings.saga.enabled = true;
        settings.kafka.brokers = test_support::kafka_brokers();
        settings.consumer.fetch_max_wait = Duration::from_millis(20);
        settings.consumer.lease_ttl = Duration::from_secs(3);
    })
    .await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    if test_support::test_log_enabled() {
        commerce_common::telemetry::init("order-service-test");
    }
    let db = fresh_database("order_test").await;
    let mut settings = Settings {
        http: HttpConfig::with_port(0),
        database: DatabaseConfig {
            max_connections: 4,
            ..DatabaseConfig::with_url(&db.url)
        },
        ..Settings::default()
    };
    settings.auth.public_key_pem = Some(Secret::new(jwt_keys().public_pem.clone()));
    settings.saga.enabled = false;
    configure(&mut settings);
    let app = RunningApp::spawn(Application::build(settings).await.expect("build the app"));
    TestApp {
        address: app.address(),
        db,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        _app: app,
    }
}

/// A customer with a valid token.
#[derive(Clone)]
pub struct Customer {
    pub id: Uuid,
    pub token: String,
}

impl Customer {
    pub fn new() -> Self {
        let id = Uuid::new_v4();
        Self {
            id,
            token: mint_token(id),
        }
    }
}

impl TestApp {
    pub fn request(&self, customer: &Customer, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(&customer.token)
    }

    pub async fn place(&self, customer: &Customer, body: &Value) -> Response {
        self.request(customer, Method::POST, "/api/orders")
            .json(body)
            .sent()
            .await
    }

    /// Places a valid order and returns its JSON (asserting 202).
    pub async fn place_ok(&self, customer: &Customer) -> Value {
        let response = self.place(customer, &valid_order()).await;
        assert_eq!(response.status(), 202);
        response.json().await.unwrap()
    }

    /// Places `body` and asserts it is refused: 422 `VALIDATION_FAILED`
    /// with exactly these `(field, code)` errors.
    pub async fn assert_invalid(&self, customer: &Customer, body: &Value, fields: &[(&str, &str)]) {
        let response = self.place(customer, body).await;
        assert_error(response, 422, "VALIDATION_FAILED", fields).await;
    }

    /// Places `body` and asserts it is refused: 422 `PRICE_CHANGED` naming
    /// the price at `field`.
    pub async fn assert_price_changed(&self, customer: &Customer, body: &Value, field: &str) {
        let response = self.place(customer, body).await;
        assert_error(response, 422, "PRICE_CHANGED", &[(field, "price_changed")]).await;
    }

    pub async fn get_order(&self, customer: &Customer, id: &str) -> Response {
        self.request(customer, Method::GET, &format!("/api/orders/{id}"))
            .sent()
            .await
    }

    pub async fn order_json(&self, customer: &Customer, id: &str) -> Value {
        let response = self.get_order(customer, id).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    pub async fn cancel(&self, customer: &Customer, id: &str, body: Option<Value>) -> Response {
        let request = self.request(customer, Method::POST, &format!("/api/orders/{id}/cancel"));
        match body {
            Some(body) => request.json(&body),
            None => request,
        }
        .sent()
        .await
    }

    /// Puts a product into the catalog (or changes it).
    pub async fn set_product(&self, sku: &str, price_cents: i64, active: bool) {
        self.db
            .client()
            .await
            .execute(
                "INSERT INTO products (sku, name, price_cents, active) VALUES ($1, $1, $2, $3) \
                 ON CONFLICT (sku) DO UPDATE SET price_cents = $2, active = $3, updated_at = now()",
                &[&sku, &price_cents, &active],
            )
            .await
            .expect("set a product");
    }

    /// The service's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.address))
            .text_body()
            .await
    }

    /// How many orders are stored, whoever placed them.
    pub async fn stored_orders(&self) -> i64 {
        self.db
            .client()
            .await
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn connection(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.db.url).await.unwrap()
    }
}

/// An order of the seeded catalog's `BOOK-1` (1250 cents) and `pen_blue.2`
/// (199 cents), sent with their prices as older clients do.
pub fn valid_order() -> Value {
    json!({
        "items": [
            {"sku": "BOOK-1", "quantity": 2, "unit_price_cents": 1250},
            {"sku": "pen_blue.2", "quantity": 3, "unit_price_cents": 199}
        ],
        "shipping_address": shipping_address()
    })
}

/// The total of [`valid_order`].
pub const VALID_TOTAL: i64 = 2 * 1250 + 3 * 199;

/// A `test_decoding` slot on the test database: every outbox INSERT since
/// its creation, as `(event_type, payload)`. Dropped with the guard.
pub struct OutboxTap {
    db: TestDatabase,
    slot: String,
}

impl OutboxTap {
    pub async fn start(db: &TestDatabase) -> Self {
        let slot = format!("order_test_{}", Uuid::new_v4().simple());
        db.client()
            .await
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
                &[&slot],
            )
            .await
            .expect("create a test_decoding slot");
        Self {
            db: db.clone(),
            slot,
        }
    }

    /// The outbox events committed since the last call.
    pub async fn events(&self) -> Vec<(String, Value)> {
        self.traced_events()
            .await
            .into_iter()
            .map(|(event_type, payload, _)| (event_type, payload))
            .collect()
    }

    /// As [`Self::events`], with each event's trace id.
    pub async fn traced_events(&self) -> Vec<(String, Value, String)> {
        let client = self.db.client().await;
        let rows = client
            .query(
                "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL) \
                 WHERE data LIKE 'table public.outbox: INSERT:%'",
                &[&self.slot],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|row| parse_outbox_insert(row.get::<_, &str>(0)))
            .collect()
    }

    pub async fn event_types(&self) -> Vec<String> {
        self.events().await.into_iter().map(|(t, _)| t).collect()
    }
}

impl Drop for OutboxTap {
    fn drop(&mut self) {
        let url = self.db.url.clone();
        let slot = self.slot.clone();
        // Drop cannot await; a slot left behind would pin WAL.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                        .await;
                }
            });
        })
        .join()
        .ok();
    }
}

/// `table public.outbox: INSERT: id[uuid]:'..' ... event_type[text]:'X' ...
/// payload[jsonb]:'{..}'` -> `(X, payload, trace_id)`.
fn parse_outbox_insert(line: &str) -> (String, Value, String) {
    let column = |name: &str| -> String {
        let marker = format!("{name}[");
        let start = line
            .find(&marker)
            .unwrap_or_else(|| panic!("{name} in {line}"));
        let rest = &line[start..];
        let quote = rest.find(":'").unwrap() + 2;
        let mut value = String::new();
        let mut chars = rest[quote..].chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    value.push('\'');
                    continue;
                }
                break;
            }
            value.push(c);
        }
        value
    };
    let payload = serde_json::from_str(&column("payload")).expect("payload is JSON");
    (column("event_type"), payload, column("trace_id"))
}

/// A new customer's freshly placed (PENDING) order: the customer and the
/// order id.
pub async fn placed_order(app: &TestApp) -> (Customer, Uuid) {
    let customer = Customer::new();
    let placed = app.place_ok(&customer).await;
    let order_id = placed["id"].as_str().unwrap().parse().unwrap();
    (customer, order_id)
}

/// What the payment service publishes when it charged `customer` for the
/// order, as a record's envelope.
pub fn payment_confirmed(order_id: Uuid, customer: &Customer) -> commerce_common::events::Envelope {
    test_support::envelope(&commerce_common::events::Event::PaymentConfirmed(
        commerce_common::events::PaymentConfirmed {
            payment_id: Uuid::new_v4(),
            order_id,
            customer_id: customer.id,
            amount_cents: VALID_TOTAL,
        },
    ))
}

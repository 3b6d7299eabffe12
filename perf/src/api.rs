//! The gateway's public API as the load sees it: every call is timed and
//! reported to the recorder under a request type (`place_order`, `get_order`, ...).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::cli::WaitUntil;
use crate::metrics::{Outcome, Recorder};

/// Final order states: the saga has nothing more to do.
pub const FINAL_STATUSES: &[&str] = &["DELIVERY_SCHEDULED", "REJECTED", "CANCELLED"];

pub fn is_final(status: &str) -> bool {
    FINAL_STATUSES.contains(&status)
}

/// An HTTP client for one gateway, reporting to one recorder.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: Arc<str>,
    recorder: Arc<Recorder>,
    step: Option<usize>,
    /// What orders are made of: set once by [`Api::load_catalog`], shared by
    /// every copy.
    products: Arc<OnceLock<Vec<CatalogItem>>>,
}

/// A registered user and their token.
#[derive(Debug, Clone)]
pub struct User {
    pub email: String,
    pub token: String,
}

/// What placing an order returned.
#[derive(Debug, Clone)]
pub struct PlacedOrder {
    pub id: String,
    pub total_cents: i64,
}

/// An order as `GET /api/orders/{id}` or the list show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    pub id: String,
    pub status: String,
    /// `updated_at - created_at`, when the API returns both.
    pub server_side: Option<Duration>,
}

impl OrderState {
    pub fn from_json(v: &Value) -> Option<Self> {
        let id = match v.get("id")? {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let status = v.get("status")?.as_str()?.to_string();
        let time = |key: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        };
        let server_side = match (time("created_at"), time("updated_at")) {
            (Some(created), Some(updated)) => (updated - created).to_std().ok(),
            _ => None,
        };
        Some(Self {
            id,
            status,
            server_side,
        })
    }
}

/// The orders of a list answer: a bare array, or an object holding one
/// (`items`, `orders` or `data`).
pub fn orders_of_list(v: &Value) -> Vec<OrderState> {
    let array = match v {
        Value::Array(items) => Some(items),
        Value::Object(map) => ["items", "orders", "data"]
            .iter()
            .find_map(|key| map.get(*key)?.as_array()),
        _ => None,
    };
    array
        .map(|items| items.iter().filter_map(OrderState::from_json).collect())
        .unwrap_or_default()
}

/// A product the load orders: its SKU and unit price (cents), as
/// `GET /api/products` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogItem {
    pub sku: String,
    pub price_cents: i64,
}

/// Dearest product the load orders when the catalog has cheaper ones: cheap
/// orders let the wallets last (each new account starts with 1000.00).
pub const MAX_LOAD_PRICE_CENTS: i64 = 99;

/// The products the load orders from the whole catalog: those of 1 to
/// [`MAX_LOAD_PRICE_CENTS`] cents, or, when there are none, the five
/// cheapest that are not free (a free line alone is a zero total, refused).
pub fn load_products(mut all: Vec<CatalogItem>) -> Vec<CatalogItem> {
    all.retain(|item| item.price_cents > 0);
    all.sort_by(|a, b| (a.price_cents, &a.sku).cmp(&(b.price_cents, &b.sku)));
    let cheap = all
        .iter()
        .filter(|item| item.price_cents <= MAX_LOAD_PRICE_CENTS)
        .count();
    all.truncate(if cheap > 0 { cheap } else { 5 });
    all
}

/// A cheap random order of `products` (1-3 lines of 1-2 units; the server
/// prices them, so no `unit_price_cents` is sent) and the total the server
/// will compute for it.
pub fn random_order_body(rng: &mut impl Rng, products: &[CatalogItem]) -> (Value, i64) {
    assert!(!products.is_empty(), "the catalog was loaded first");
    let lines = rng.gen_range(1..=3);
    let mut total = 0;
    let items: Vec<Value> = (0..lines)
        .map(|_| {
            let product = &products[rng.gen_range(0..products.len())];
            let quantity = rng.gen_range(1..=2);
            total += quantity * product.price_cents;
            json!({"sku": product.sku, "quantity": quantity})
        })
        .collect();
    let body = json!({
        "items": items,
        "shipping_address": {
            "name": "Load Test",
            "street": "1 Benchmark Road",
            "city": "Testville",
            "postal_code": "10115",
            "country": "DE",
        }
    });
    (body, total)
}

/// The catalog items of a `GET /api/products` page.
fn catalog_items(page: &Value) -> Vec<CatalogItem> {
    page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|item| item["active"].as_bool() != Some(false))
                .filter_map(|item| {
                    Some(CatalogItem {
                        sku: item["sku"].as_str()?.to_owned(),
                        price_cents: item["price_cents"].as_i64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn classify(error: &reqwest::Error) -> Outcome {
    if error.is_timeout() {
        Outcome::Timeout
    } else if error.is_connect() {
        Outcome::Connect
    } else if error.is_body() || error.is_decode() {
        Outcome::Body(short(error))
    } else {
        Outcome::Other(short(error))
    }
}

fn short(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(source) = std::error::Error::source(error) {
        text = format!("{text}: {source}");
    }
    text.chars().take(120).collect()
}

impl Api {
    pub fn new(base: &str, timeout: Duration, recorder: Arc<Recorder>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            // Below actix-web's keep-alive (5 s, which the services keep): a
            // connection the server is closing must not be picked for a
            // request (seen once as a `SendRequest` error at 500 orders/s).
            .pool_idle_timeout(Duration::from_secs(4))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').into(),
            recorder,
            step: None,
            products: Arc::default(),
        })
    }

    /// Reads the product catalog (`GET /api/products`, every page, no token)
    /// and keeps the products orders are made of ([`load_products`]);
    /// returns how many.
    pub async fn load_catalog(&self) -> anyhow::Result<usize> {
        let mut all = Vec::new();
        for page in 1.. {
            let path = format!("/api/products?page={page}&page_size=100");
            let v = self
                .call(Req {
                    required: &["items"],
                    ..Req::new("list_products", Method::GET, &path)
                })
                .await
                .map_err(|outcome| anyhow::anyhow!("GET {path} at {}: {outcome:?}", self.base))?;
            let items = catalog_items(&v);
            let last = items.is_empty()
                || v["total_pages"]
                    .as_i64()
                    .is_none_or(|pages| i64::from(page) >= pages);
            all.extend(items);
            if last || page >= 1_000 {
                break;
            }
        }
        let products = load_products(all);
        anyhow::ensure!(
            !products.is_empty(),
            "the catalog at {}/api/products has no product with a price to order",
            self.base
        );
        let count = products.len();
        let _ = self.products.set(products);
        Ok(count)
    }

    /// The products orders are made of (empty before [`Api::load_catalog`]).
    pub fn products(&self) -> &[CatalogItem] {
        self.products.get().map_or(&[], Vec::as_slice)
    }

    /// The same client, recording into another recorder (e.g. for set-up traffic).
    pub fn with_recorder(&self, recorder: Arc<Recorder>) -> Self {
        Self {
            recorder,
            ..self.clone()
        }
    }

    /// The same client, tagging what it records with a saturation step.
    pub fn with_step(&self, step: usize) -> Self {
        Self {
            step: Some(step),
            ..self.clone()
        }
    }

    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request and records it. Returns the JSON body of a 2xx answer.
    async fn call(&self, req: Req<'_>) -> Result<Value, Outcome> {
        self.call_applied(req).await.map(|(value, _)| value)
    }

    /// [`call`](Self::call), and whether the answer carried
    /// `Preference-Applied` (the server honoured `Prefer: wait`).
    async fn call_applied(&self, req: Req<'_>) -> Result<(Value, bool), Outcome> {
        let _in_flight = self.recorder.begin();
        let mut request = self
            .http
            .request(req.method, format!("{}{}", self.base, req.path));
        if let Some(token) = req.token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = req.idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(seconds) = req.prefer_wait {
            request = request.header("Prefer", format!("wait={seconds}"));
        }
        if let Some(body) = req.body {
            request = request.json(body);
        }
        let started = Instant::now();
        let result = async {
            let response = request.send().await.map_err(|e| classify(&e))?;
            let status = response.status();
            let applied = response.headers().contains_key("preference-applied");
            let bytes = response.bytes().await.map_err(|e| classify(&e))?;
            if !status.is_success() {
                let code = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("code")?.as_str().map(str::to_string));
                return Err(Outcome::Status(status.as_u16(), code));
            }
            if bytes.is_empty() || status == StatusCode::NO_CONTENT {
                return Ok((Value::Null, applied));
            }
            let v = serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| Outcome::Body(format!("not JSON: {e}")))?;
            match req.required.iter().find(|field| v.get(**field).is_none()) {
                Some(missing) => Err(Outcome::Body(format!("answer without `{missing}`"))),
                None => Ok((v, applied)),
            }
        }
        .await;
        let latency = started.elapsed();
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(outcome) => outcome.clone(),
        };
        self.recorder
            .record(req.kind, self.step, started, latency, &outcome);
        result
    }

    /// Records that a request was not sent because too many were in flight.
    pub fn record_skipped(&self, kind: &'static str) {
        self.recorder.record(
            kind,
            self.step,
            Instant::now(),
            Duration::ZERO,
            &Outcome::ClientBacklog,
        );
    }

    pub async fn register(&self, email: &str, password: &str, name: &str) -> Result<User, Outcome> {
        let body = json!({ "email": email, "password": password, "name": name });
        let v = self
            .call(Req {
                body: Some(&body),
                required: &["token"],
                ..Req::new("register", Method::POST, "/api/register")
            })
            .await?;
        Ok(User {
            email: email.to_string(),
            token: token_of(&v),
        })
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<User, Outcome> {
        let body = json!({ "email": email, "password": password });
        let v = self
            .call(Req {
                body: Some(&body),
                required: &["token"],
                ..Req::new("login", Method::POST, "/api/login")
            })
            .await?;
        Ok(User {
            email: email.to_string(),
            token: token_of(&v),
        })
    }

    pub async fn place_order(&self, user: &User, body: &Value) -> Result<PlacedOrder, Outcome> {
        let key = uuid::Uuid::new_v4().to_string();
        let v = self
            .call(Req {
                token: Some(&user.token),
                body: Some(body),
                idempotency_key: Some(&key),
                required: &["id"],
                ..Req::new("place_order", Method::POST, "/api/orders")
            })
            .await?;
        let id = match &v["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok(PlacedOrder {
            id,
            total_cents: v.get("total_cents").and_then(Value::as_i64).unwrap_or(0),
        })
    }

    pub async fn get_order(&self, user: &User, id: &str) -> Result<OrderState, Outcome> {
        let path = format!("/api/orders/{id}");
        let v = self
            .call(Req {
                token: Some(&user.token),
                required: &["id", "status"],
                ..Req::new("get_order", Method::GET, &path)
            })
            .await?;
        OrderState::from_json(&v).ok_or_else(|| Outcome::Body("order without id/status".into()))
    }

    /// `GET /api/orders/{id}?until=...` with `Prefer: wait=seconds`: the
    /// server holds the answer until the order changes or is settled, as
    /// `until` says (or the time is up). Recorded as `wait_order`, apart from
    /// plain reads. The flag tells whether the server honoured the wait
    /// (`Preference-Applied`).
    pub async fn wait_order(
        &self,
        user: &User,
        id: &str,
        seconds: u64,
        until: WaitUntil,
    ) -> Result<(OrderState, bool), Outcome> {
        let path = format!("/api/orders/{id}?until={}", until.as_str());
        let (v, applied) = self
            .call_applied(Req {
                token: Some(&user.token),
                required: &["id", "status"],
                prefer_wait: Some(seconds),
                ..Req::new("wait_order", Method::GET, &path)
            })
            .await?;
        let state = OrderState::from_json(&v)
            .ok_or_else(|| Outcome::Body("order without id/status".into()))?;
        Ok((state, applied))
    }

    /// Customer cancellation of a PAID or DELIVERY_SCHEDULED order (202; final once refunded).
    pub async fn cancel_order(&self, user: &User, id: &str) -> Result<Value, Outcome> {
        let path = format!("/api/orders/{id}/cancel");
        let body = json!({ "reason": "load test: frees the delivery window" });
        self.call(Req {
            token: Some(&user.token),
            body: Some(&body),
            ..Req::new("cancel_order", Method::POST, &path)
        })
        .await
    }

    pub async fn list_orders(
        &self,
        user: &User,
        page: u32,
        page_size: u32,
    ) -> Result<Vec<OrderState>, Outcome> {
        let path = format!("/api/orders?page={page}&page_size={page_size}");
        let v = self
            .call(Req {
                token: Some(&user.token),
                ..Req::new("list_orders", Method::GET, &path)
            })
            .await?;
        Ok(orders_of_list(&v))
    }

    pub async fn wallet(&self, user: &User) -> Result<Value, Outcome> {
        self.call(Req {
            token: Some(&user.token),
            ..Req::new("get_wallet", Method::GET, "/api/wallet")
        })
        .await
    }

    pub async fn top_up(&self, user: &User, amount_cents: i64) -> Result<Value, Outcome> {
        let body = json!({ "amount_cents": amount_cents });
        self.call(Req {
            token: Some(&user.token),
            body: Some(&body),
            ..Req::new("top_up", Method::POST, "/api/wallet/top-up")
        })
        .await
    }
}

/// One request to send: what `Api::call` needs besides the client.
struct Req<'a> {
    kind: &'static str,
    method: Method,
    path: &'a str,
    token: Option<&'a str>,
    body: Option<&'a Value>,
    idempotency_key: Option<&'a str>,
    /// `Prefer: wait=N` (seconds).
    prefer_wait: Option<u64>,
    /// Fields a 2xx JSON answer must have; a missing one is a `body` error.
    required: &'a [&'a str],
}

impl<'a> Req<'a> {
    fn new(kind: &'static str, method: Method, path: &'a str) -> Self {
        Self {
            kind,
            method,
            path,
            token: None,
            body: None,
            idempotency_key: None,
            prefer_wait: None,
            required: &[],
        }
    }
}

fn token_of(v: &Value) -> String {
    v["token"].as_str().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn order_state_from_json() {
        let v = json!({
            "id": "0191-abc", "status": "DELIVERY_SCHEDULED", "reason": null,
            "created_at": "2026-11-25T13:00:00.000Z", "updated_at": "2026-11-25T13:00:00.150Z"
        });
        let state = OrderState::from_json(&v).unwrap();
        assert_eq!(state.status, "DELIVERY_SCHEDULED");
        assert_eq!(state.server_side, Some(Duration::from_millis(150)));
        assert!(OrderState::from_json(&json!({"id": "x"})).is_none());
    }

    #[test]
    fn lists_in_several_shapes() {
        let one = json!({"id": "a", "status": "PENDING"});
        assert_eq!(orders_of_list(&json!([one])).len(), 1);
        assert_eq!(
            orders_of_list(&json!({"items": [one, one], "page": 1})).len(),
            2
        );
        assert_eq!(orders_of_list(&json!({"orders": [one]})).len(), 1);
        assert!(orders_of_list(&json!({"nothing": 1})).is_empty());
    }

    fn item(sku: &str, price_cents: i64) -> CatalogItem {
        CatalogItem {
            sku: sku.into(),
            price_cents,
        }
    }

    #[test]
    fn random_orders_are_cheap_and_valid() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let products = [item("A", 49), item("B", 99), item("C", 1)];
        for _ in 0..100 {
            let (body, total) = random_order_body(&mut rng, &products);
            assert!((1..=3 * 2 * 99).contains(&total), "{total}");
            let items = body["items"].as_array().unwrap();
            let priced: i64 = items
                .iter()
                .map(|i| {
                    let sku = i["sku"].as_str().unwrap();
                    let price = products.iter().find(|p| p.sku == sku).unwrap().price_cents;
                    i["quantity"].as_i64().unwrap() * price
                })
                .sum();
            assert_eq!(priced, total);
            assert!(items.iter().all(|i| i.get("unit_price_cents").is_none()));
            assert!(body["shipping_address"]["country"].is_string());
        }
    }

    #[test]
    fn the_load_orders_the_cheap_products_of_the_catalog() {
        let chosen = load_products(vec![
            item("BOOK-1", 1250),
            item("PEN", 35),
            item("FREE", 0),
            item("CAP", 99),
        ]);
        assert_eq!(chosen, [item("PEN", 35), item("CAP", 99)]);
        let dear: Vec<CatalogItem> = (1..=7).map(|n| item(&format!("D{n}"), 1000 * n)).collect();
        let chosen = load_products(dear);
        assert_eq!(chosen.len(), 5);
        assert_eq!(chosen[0], item("D1", 1000));
        assert!(load_products(vec![item("FREE", 0)]).is_empty());
        let page = json!({"items": [
            {"sku": "A", "price_cents": 5, "active": true},
            {"sku": "B", "price_cents": 7, "active": false},
            {"sku": "C"}
        ]});
        assert_eq!(catalog_items(&page), [item("A", 5)]);
    }

    #[test]
    fn final_statuses() {
        assert!(is_final("DELIVERY_SCHEDULED"));
        assert!(is_final("CANCELLED"));
        assert!(!is_final("PAID"));
        assert!(!is_final("PENDING"));
    }
}

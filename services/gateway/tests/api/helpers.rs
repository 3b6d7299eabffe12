//! `spawn_app()`: the real gateway on port 0 against a fresh database, and a
//! fake upstream service (an actix server on port 0) that echoes what it got.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use commerce_common::config::{DatabaseConfig, Secret};
use gateway::{config::Config, startup::Application};
use paperclip::actix::{OpenApiExt, api_v2_operation, web as pweb};
use serde_json::{Value, json};
use test_support::{TestDatabase, fresh_database, jwt_keys};

pub struct TestApp {
    pub address: String,
    /// `http://127.0.0.1:<metrics.port>`.
    pub metrics_address: String,
    pub db: TestDatabase,
    pub http: reqwest::Client,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn register(&self, email: &str, password: &str, name: &str) -> reqwest::Response {
        let body = json!({"email": email, "password": password, "name": name});
        self.post_json("/api/register", None, &body).await
    }

    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        let body = json!({"email": email, "password": password});
        self.post_json("/api/login", None, &body).await
    }

    /// A login as if from `client` behind a proxy (`X-Forwarded-For`).
    pub async fn login_from(&self, client: &str, email: &str, password: &str) -> reqwest::Response {
        let body = json!({"email": email, "password": password});
        self.post_json("/api/login", Some(client), &body).await
    }

    /// A registration as if from `client` behind a proxy (`X-Forwarded-For`).
    pub async fn register_from(&self, client: &str, email: &str) -> reqwest::Response {
        let body = json!({"email": email, "password": "correct horse battery", "name": "N"});
        self.post_json("/api/register", Some(client), &body).await
    }

    /// POSTs `body` to `path`, as if from `forwarded_for` behind a proxy
    /// when given.
    async fn post_json(
        &self,
        path: &str,
        forwarded_for: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(client) = forwarded_for {
            request = request.header("X-Forwarded-For", client);
        }
        request.send().await.expect("POST request")
    }

    pub async fn me(&self, authorization: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url("/api/me"));
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        request.send().await.expect("me request")
    }
}

/// A config for tests: fresh database, the test key pair, cheap bcrypt,
/// upstreams on ports where nothing listens.
pub fn test_config(db: &TestDatabase) -> Config {
    let mut config = Config::default();
    config.http.port = 0;
    config.database = DatabaseConfig::with_url(&db.url);
    config.database.max_connections = 4;
    config.auth.private_key_pem = Some(Secret::new(jwt_keys().private_pem.clone()));
    config.auth.bcrypt_cost = 4;
    let nowhere = format!("http://127.0.0.1:{}", test_support::free_port());
    config.upstreams.order = nowhere.clone();
    config.upstreams.payment = nowhere.clone();
    config.upstreams.delivery = nowhere;
    config.proxy.probe_timeout = Duration::from_secs(1);
    config.metrics.port = Some(0);
    // Tests make many requests from one address; the tests of the limits
    // set them low again.
    config.rate_limit.login_per_address.requests = 10_000;
    config.rate_limit.register_per_address.requests = 10_000;
    config.rate_limit.global.requests = 10_000;
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Config)) -> TestApp {
    if test_support::test_log_enabled() {
        commerce_common::telemetry::init("gateway-test");
    }
    let db = fresh_database("gateway").await;
    let mut config = test_config(&db);
    customize(&mut config);
    let application = Application::build(config).await.expect("gateway builds");
    let address = format!("http://127.0.0.1:{}", application.port());
    let metrics_address = format!(
        "http://127.0.0.1:{}",
        application.metrics_port().expect("metrics port")
    );
    tokio::spawn(application.run_until_stopped());
    TestApp {
        address,
        metrics_address,
        db,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

/// A stand-in for the services: echoes every request under `/api/` as JSON
/// `{method, path, query, headers, body}`; `.../slow` answers after 3 s;
/// `.../over-quota` answers 429 as the order service does over a quota;
/// `/ready` answers 200; `/openapi.json` is a paperclip (Swagger 2.0)
/// document of the services' public routes, like the real services serve.
pub struct FakeUpstream {
    pub base: String,
    pub hits: Arc<AtomicUsize>,
}

impl FakeUpstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The app with every upstream pointing at one fake upstream (kept alive by
/// the caller), after `customize`.
pub async fn app_with_upstream(
    customize: impl FnOnce(&mut gateway::config::Config),
) -> (TestApp, FakeUpstream) {
    let upstream = spawn_upstream().await;
    let base = upstream.base.clone();
    let app = spawn_app_with(|c| {
        c.upstreams.order = base.clone();
        c.upstreams.payment = base.clone();
        c.upstreams.delivery = base;
        customize(c);
    })
    .await;
    (app, upstream)
}

pub async fn spawn_upstream() -> FakeUpstream {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(counter.clone()))
            .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
            .route(
                "/ready",
                web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }),
            )
            .wrap_api()
            .service(
                pweb::resource("/api/orders")
                    .route(pweb::post().to(place_order))
                    .route(pweb::get().to(list_orders)),
            )
            .service(pweb::resource("/api/orders/{id}").route(pweb::get().to(get_order)))
            .service(pweb::resource("/api/orders/{id}/cancel").route(pweb::post().to(cancel_order)))
            .service(pweb::resource("/api/products").route(pweb::get().to(list_products)))
            .service(pweb::resource("/api/products/{sku}").route(pweb::get().to(get_product)))
            .service(pweb::resource("/api/wallet").route(pweb::get().to(get_wallet)))
            .service(pweb::resource("/api/wallet/top-up").route(pweb::post().to(top_up)))
            .service(pweb::resource("/api/payments").route(pweb::get().to(list_payments)))
            .service(pweb::resource("/api/payments/{order_id}").route(pweb::get().to(get_payment)))
            .service(pweb::resource("/api/deliveries").route(pweb::get().to(list_deliveries)))
            .service(
                pweb::resource("/api/deliveries/{order_id}").route(pweb::get().to(get_delivery)),
            )
            .with_json_spec_at("/openapi.json")
            .build()
            .default_service(web::to(echo))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("bind fake upstream");
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    FakeUpstream {
        base: format!("http://127.0.0.1:{port}"),
        hits,
    }
}

async fn echo(
    req: HttpRequest,
    body: web::Bytes,
    hits: web::Data<Arc<AtomicUsize>>,
) -> HttpResponse {
    hits.fetch_add(1, Ordering::SeqCst);
    if req.path().ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if req.path().ends_with("/over-quota") {
        return HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", "42"))
            .json(json!({"code": "ORDER_RATE_LIMITED", "message": "retry later"}));
    }
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                json!(v.to_str().unwrap_or("<binary>")),
            )
        })
        .collect();
    let mut response = HttpResponse::Ok();
    // Like the order service's long-poll: a preference is answered as applied.
    if let Some(prefer) = req.headers().get("prefer") {
        response.insert_header(("Preference-Applied", prefer.clone()));
    }
    response
        .insert_header(("Proxy-Authenticate", "Basic realm=upstream"))
        .insert_header(("Keep-Alive", "timeout=5"))
        .insert_header(("Trailer", "x-checksum"))
        .insert_header(("X-Upstream", "echo"))
        .json(json!({
            "method": req.method().as_str(),
            "path": req.path(),
            "query": req.query_string(),
            "headers": headers,
            "body_len": body.len(),
            "body": String::from_utf8_lossy(&body),
        }))
}

// The services' operations, as documentation only: the fake routes them all
// to `echo` through the paperclip wrappers below.
macro_rules! documented {
    ($($name:ident),*) => {$(
        #[api_v2_operation]
        async fn $name(req: HttpRequest, body: web::Bytes, hits: web::Data<Arc<AtomicUsize>>) -> HttpResponse {
            echo(req, body, hits).await
        }
    )*};
}

documented!(
    place_order,
    list_orders,
    get_order,
    cancel_order,
    list_products,
    get_product,
    get_wallet,
    top_up,
    list_payments,
    get_payment,
    list_deliveries,
    get_delivery
);

//! The orders HTTP API against the real app and a fresh database.

use crate::helpers::{Customer, OutboxTap, VALID_TOTAL, spawn_app, spawn_app_with, valid_order};
use std::time::Duration;

use reqwest::{Method, header};
use serde_json::{Value, json};
use test_support::{SendExt, assert_error, claims_for, mint_token_with, wait_for_value};
use uuid::Uuid;

/// The HTTP workers read the database through their own connections: a
/// request is answered while the service's main runtime cannot run at all
/// (through the main pool each statement of a request waited for that
/// runtime's thread, woken twice per statement).
#[tokio::test]
async fn requests_are_answered_while_the_main_runtime_is_busy() {
    use std::io::{Read, Write};

    let app = spawn_app().await;
    let up = app.http.get(format!("{}/ready", app.address)).send().await;
    assert_eq!(up.unwrap().status(), 200, "the service is up");
    let address = app.address.trim_start_matches("http://");
    // Blocking calls on this test's runtime, which is the service's main
    // one (its tasks, its main pool's connections): none of it runs until
    // the answer is read.
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /api/products HTTP/1.1\r\nHost: order\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let read = stream.read_to_string(&mut answer);
    assert!(
        read.is_ok() && answer.starts_with("HTTP/1.1 200"),
        "no answer while the main runtime was busy: {read:?} {answer}"
    );
    assert!(answer.contains("\"items\""), "{answer}");
}

#[tokio::test]
async fn operational_endpoints_answer() {
    let app = spawn_app().await;
    for path in ["/health", "/ready"] {
        let response = app.http.get(format!("{}{path}", app.address)).sent().await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let customer = Customer::new();
    app.place_ok(&customer).await;
    let metrics = app.metrics().await;
    assert!(metrics.contains("orders_placed_total 1"), "{metrics}");
    assert!(
        metrics.contains(r#"orders{status="PENDING"} 1"#),
        "{metrics}"
    );

    let spec: Value = app
        .http
        .get(format!("{}/openapi.json", app.address))
        .json_body()
        .await;
    for path in ["/api/orders", "/api/orders/{id}", "/api/orders/{id}/cancel"] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the spec: {}",
            spec["paths"]
        );
    }
    let post = &spec["paths"]["/api/orders"]["post"];
    assert!(post["responses"]["202"].is_object());
    assert!(post["responses"]["422"].is_object());
    assert!(
        post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")
    );
    let get = &spec["paths"]["/api/orders/{id}"]["get"];
    assert!(
        get["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Prefer" && p["in"] == "header"),
        "{get}"
    );
    assert!(
        get["responses"]["200"]["headers"]["Preference-Applied"].is_object(),
        "{get}"
    );
    let until = get["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "until" && p["in"] == "query")
        .unwrap_or_else(|| panic!("no until query parameter: {get}"));
    assert_eq!(until["enum"], json!(["change", "settled"]), "{until}");
    assert!(!spec["securityDefinitions"].as_object().unwrap().is_empty());
    assert!(spec["definitions"]["Order"].is_object());
    let required = &spec["definitions"]["PlaceOrderRequest"]["required"];
    assert_eq!(required, &json!(["items", "shipping_address"]), "{spec}");

    let unknown = app.http.get(format!("{}/nope", app.address)).sent().await;
    assert_error(unknown, 404, "NOT_FOUND", &[]).await;
}

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthorized() {
    let app = spawn_app().await;
    let url = format!("{}/api/orders", app.address);
    let no_token = app.http.get(&url).sent().await;
    assert_error(no_token, 401, "UNAUTHORIZED", &[]).await;

    let garbage = app.http.get(&url).bearer_auth("not.a.token").sent().await;
    assert_error(garbage, 401, "UNAUTHORIZED", &[]).await;

    let expired = mint_token_with(&claims_for(Uuid::new_v4(), chrono::Duration::hours(-2)));
    let expired = app.http.get(&url).bearer_auth(expired).sent().await;
    assert_error(expired, 401, "UNAUTHORIZED", &[]).await;

    let mut foreign = claims_for(Uuid::new_v4(), chrono::Duration::hours(1));
    foreign.aud = "someone-else".into();
    let foreign = app
        .http
        .post(&url)
        .bearer_auth(mint_token_with(&foreign))
        .json(&valid_order())
        .sent()
        .await;
    assert_error(foreign, 401, "UNAUTHORIZED", &[]).await;
}

#[tokio::test]
async fn placing_an_order_answers_202_with_a_pending_order_and_the_server_total() {
    let app = spawn_app().await;
    let tap = OutboxTap::start(&app.db).await;
    let customer = Customer::new();
    let mut body = valid_order();
    // A client-sent total is ignored: the server computes it.
    body["total_cents"] = json!(1);
    let response = app
        .request(&customer, Method::POST, "/api/orders")
        .header("X-Request-Id", "req-place-1")
        .json(&body)
        .sent()
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], "req-place-1");
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["total_cents"], VALID_TOTAL);
    assert_eq!(order["reason"], Value::Null);
    assert_eq!(order["payment"], Value::Null);
    assert_eq!(order["delivery"], Value::Null);
    assert_eq!(order["items"][0]["sku"], "BOOK-1");
    assert_eq!(order["items"][0]["subtotal_cents"], 2500);
    assert_eq!(order["items"][1]["quantity"], 3);
    assert_eq!(order["shipping_address"]["city"], "London");

    let fetched = app
        .order_json(&customer, order["id"].as_str().unwrap())
        .await;
    assert_eq!(fetched, order);

    let events = tap.traced_events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (event_type, payload, trace_id) = &events[0];
    assert_eq!(event_type, "OrderCreated");
    assert_eq!(
        trace_id, "req-place-1",
        "the request id is the event's trace id"
    );
    assert_eq!(payload["order_id"], order["id"]);
    assert_eq!(payload["customer_id"], customer.id.to_string());
    assert_eq!(payload["total_cents"], VALID_TOTAL);
    assert_eq!(payload["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_order_without_prices_gets_the_catalogs_price_and_total() {
    let app = spawn_app().await;
    let tap = OutboxTap::start(&app.db).await;
    let customer = Customer::new();
    let mut body = valid_order();
    for item in body["items"].as_array_mut().unwrap() {
        item.as_object_mut().unwrap().remove("unit_price_cents");
    }
    let response = app.place(&customer, &body).await;
    assert_eq!(response.status(), 202);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["items"][0]["unit_price_cents"], 1250);
    assert_eq!(order["items"][0]["subtotal_cents"], 2500);
    assert_eq!(order["items"][1]["unit_price_cents"], 199);
    assert_eq!(order["total_cents"], VALID_TOTAL);
    let events = tap.events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["total_cents"], VALID_TOTAL);
    assert_eq!(events[0].1["items"][0]["unit_price_cents"], 1250);
    assert_eq!(events[0].1["items"][1]["unit_price_cents"], 199);

    // A later price change leaves the placed order's lines alone and
    // prices the next order anew.
    app.set_product("BOOK-1", 1500, true).await;
    let id = order["id"].as_str().unwrap();
    assert_eq!(app.order_json(&customer, id).await, order);
    let response = app.place(&customer, &body).await;
    assert_eq!(response.status(), 202);
    let next: Value = response.json().await.unwrap();
    assert_eq!(next["items"][0]["unit_price_cents"], 1500);
    assert_eq!(next["total_cents"], 2 * 1500 + 3 * 199);
}

#[tokio::test]
async fn a_client_price_other_than_the_catalogs_is_422_price_changed_and_nothing_is_stored() {
    let app = spawn_app().await;
    let tap = OutboxTap::start(&app.db).await;
    let customer = Customer::new();
    for price in [0, 1249, 1251] {
        let mut body = valid_order();
        body["items"][0]["unit_price_cents"] = json!(price);
        let response = app.place(&customer, &body).await;
        assert_eq!(response.status(), 422);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], "PRICE_CHANGED", "{error}");
        assert_eq!(
            error["fields"],
            json!([{
                "field": "items[0].unit_price_cents",
                "code": "price_changed",
                "message": format!(
                    "the unit price is 1250 cents, not {price}; send 1250 or leave \
                     unit_price_cents out"
                ),
            }]),
        );
    }
    // The catalog's price changed under an old client's feet.
    app.set_product("pen_blue.2", 249, true).await;
    app.assert_price_changed(&customer, &valid_order(), "items[1].unit_price_cents")
        .await;
    assert_eq!(app.stored_orders().await, 0);
    assert!(tap.events().await.is_empty());
}

#[tokio::test]
async fn unknown_and_inactive_skus_are_422_naming_the_line() {
    let app = spawn_app().await;
    let tap = OutboxTap::start(&app.db).await;
    let customer = Customer::new();
    let mut body = valid_order();
    body["items"][1]["sku"] = json!("NO-SUCH-THING");
    app.assert_invalid(&customer, &body, &[("items[1].sku", "unknown_product")])
        .await;

    app.set_product("OLD-1", 500, false).await;
    let mut body = valid_order();
    body["items"][0] = json!({"sku": "OLD-1", "quantity": 1});
    app.assert_invalid(&customer, &body, &[("items[0].sku", "inactive_product")])
        .await;
    // Deactivating a product stops new orders of it, with or without a price.
    app.set_product("BOOK-1", 1250, false).await;
    app.assert_invalid(
        &customer,
        &valid_order(),
        &[("items[0].sku", "inactive_product")],
    )
    .await;
    assert_eq!(app.stored_orders().await, 0);
    assert!(tap.events().await.is_empty());
}

#[tokio::test]
async fn a_catalog_change_is_the_next_placements_whatever_was_read_before() {
    let app = spawn_app().await;
    let customer = Customer::new();
    assert_eq!(app.place(&customer, &valid_order()).await.status(), 202);
    // Cheaper since: a client sending the new price is served at once.
    app.set_product("BOOK-1", 1200, true).await;
    let mut body = valid_order();
    body["items"][0]["unit_price_cents"] = json!(1200);
    let response = app.place(&customer, &body).await;
    assert_eq!(response.status(), 202);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["total_cents"], 2 * 1200 + 3 * 199);
    // The old price is refused.
    app.assert_price_changed(&customer, &valid_order(), "items[0].unit_price_cents")
        .await;
    // Off the catalog, then back on it.
    app.set_product("BOOK-1", 1200, false).await;
    app.assert_invalid(&customer, &body, &[("items[0].sku", "inactive_product")])
        .await;
    app.set_product("BOOK-1", 1200, true).await;
    assert_eq!(app.place(&customer, &body).await.status(), 202);
    assert_eq!(app.stored_orders().await, 3);
}

#[tokio::test]
async fn placement_reads_the_catalog_once_for_products_it_has_read() {
    use order_service::catalog::{Catalog, Fresh};

    let app = spawn_app().await;
    let (mut conn, statements) = app.db.counted_connection().await;
    let sent = || statements.sent();
    let catalog = Catalog::default();
    let skus = ["BOOK-1", "pen_blue.2"];
    let prices = |(mut read, source): (Vec<(String, i64, bool)>, Fresh)| {
        read.sort();
        (read, source)
    };
    let expected = vec![
        ("BOOK-1".to_owned(), 1250, true),
        ("pen_blue.2".to_owned(), 199, true),
    ];

    let first = catalog
        .prices(&mut conn, &skus, Fresh::Memory)
        .await
        .unwrap();
    assert_eq!(prices(first), (expected.clone(), Fresh::Table));
    assert_eq!(sent(), 1);
    let again = catalog
        .prices(&mut conn, &skus[..1], Fresh::Memory)
        .await
        .unwrap();
    assert_eq!(prices(again), (expected[..1].to_vec(), Fresh::Memory));
    assert_eq!(sent(), 1, "known products are not read again");
    // An unknown SKU is read, every time: memory keeps what exists only.
    for _ in 0..2 {
        let with_unknown = catalog
            .prices(&mut conn, &["BOOK-1", "NO-SUCH-THING"], Fresh::Memory)
            .await
            .unwrap();
        assert_eq!(prices(with_unknown), (expected[..1].to_vec(), Fresh::Table));
    }
    assert_eq!(sent(), 3);
    // Asked for the table (a placement that found the catalog changed).
    app.set_product("BOOK-1", 1300, true).await;
    let fresh = catalog
        .prices(&mut conn, &skus[..1], Fresh::Table)
        .await
        .unwrap();
    assert_eq!(fresh.0, vec![("BOOK-1".to_owned(), 1300, true)]);
    assert_eq!(sent(), 4);
    let remembered = catalog
        .prices(&mut conn, &skus[..1], Fresh::Memory)
        .await
        .unwrap();
    assert_eq!(
        remembered,
        (fresh.0, Fresh::Memory),
        "memory keeps the table's answer"
    );
    assert_eq!(sent(), 4);
}

#[tokio::test]
async fn a_retry_with_its_idempotency_key_gets_its_order_after_the_catalog_changed() {
    let app = spawn_app().await;
    let customer = Customer::new();
    let place = || {
        app.request(&customer, Method::POST, "/api/orders")
            .header("Idempotency-Key", "catalog-1")
            .json(&valid_order())
            .send()
    };
    let first = place().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    app.set_product("BOOK-1", 1300, true).await;
    let again = place().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["total_cents"], VALID_TOTAL);
    // The same key with another body is still refused.
    let mut other = valid_order();
    other["items"][0]["quantity"] = json!(1);
    other["items"][0]["unit_price_cents"] = json!(1300);
    let reused = app
        .request(&customer, Method::POST, "/api/orders")
        .header("Idempotency-Key", "catalog-1")
        .json(&other)
        .sent()
        .await;
    assert_error(reused, 422, "IDEMPOTENCY_KEY_REUSED", &[]).await;
    assert_eq!(app.stored_orders().await, 1);
}

#[tokio::test]
async fn the_catalog_is_public_paged_and_one_product_is_404_when_unknown() {
    let app = spawn_app().await;
    let get = |path: String| app.http.get(format!("{}{path}", app.address)).send();
    let all: Value = get("/api/products?page_size=100".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seeded = all["total_items"].as_i64().unwrap();
    assert!(seeded >= 2, "{all}");
    let book = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["sku"] == "BOOK-1")
        .unwrap_or_else(|| panic!("BOOK-1 in {all}"));
    assert_eq!(book["price_cents"], 1250);
    assert_eq!(book["active"], true);
    assert!(book["name"].is_string());

    // Pages of 2, by SKU, cover every active product once.
    let mut skus = Vec::new();
    let pages = (seeded + 1) / 2;
    for page in 1..=pages + 1 {
        let response = get(format!("/api/products?page={page}&page_size=2"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["page"], page);
        assert_eq!(body["page_size"], 2);
        assert_eq!(body["total_items"], seeded);
        assert_eq!(body["total_pages"], pages);
        let items = body["items"].as_array().unwrap();
        assert_eq!(
            items.len(),
            if page > pages {
                0
            } else {
                2.min(seeded as usize - skus.len())
            }
        );
        skus.extend(items.iter().map(|p| p["sku"].as_str().unwrap().to_owned()));
    }
    let mut sorted = skus.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(skus, sorted);
    assert_eq!(skus.len() as i64, seeded);

    // Inactive products are not listed, but can be looked at.
    app.set_product("OLD-1", 500, false).await;
    let listed: Value = get("/api/products?page_size=100".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total_items"], seeded);
    let old: Value = get("/api/products/OLD-1".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(old["active"], false);
    assert_eq!(old["price_cents"], 500);
    let one = get("/api/products/BOOK-1".into()).await.unwrap();
    assert_eq!(one.status(), 200);
    let one: Value = one.json().await.unwrap();
    assert_eq!(one["sku"], "BOOK-1");
    assert_eq!(one["price_cents"], 1250);

    for path in [
        "/api/products/NO-SUCH-THING".to_owned(),
        "/api/products/a%00b".to_owned(),
        format!("/api/products/{}", "x".repeat(5000)),
    ] {
        assert_error(get(path).await.unwrap(), 404, "NOT_FOUND", &[]).await;
    }
    for query in ["page=0", "page_size=101", "page=abc"] {
        let response = get(format!("/api/products?{query}")).await.unwrap();
        assert!(
            response.status() == 400 || response.status() == 422,
            "{query}"
        );
    }

    let spec: Value = get("/openapi.json".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in ["/api/products", "/api/products/{sku}"] {
        let get = &spec["paths"][path]["get"];
        assert!(get.is_object(), "{path} missing from the spec");
        assert!(get.get("security").is_none(), "{path} is public: {get}");
    }
    assert!(spec["definitions"]["Product"].is_object());
    // Swagger's examples order from the catalog without prices.
    let example = &spec["definitions"]["PlaceOrderRequest"]["example"];
    assert_eq!(
        example["items"][0],
        json!({"sku": "BOOK-1", "quantity": 2}),
        "{example}"
    );
    assert_eq!(
        spec["definitions"]["Product"]["example"]["price_cents"],
        1250
    );
}

#[tokio::test]
async fn every_validation_rule_reports_its_field() {
    let app = spawn_app().await;
    let customer = Customer::new();
    app.set_product("A", 1_000_000_000, true).await;
    app.set_product("B", 1_000_000_000, true).await;
    app.set_product("FREE-1", 0, true).await;
    app.set_product("FREE-2", 0, true).await;
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut body = valid_order();
        edit(&mut body);
        body
    };
    let cases: Vec<(Value, Vec<(&str, &str)>)> = vec![
        (with(&|b| b["items"] = json!([])), vec![("items", "empty")]),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("items");
            }),
            vec![("items", "required")],
        ),
        (
            with(&|b| {
                b["items"] = json!(vec![
                    json!({"sku": "A", "quantity": 1, "unit_price_cents": 1});
                    101
                ])
            }),
            vec![("items", "too_many")],
        ),
        (
            with(&|b| b["items"][0]["quantity"] = json!(0)),
            vec![("items[0].quantity", "must_be_positive")],
        ),
        (
            with(&|b| b["items"][1]["quantity"] = json!(-5)),
            vec![("items[1].quantity", "must_be_positive")],
        ),
        (
            with(&|b| b["items"][0]["quantity"] = json!(10_001)),
            vec![("items[0].quantity", "too_large")],
        ),
        (
            with(&|b| b["items"][0]["unit_price_cents"] = json!(-1)),
            vec![("items[0].unit_price_cents", "must_not_be_negative")],
        ),
        (
            with(&|b| b["items"][0]["unit_price_cents"] = json!(1_000_000_001_i64)),
            vec![("items[0].unit_price_cents", "too_large")],
        ),
        (
            with(&|b| b["items"][0]["sku"] = json!("  ")),
            vec![("items[0].sku", "required")],
        ),
        (
            with(&|b| b["items"][0]["sku"] = json!("x".repeat(65))),
            vec![("items[0].sku", "too_long")],
        ),
        (
            with(&|b| b["items"][0]["sku"] = json!("no spaces")),
            vec![("items[0].sku", "invalid_characters")],
        ),
        (
            with(&|b| b["items"][1] = json!({})),
            vec![
                ("items[1].sku", "required"),
                ("items[1].quantity", "required"),
            ],
        ),
        (
            with(&|b| {
                b["items"] = json!([
                    {"sku": "A", "quantity": 10_000, "unit_price_cents": 1_000_000_000},
                    {"sku": "B", "quantity": 10_000}
                ])
            }),
            vec![("items", "total_too_large")],
        ),
        (
            with(&|b| {
                b["items"] = json!([
                    {"sku": "FREE-1", "quantity": 3},
                    {"sku": "FREE-2", "quantity": 1, "unit_price_cents": 0}
                ])
            }),
            vec![("items", "zero_total")],
        ),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("shipping_address");
            }),
            vec![("shipping_address", "required")],
        ),
        (
            with(&|b| {
                b["shipping_address"] =
                    json!({"name": "", "street": " ", "country": "GB", "postal_code": "1"})
            }),
            vec![
                ("shipping_address.name", "required"),
                ("shipping_address.street", "required"),
                ("shipping_address.city", "required"),
            ],
        ),
        (
            with(&|b| b["shipping_address"]["postal_code"] = json!("1".repeat(17))),
            vec![("shipping_address.postal_code", "too_long")],
        ),
        (
            with(&|b| b["shipping_address"]["name"] = json!("x".repeat(201))),
            vec![("shipping_address.name", "too_long")],
        ),
        (
            with(&|b| b["shipping_address"]["city"] = json!("Lon\ndon")),
            vec![("shipping_address.city", "invalid_characters")],
        ),
        (
            with(&|b| {
                b["items"][0]["quantity"] = json!(0);
                b["shipping_address"]["country"] = json!(null);
            }),
            vec![
                ("items[0].quantity", "must_be_positive"),
                ("shipping_address.country", "required"),
            ],
        ),
    ];
    for (body, fields) in cases {
        app.assert_invalid(&customer, &body, &fields).await;
    }
    let list: Value = app
        .request(&customer, Method::GET, "/api/orders")
        .json_body()
        .await;
    assert_eq!(list["total_items"], 0, "no invalid order was stored");
}

#[tokio::test]
async fn malformed_bodies_are_json_4xx_never_500() {
    let app = spawn_app().await;
    let customer = Customer::new();
    let post = |body: &'static str| {
        app.request(&customer, Method::POST, "/api/orders")
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
    };
    assert_error(post("{not json").sent().await, 400, "MALFORMED_JSON", &[]).await;
    assert_error(post("").sent().await, 400, "MALFORMED_JSON", &[]).await;
    assert_error(
        post(r#"{"items": "many"}"#).sent().await,
        422,
        "INVALID_BODY",
        &[],
    )
    .await;
    assert_error(post("[1, 2]").sent().await, 422, "INVALID_BODY", &[]).await;
    let huge = r#"{"items":[{"sku":"A","quantity":1e400,"unit_price_cents":1}]}"#;
    assert!(post(huge).sent().await.status().is_client_error());
    let too_big =
        r#"{"items":[{"sku":"A","quantity":99999999999999999999999,"unit_price_cents":1}]}"#;
    assert_error(post(too_big).sent().await, 422, "INVALID_BODY", &[]).await;
    let fraction = r#"{"items":[{"sku":"A","quantity":1.5,"unit_price_cents":1}]}"#;
    assert_error(post(fraction).sent().await, 422, "INVALID_BODY", &[]).await;

    let text = app
        .request(&customer, Method::POST, "/api/orders")
        .header(header::CONTENT_TYPE, "text/plain")
        .body("hello")
        .sent()
        .await;
    assert_error(text, 415, "UNSUPPORTED_MEDIA_TYPE", &[]).await;

    let mut big = valid_order();
    big["items"][0]["sku"] = json!("x".repeat(100_000));
    assert_error(
        app.place(&customer, &big).await,
        413,
        "PAYLOAD_TOO_LARGE",
        &[],
    )
    .await;

    for path in ["/api/orders/not-a-uuid", "/api/orders/123/cancel"] {
        let method = if path.ends_with("cancel") {
            Method::POST
        } else {
            Method::GET
        };
        let response = app.request(&customer, method, path).sent().await;
        assert_error(response, 404, "NOT_FOUND", &[]).await;
    }
    for query in ["page=abc", "page_size=1e99", "page=99999999999999999999999"] {
        let response = app
            .request(&customer, Method::GET, &format!("/api/orders?{query}"))
            .sent()
            .await;
        assert_error(response, 400, "INVALID_QUERY", &[]).await;
    }
    let bad_key = app
        .request(&customer, Method::POST, "/api/orders")
        .header("Idempotency-Key", "k".repeat(256))
        .json(&valid_order())
        .sent()
        .await;
    assert_error(bad_key, 400, "INVALID_IDEMPOTENCY_KEY", &[]).await;
}

#[tokio::test]
async fn idempotency_key_returns_the_same_order_for_the_same_body_only() {
    let app = spawn_app().await;
    let tap = OutboxTap::start(&app.db).await;
    let alice = Customer::new();
    let bob = Customer::new();
    let send = |customer: &Customer, key: &str, body: String| {
        app.request(customer, Method::POST, "/api/orders")
            .header("Idempotency-Key", key)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
    };
    let body = valid_order();
    let first = send(&alice, "key-1", body.to_string()).await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("Idempotent-Replayed").is_none());
    let first: Value = first.json().await.unwrap();

    // Same body, other formatting and key order: the same order, 200.
    let reordered = json!({
        "shipping_address": body["shipping_address"],
        "items": body["items"],
    });
    let replay = send(
        &alice,
        "key-1",
        serde_json::to_string_pretty(&reordered).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["Idempotent-Replayed"], "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["id"], first["id"]);

    let mut other = body.clone();
    other["items"][0]["quantity"] = json!(5);
    let reused = send(&alice, "key-1", other.to_string()).await.unwrap();
    assert_error(reused, 422, "IDEMPOTENCY_KEY_REUSED", &[]).await;

    // Keys are per user.
    let bobs = send(&bob, "key-1", body.to_string()).await.unwrap();
    assert_eq!(bobs.status(), 202);
    let bobs: Value = bobs.json().await.unwrap();
    assert_ne!(bobs["id"], first["id"]);

    // Concurrent retries with a fresh key create one order.
    let racers = (0..8).map(|_| send(&alice, "key-2", body.to_string()));
    let responses = futures::future::join_all(racers).await;
    let mut ids = Vec::new();
    for response in responses {
        let response = response.unwrap();
        assert!([200, 202].contains(&response.status().as_u16()));
        ids.push(response.json::<Value>().await.unwrap()["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");

    let created = tap
        .event_types()
        .await
        .into_iter()
        .filter(|t| t == "OrderCreated")
        .count();
    assert_eq!(created, 3, "one OrderCreated per order, none for replays");
}

#[tokio::test]
async fn idempotency_keys_expire_after_the_retention() {
    let app = spawn_app_with(|settings| {
        settings.idempotency.retention = Duration::from_secs(2);
    })
    .await;
    let alice = Customer::new();
    let send = |key: &str, body: String| {
        app.request(&alice, Method::POST, "/api/orders")
            .header("Idempotency-Key", key)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
    };
    let body = valid_order();
    let first = send("old-key", body.to_string()).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // The service deletes it on its own once it is older than the retention
    // (checked every second here)...
    wait_for_value(
        &app.db,
        "SELECT count(*) FROM idempotency_keys",
        0,
        Duration::from_secs(30),
    )
    .await;
    // ... after which the key is new again: another body places another order.
    let mut other = body.clone();
    other["items"][0]["quantity"] = json!(5);
    let again = send("old-key", other.to_string()).await.unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_ne!(again["id"], first["id"]);
    // The first order itself is still there.
    let kept = app.get_order(&alice, first["id"].as_str().unwrap()).await;
    assert_eq!(kept.status(), 200);
}

#[tokio::test]
async fn listing_is_paginated_newest_first_and_private() {
    let app = spawn_app().await;
    let alice = Customer::new();
    let bob = Customer::new();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.place_ok(&alice).await["id"].clone());
    }
    app.place_ok(&bob).await;
    ids.reverse();

    let page = |customer: &Customer, query: &str| {
        app.request(customer, Method::GET, &format!("/api/orders?{query}"))
            .send()
    };
    let first: Value = page(&alice, "page=1&page_size=2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["page"], 1);
    assert_eq!(first["page_size"], 2);
    assert_eq!(first["total_items"], 5);
    assert_eq!(first["total_pages"], 3);
    let got: Vec<_> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].clone())
        .collect();
    assert_eq!(got, ids[0..2]);
    assert_eq!(first["items"][0]["items"].as_array().unwrap().len(), 2);

    let last: Value = page(&alice, "page=3&page_size=2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<_> = last["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].clone())
        .collect();
    assert_eq!(got, ids[4..5]);
    let beyond: Value = page(&alice, "page=9&page_size=2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(beyond["items"], json!([]));

    let defaults: Value = page(&alice, "").await.unwrap().json().await.unwrap();
    assert_eq!(defaults["page"], 1);
    assert_eq!(defaults["page_size"], 20);
    assert_eq!(defaults["items"].as_array().unwrap().len(), 5);

    let bobs: Value = page(&bob, "").await.unwrap().json().await.unwrap();
    assert_eq!(bobs["total_items"], 1);

    for (query, field) in [
        ("page_size=0", "page_size"),
        ("page_size=101", "page_size"),
        ("page=0", "page"),
    ] {
        let response = page(&alice, query).await.unwrap();
        assert_error(
            response,
            422,
            "VALIDATION_FAILED",
            &[(field, "out_of_range")],
        )
        .await;
    }

    // Someone else's order is not found, as is a missing one.
    let alices = ids[0].as_str().unwrap();
    assert_error(app.get_order(&bob, alices).await, 404, "NOT_FOUND", &[]).await;
    assert_error(app.cancel(&bob, alices, None).await, 404, "NOT_FOUND", &[]).await;
    let missing = Uuid::new_v4().to_string();
    assert_error(app.get_order(&alice, &missing).await, 404, "NOT_FOUND", &[]).await;
}

/// Sets the status of one stored order (the saga's job, done by hand).
async fn set_status(app: &crate::helpers::TestApp, order_id: &Value, status: &str) {
    let id: Uuid = order_id.as_str().unwrap().parse().unwrap();
    app.db
        .client()
        .await
        .execute(
            "UPDATE orders SET status = $2 WHERE id = $1",
            &[&id, &status],
        )
        .await
        .unwrap();
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn too_many_open_orders_is_429_with_retry_after_and_nothing_is_stored() {
    let app = spawn_app_with(|settings| {
        settings.quotas.max_open_orders = 3;
        settings.quotas.open_orders_retry_after = Duration::from_secs(7);
        settings.quotas.max_orders_per_interval = 1000;
    })
    .await;
    let alice = Customer::new();
    let with_key = |key: &str| {
        app.request(&alice, Method::POST, "/api/orders")
            .header("Idempotency-Key", key)
            .json(&valid_order())
            .send()
    };
    let first = with_key("first").await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let second = app.place_ok(&alice).await;
    app.place_ok(&alice).await;

    let refused = app.place(&alice, &valid_order()).await;
    assert_eq!(retry_after(&refused), 7);
    assert_error(refused, 429, "TOO_MANY_OPEN_ORDERS", &[]).await;
    assert_eq!(app.stored_orders().await, 3, "nothing stored");
    // A retry of an order placed before still gets it.
    let replay = with_key("first").await.unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.json::<Value>().await.unwrap()["id"], first["id"]);
    // Other customers have their own quota.
    app.place_ok(&Customer::new()).await;

    // PAID is still in progress; DELIVERY_SCHEDULED, REJECTED and CANCELLED
    // are not.
    set_status(&app, &first["id"], "PAID").await;
    let refused = app.place(&alice, &valid_order()).await;
    assert_error(refused, 429, "TOO_MANY_OPEN_ORDERS", &[]).await;
    set_status(&app, &first["id"], "DELIVERY_SCHEDULED").await;
    let third = app.place_ok(&alice).await;
    for (order, status) in [(&second, "REJECTED"), (&third, "CANCELLED")] {
        set_status(&app, &order["id"], status).await;
    }
    app.place_ok(&alice).await;
    app.place_ok(&alice).await;
    let refused = app.place(&alice, &valid_order()).await;
    assert_error(refused, 429, "TOO_MANY_OPEN_ORDERS", &[]).await;
    // An operator sees the refusals.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("order_quota_refusals_total{code=\"TOO_MANY_OPEN_ORDERS\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn concurrent_placements_never_exceed_the_open_orders_quota() {
    // Every request checks the count before any of them stored its order:
    // without the per-customer lock all of them would pass.
    let app = spawn_app_with(|settings| {
        settings.quotas.max_open_orders = 3;
        settings.quotas.max_orders_per_interval = 1000;
        settings.database.max_connections = 8;
    })
    .await;
    let alice = Customer::new();
    let body = valid_order();
    let racers = (0..12).map(|_| app.place(&alice, &body));
    let statuses: Vec<u16> = futures::future::join_all(racers)
        .await
        .iter()
        .map(|response| response.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(app.stored_orders().await, 3);
}

#[tokio::test]
async fn placing_faster_than_the_rate_limit_is_429_until_the_oldest_order_leaves_the_interval() {
    let app = spawn_app_with(|settings| {
        settings.quotas.max_orders_per_interval = 3;
        settings.quotas.placement_interval = Duration::from_secs(60);
        settings.quotas.max_open_orders = 1000;
    })
    .await;
    let alice = Customer::new();
    let first = app.place_ok(&alice).await;
    // Refused requests and idempotent replays place nothing and do not count.
    let mut invalid = valid_order();
    invalid["items"][0]["quantity"] = json!(0);
    for _ in 0..5 {
        let response = app.place(&alice, &invalid).await;
        assert_eq!(response.status(), 422);
    }
    for _ in 0..3 {
        let response = app
            .request(&alice, Method::POST, "/api/orders")
            .header("Idempotency-Key", "same")
            .json(&valid_order())
            .sent()
            .await;
        assert!([200, 202].contains(&response.status().as_u16()));
    }
    app.place_ok(&alice).await;

    let refused = app.place(&alice, &valid_order()).await;
    let wait = retry_after(&refused);
    assert!((55..=60).contains(&wait), "Retry-After {wait}");
    assert_error(refused, 429, "ORDER_RATE_LIMITED", &[]).await;
    assert_eq!(app.stored_orders().await, 3, "nothing stored");
    app.place_ok(&Customer::new()).await;

    // Once the oldest order is older than the interval, one more fits.
    let id: Uuid = first["id"].as_str().unwrap().parse().unwrap();
    app.db
        .client()
        .await
        .execute(
            "UPDATE orders SET created_at = now() - interval '61 seconds' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    app.place_ok(&alice).await;
    let refused = app.place(&alice, &valid_order()).await;
    assert_error(refused, 429, "ORDER_RATE_LIMITED", &[]).await;
}

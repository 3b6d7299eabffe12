//! Registration, login, throttling, and the outbox event of a registration.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with};
use test_support::{SendExt, assert_error_code};

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn register_returns_a_token_for_the_new_user() {
    let app = spawn_app().await;
    let response = app
        .register("  Ada@Example.COM ", PASSWORD, " Ada Lovelace ")
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert_eq!(body["user"]["name"], "Ada Lovelace");

    let me = app
        .me(Some(&format!("Bearer {}", body["token"].as_str().unwrap())))
        .await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["id"], body["user"]["id"]);
    assert_eq!(me["email"], "ada@example.com");
}

#[tokio::test]
async fn register_reports_every_invalid_field() {
    let app = spawn_app().await;
    let response = app.register("not-an-email", "short", "   ").await;
    let body = assert_error_code(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_FAILED",
    )
    .await;
    let fields: Vec<(&str, &str)> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["field"].as_str().unwrap(), f["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        fields,
        [
            ("email", "invalid_email"),
            ("password", "too_short"),
            ("name", "required")
        ]
    );

    let too_long = app.register("a@example.com", &"x".repeat(129), "A").await;
    assert_eq!(too_long.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let malformed = app
        .http
        .post(app.url("/api/register"))
        .header("Content-Type", "application/json")
        .body("{\"email\": ")
        .sent()
        .await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let missing_field = app
        .http
        .post(app.url("/api/register"))
        .json(&serde_json::json!({"email": "a@example.com"}))
        .sent()
        .await;
    assert_eq!(missing_field.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_taken_email_is_409_whatever_its_case() {
    let app = spawn_app().await;
    assert_eq!(
        app.register("bob@example.com", PASSWORD, "Bob")
            .await
            .status(),
        StatusCode::CREATED
    );
    let again = app
        .register("BOB@example.com", "another password", "Bob 2")
        .await;
    assert_error_code(again, StatusCode::CONFLICT, "EMAIL_TAKEN").await;
}

#[tokio::test]
async fn registration_writes_user_registered_to_the_outbox_in_the_same_transaction() {
    let app = spawn_app().await;
    // The outbox row is deleted in its own transaction; the WAL keeps the
    // insert, which is what the relay reads. Watch it through a slot.
    let db = app.db.client().await;
    let slot = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
    db.execute(
        "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
        &[&slot],
    )
    .await
    .unwrap();
    let response = app.register("carol@example.com", PASSWORD, "Carol").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    let user_id = user["user"]["id"].as_str().unwrap().to_owned();

    let rows = db
        .query(
            "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL)",
            &[&slot],
        )
        .await
        .unwrap();
    db.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    let changes: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    let user_insert = changes
        .iter()
        .position(|c| c.starts_with("table public.users: INSERT"));
    let outbox_insert = changes.iter().position(|c| {
        c.starts_with("table public.outbox: INSERT")
            && c.contains("'UserRegistered'")
            && c.contains(&user_id)
            && c.contains("aggregate_type[text]:'users'")
    });
    let (Some(user_insert), Some(outbox_insert)) = (user_insert, outbox_insert) else {
        panic!("no user + UserRegistered insert in the WAL: {changes:#?}");
    };
    let between = &changes[user_insert.min(outbox_insert)..user_insert.max(outbox_insert)];
    assert!(
        !between.iter().any(|c| c.starts_with("COMMIT")),
        "user and event in different transactions: {changes:#?}"
    );
    let outbox_left: i64 = db
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(outbox_left, 0, "the outbox table stays empty");
}

#[tokio::test]
async fn login_returns_a_token() {
    let app = spawn_app().await;
    app.register("dave@example.com", PASSWORD, "Dave").await;
    let response = app.login("Dave@Example.com", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["user"]["email"], "dave@example.com");
    let me = app
        .me(Some(&format!("Bearer {}", body["token"].as_str().unwrap())))
        .await;
    assert_eq!(me.status(), StatusCode::OK);
}

#[tokio::test]
async fn wrong_password_and_unknown_email_answer_the_same_in_similar_time() {
    // A realistic cost, so that the bcrypt work dominates the timing.
    let app = spawn_app_with(|c| {
        c.auth.bcrypt_cost = 8;
        c.login_throttle.max_failures_per_email_and_address = 100;
        c.login_throttle.max_failures_per_address = 100;
        c.login_throttle.slow_down_after_failures_per_email = 100;
    })
    .await;
    app.register("erin@example.com", PASSWORD, "Erin").await;

    let mut wrong_password = Vec::new();
    let mut unknown_email = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..5 {
        for (email, times) in [
            ("erin@example.com", &mut wrong_password),
            ("nobody@example.com", &mut unknown_email),
        ] {
            let started = Instant::now();
            let response = app.login(email, "wrong password!").await;
            times.push(started.elapsed());
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            bodies.push(response.text().await.unwrap());
        }
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "different answers: {bodies:?}"
    );
    let body: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(body["code"], "INVALID_CREDENTIALS");

    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (wrong, unknown) = (median(&mut wrong_password), median(&mut unknown_email));
    println!("median login time: wrong password {wrong:?}, unknown email {unknown:?}");
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "wrong password {wrong:?} vs unknown email {unknown:?}"
    );
}

#[tokio::test]
async fn repeated_failures_for_one_email_are_throttled_with_retry_after() {
    let app = spawn_app_with(|c| {
        c.login_throttle.max_failures_per_email_and_address = 3;
        c.login_throttle.window = Duration::from_secs(600);
    })
    .await;
    app.register("frank@example.com", PASSWORD, "Frank").await;
    for _ in 0..3 {
        assert_eq!(
            app.login("frank@example.com", "not the password")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Blocked now from this address, even with the right password and
    // another spelling.
    let blocked = app.login("FRANK@example.com", PASSWORD).await;
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = blocked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (590..=600).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    let body: Value = blocked.json().await.unwrap();
    assert_eq!(body["code"], "TOO_MANY_ATTEMPTS");
    // Other accounts are unaffected.
    app.register("grace@example.com", PASSWORD, "Grace").await;
    assert_eq!(
        app.login("grace@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_throttled_across_emails() {
    let app = spawn_app_with(|c| {
        c.login_throttle.max_failures_per_email_and_address = 100;
        c.login_throttle.max_failures_per_address = 4;
    })
    .await;
    for i in 0..4 {
        let response = app
            .login(&format!("user{i}@example.com"), "whatever password")
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let blocked = app.login("user99@example.com", "whatever password").await;
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(blocked.headers().contains_key("retry-after"));
}

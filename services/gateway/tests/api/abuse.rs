//! Login and registration under abuse (issue 21, items 5-7): atomic
//! reservation of login attempts, no lock-out of the owner by others, the
//! trusted-proxy client address, and request rate limits with Retry-After.

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app_with};

const PASSWORD: &str = "correct horse battery";
const ATTACKER: &str = "203.0.113.5";
const OWNER: &str = "198.51.100.7";

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn assert_429(response: reqwest::Response, code: &str) -> u64 {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&response);
    assert!(wait >= 1, "Retry-After {wait}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].is_string());
    wait
}

/// Item 5: 20 concurrent wrong guesses for one account from one address;
/// only the budget of 3 gets a password check (401), the rest 429.
#[tokio::test]
async fn concurrent_wrong_guesses_cannot_all_pass_the_throttle() {
    let app = spawn_app_with(|c| {
        // Slow enough that the guesses overlap in bcrypt.
        c.auth.bcrypt_cost = 10;
        c.login_throttle.max_failures_per_email_and_address = 3;
        c.login_throttle.max_failures_per_address = 100;
        c.login_throttle.slow_down_after_failures_per_email = 100;
    })
    .await;
    assert_eq!(
        app.register("ivan@example.com", PASSWORD, "Ivan")
            .await
            .status(),
        StatusCode::CREATED
    );
    let passwords: Vec<String> = (0..20).map(|i| format!("wrong guess {i}")).collect();
    let guesses = passwords.iter().map(|p| app.login("ivan@example.com", p));
    let statuses: Vec<StatusCode> = join_all(guesses)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(checked <= 3, "{checked} guesses were checked: {statuses:?}");
}

fn behind_proxy(c: &mut gateway::config::Config) {
    c.rate_limit.trusted_proxies = vec!["127.0.0.1".into()];
}

/// Item 6: an attacker's failures lock only his own (email, address) pair;
/// the owner on another address gets in with the right password, after the
/// per-account delay.
#[tokio::test]
async fn an_attacker_cannot_lock_the_owner_out() {
    let app = spawn_app_with(|c| {
        behind_proxy(c);
        c.login_throttle.max_failures_per_email_and_address = 3;
        c.login_throttle.slow_down_after_failures_per_email = 3;
        c.login_throttle.slow_down_interval = Duration::from_millis(1_500);
        c.login_throttle.max_delay = Duration::from_secs(10);
    })
    .await;
    app.register("judy@example.com", PASSWORD, "Judy").await;
    for _ in 0..3 {
        let response = app
            .login_from(ATTACKER, "judy@example.com", "not the password")
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let blocked = app.login_from(ATTACKER, "judy@example.com", PASSWORD).await;
    assert_429(blocked, "TOO_MANY_ATTEMPTS").await;

    // The account is past its soft limit: delayed, not refused.
    let started = Instant::now();
    let owner = app.login_from(OWNER, "judy@example.com", PASSWORD).await;
    let took = started.elapsed();
    assert_eq!(owner.status(), StatusCode::OK);
    assert!(
        took >= Duration::from_millis(1_000),
        "the slowed-down account answered after {took:?}"
    );
    // The attacker's pair stays blocked; the owner's success does not clear it.
    let still = app.login_from(ATTACKER, "judy@example.com", PASSWORD).await;
    assert_eq!(still.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// Item 6: a success clears its own (email, address) failures.
#[tokio::test]
async fn a_successful_login_resets_its_own_counters() {
    let app = spawn_app_with(|c| {
        c.login_throttle.max_failures_per_email_and_address = 3;
        c.login_throttle.slow_down_after_failures_per_email = 100;
    })
    .await;
    app.register("ken@example.com", PASSWORD, "Ken").await;
    for _ in 0..3 {
        for _ in 0..2 {
            let response = app.login("ken@example.com", "typo typo typo").await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        assert_eq!(
            app.login("ken@example.com", PASSWORD).await.status(),
            StatusCode::OK
        );
    }
}

/// Item 6: behind a trusted proxy each client has its own budget; from an
/// untrusted peer `X-Forwarded-For` is ignored (it cannot buy a new budget).
#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let trusted = spawn_app_with(|c| {
        behind_proxy(c);
        c.login_throttle.max_failures_per_address = 3;
    })
    .await;
    spray(&trusted, ATTACKER, 3).await;
    let blocked = trusted
        .login_from(ATTACKER, "new@example.com", "whatever password")
        .await;
    assert_429(blocked, "TOO_MANY_ATTEMPTS").await;
    let other = trusted
        .login_from(OWNER, "new@example.com", "whatever password")
        .await;
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);

    let untrusted = spawn_app_with(|c| c.login_throttle.max_failures_per_address = 3).await;
    for i in 0..3 {
        spray(&untrusted, &format!("192.0.2.{i}"), 1).await;
    }
    let blocked = untrusted
        .login_from("192.0.2.99", "new@example.com", "whatever password")
        .await;
    assert_429(blocked, "TOO_MANY_ATTEMPTS").await;
}

async fn spray(app: &TestApp, client: &str, n: usize) {
    for i in 0..n {
        let response = app
            .login_from(
                client,
                &format!("spray{i}-{client}@example.com"),
                "whatever password",
            )
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}

/// Item 7: registrations per client address.
#[tokio::test]
async fn registration_is_rate_limited_per_address() {
    let app = spawn_app_with(|c| {
        behind_proxy(c);
        c.rate_limit.register_per_address.requests = 2;
        c.rate_limit.register_per_address.per = Duration::from_secs(3_600);
    })
    .await;
    for i in 0..2 {
        let response = app
            .register_from(ATTACKER, &format!("mass{i}@example.com"))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let refused = app.register_from(ATTACKER, "mass2@example.com").await;
    let wait = assert_429(refused, "RATE_LIMITED").await;
    assert!((1_700..=1_800).contains(&wait), "Retry-After {wait}");
    let other = app.register_from(OWNER, "mass2@example.com").await;
    assert_eq!(other.status(), StatusCode::CREATED);
}

/// Item 7: successful logins count too (each is a bcrypt).
#[tokio::test]
async fn successful_logins_are_rate_limited_per_address() {
    let app = spawn_app_with(|c| {
        c.rate_limit.login_per_address.requests = 3;
        c.rate_limit.login_per_address.per = Duration::from_secs(3_600);
    })
    .await;
    app.register("leo@example.com", PASSWORD, "Leo").await;
    for _ in 0..3 {
        assert_eq!(
            app.login("leo@example.com", PASSWORD).await.status(),
            StatusCode::OK
        );
    }
    let refused = app.login("leo@example.com", PASSWORD).await;
    assert_429(refused, "RATE_LIMITED").await;
}

/// Item 7: all clients together (registration and login share the bcrypt
/// budget).
#[tokio::test]
async fn all_clients_together_are_rate_limited() {
    let app = spawn_app_with(|c| {
        behind_proxy(c);
        c.rate_limit.global.requests = 4;
        c.rate_limit.global.per = Duration::from_secs(3_600);
    })
    .await;
    assert_eq!(
        app.register_from("192.0.2.1", "mia@example.com")
            .await
            .status(),
        StatusCode::CREATED
    );
    for i in 2..5 {
        let response = app
            .login_from(&format!("192.0.2.{i}"), "mia@example.com", PASSWORD)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let refused = app
        .login_from("192.0.2.9", "mia@example.com", PASSWORD)
        .await;
    assert_429(refused, "RATE_LIMITED").await;
    let refused = app.register_from("192.0.2.10", "nia@example.com").await;
    assert_429(refused, "RATE_LIMITED").await;
}

/// Item 7: `409 EMAIL_TAKEN` costs the same time as a new registration (the
/// password is hashed either way).
#[tokio::test]
async fn a_taken_email_costs_as_much_as_a_new_registration() {
    let app = spawn_app_with(|c| c.auth.bcrypt_cost = 9).await;
    let mut new = Vec::new();
    let mut taken = Vec::new();
    for i in 0..5 {
        let email = format!("timing{i}@example.com");
        for (times, expected) in [
            (&mut new, StatusCode::CREATED),
            (&mut taken, StatusCode::CONFLICT),
        ] {
            let started = Instant::now();
            let response = app.register(&email, PASSWORD, "T").await;
            times.push(started.elapsed());
            assert_eq!(response.status(), expected);
        }
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (new, taken) = (median(&mut new), median(&mut taken));
    println!("median registration: new {new:?}, taken {taken:?}");
    let ratio = taken.as_secs_f64() / new.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "new {new:?} vs taken {taken:?}"
    );
}

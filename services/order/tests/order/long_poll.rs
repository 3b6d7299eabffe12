//! Long-polling one order: `GET /api/orders/{id}` with `Prefer: wait=N`
//! against the real app, woken by the `orders` trigger's notifications
//! (the order rows are changed with plain SQL, as another instance's saga
//! consumer would).

use std::time::{Duration, Instant};

use crate::helpers::{Customer, TestApp, spawn_app, spawn_app_with};
use commerce_common::config::Secret;
use reqwest::{Method, Response};
use serde_json::Value;
use test_support::{SendExt, wait_until};

const PREFER: &str = "Prefer";
const APPLIED: &str = "Preference-Applied";

async fn get_with_prefer(app: &TestApp, customer: &Customer, id: &str, prefer: &str) -> Response {
    app.request(customer, Method::GET, &format!("/api/orders/{id}"))
        .header(PREFER, prefer)
        .sent()
        .await
}

/// The value of an unlabelled gauge on `/metrics`.
async fn gauge(app: &TestApp, name: &str) -> i64 {
    let text = app.metrics().await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

async fn wait_for_gauge(app: &TestApp, name: &str, value: i64) {
    wait_until(
        Duration::from_secs(10),
        &format!("{name} = {value}"),
        || async { (gauge(app, name).await == value).then_some(()) },
    )
    .await;
}

async fn listening_app() -> TestApp {
    let app = spawn_app().await;
    wait_for_gauge(&app, "order_change_listener_up", 1).await;
    app
}

async fn execute(app: &TestApp, sql: &str, id: &str) {
    let id: uuid::Uuid = id.parse().unwrap();
    let changed = app.db.client().await.execute(sql, &[&id]).await.unwrap();
    assert_eq!(changed, 1, "{sql}");
}

/// Starts a long-poll in the background and waits until the service is
/// waiting on it (`order_long_polls_waiting` counts a request once it has read
/// the order, not while the first read is still running); the task yields the
/// response and when it came.
async fn start_waiting(
    app: &TestApp,
    customer: &Customer,
    id: &str,
    prefer: &str,
    waiting_before: i64,
) -> tokio::task::JoinHandle<(Response, Instant)> {
    let request = app
        .request(customer, Method::GET, &format!("/api/orders/{id}"))
        .header(PREFER, prefer);
    let task = tokio::spawn(async move {
        let response = request.sent().await;
        (response, Instant::now())
    });
    wait_for_gauge(app, "order_long_polls_waiting", waiting_before + 1).await;
    task
}

fn applied(response: &Response) -> Option<&str> {
    response.headers().get(APPLIED).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_waiting_request_answers_when_the_order_changes() {
    let app = listening_app().await;
    let customer = Customer::new();
    let placed = app.place_ok(&customer).await;
    let id = placed["id"].as_str().unwrap();

    let started = Instant::now();
    let waiting = start_waiting(&app, &customer, id, "respond-async, wait=5", 0).await;
    let updated_at = Instant::now();
    execute(
        &app,
        "UPDATE orders SET status = 'PAID', updated_at = now() WHERE id = $1",
        id,
    )
    .await;
    let (response, answered_at) = waiting.await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(answered_at > updated_at);
    let took = answered_at - started;
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    assert_eq!(applied(&response), Some("wait=5"));
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "PAID");
    assert_eq!(order["id"], placed["id"]);

    // Facts without a status change count too; several waiters on one order
    // all wake; a wait above the cap is applied as 20 s.
    let first = start_waiting(&app, &customer, id, "wait=999", 0).await;
    let second = start_waiting(&app, &customer, id, "wait=5", 1).await;
    let updated_at = Instant::now();
    execute(
        &app,
        "UPDATE orders SET payment_status = 'CONFIRMED', payment_amount_cents = total_cents \
         WHERE id = $1",
        id,
    )
    .await;
    for (waiting, want) in [(first, "wait=20"), (second, "wait=5")] {
        let (response, answered_at) = waiting.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(applied(&response), Some(want));
        let took = answered_at - updated_at;
        assert!(
            took < Duration::from_secs(2),
            "answered {took:?} after the update"
        );
        let order: Value = response.json().await.unwrap();
        assert_eq!(order["payment"]["status"], "CONFIRMED", "{order}");
    }
    wait_for_gauge(&app, "order_long_polls_waiting", 0).await;
}

#[tokio::test]
async fn until_settled_answers_only_once_the_saga_is_done_with_the_order() {
    let app = listening_app().await;
    let customer = Customer::new();
    let placed = app.place_ok(&customer).await;
    let id = placed["id"].as_str().unwrap();
    let settled = format!("{id}?until=settled");

    // A change that leaves the saga working (PAID) does not answer: the
    // wait runs out (1 s) and answers with the changed order.
    let started = Instant::now();
    let waiting = start_waiting(&app, &customer, &settled, "wait=1", 0).await;
    execute(&app, "UPDATE orders SET status = 'PAID' WHERE id = $1", id).await;
    let (response, answered_at) = waiting.await.unwrap();
    let took = answered_at - started;
    assert!(
        took >= Duration::from_secs(1),
        "answered after {took:?}, before the wait ran out"
    );
    assert_eq!(applied(&response), Some("wait=1"));
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "PAID");

    // Through another change that settles nothing, to the one that does.
    let waiting = start_waiting(&app, &customer, &settled, "wait=5", 0).await;
    execute(
        &app,
        "UPDATE orders SET payment_status = 'CONFIRMED' WHERE id = $1",
        id,
    )
    .await;
    let updated_at = Instant::now();
    execute(
        &app,
        "UPDATE orders SET status = 'DELIVERY_SCHEDULED' WHERE id = $1",
        id,
    )
    .await;
    let (response, answered_at) = waiting.await.unwrap();
    assert!(answered_at - updated_at < Duration::from_secs(2));
    assert_eq!(applied(&response), Some("wait=5"));
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "DELIVERY_SCHEDULED");
    assert_eq!(order["payment"]["status"], "CONFIRMED", "{order}");

    // A settled order answers at once; an unknown `until` is a 400.
    let started = Instant::now();
    let response = get_with_prefer(&app, &customer, &settled, "wait=5").await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let response = get_with_prefer(&app, &customer, &format!("{id}?until=later"), "wait=5").await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["code"], "INVALID_QUERY", "{error}");
    assert_eq!(gauge(&app, "order_long_polls_waiting").await, 0);
}

#[tokio::test]
async fn an_order_the_saga_is_done_with_answers_at_once() {
    let app = listening_app().await;
    let customer = Customer::new();
    for status in ["DELIVERY_SCHEDULED", "REJECTED", "CANCELLED"] {
        let placed = app.place_ok(&customer).await;
        let id = placed["id"].as_str().unwrap();
        execute(
            &app,
            &format!("UPDATE orders SET status = '{status}' WHERE id = $1"),
            id,
        )
        .await;
        let started = Instant::now();
        let response = get_with_prefer(&app, &customer, id, "wait=5").await;
        let took = started.elapsed();
        assert_eq!(response.status(), 200);
        assert!(
            took < Duration::from_secs(1),
            "{status}: answered after {took:?}"
        );
        assert_eq!(applied(&response), None, "{status}");
        let order: Value = response.json().await.unwrap();
        assert_eq!(order["status"], status);
    }
}

#[tokio::test]
async fn without_a_change_the_wait_ends_after_n_seconds_with_the_same_order() {
    let app = listening_app().await;
    let customer = Customer::new();
    let placed = app.place_ok(&customer).await;
    let id = placed["id"].as_str().unwrap();

    let started = Instant::now();
    let waiting = start_waiting(&app, &customer, id, "wait=1", 0).await;
    // An UPDATE that changes nothing is not a change.
    execute(&app, "UPDATE orders SET status = status WHERE id = $1", id).await;
    let (response, answered_at) = waiting.await.unwrap();
    let took = answered_at - started;
    assert_eq!(response.status(), 200);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    assert_eq!(applied(&response), Some("wait=1"));
    let order: Value = response.json().await.unwrap();
    assert_eq!(order, placed);
    assert_eq!(gauge(&app, "order_long_polls_waiting").await, 0);
}

#[tokio::test]
async fn unusable_wait_preferences_are_ignored_and_unknown_orders_answer_404_at_once() {
    let app = listening_app().await;
    let customer = Customer::new();
    let placed = app.place_ok(&customer).await;
    let id = placed["id"].as_str().unwrap();

    for prefer in [
        "wait=0",
        "wait=abc",
        "wait=-3",
        "wait=1.5",
        "wait",
        "",
        "respond-async",
        "wait=5s",
        "wait=\"\"",
    ] {
        let started = Instant::now();
        let response = get_with_prefer(&app, &customer, id, prefer).await;
        let took = started.elapsed();
        assert_eq!(response.status(), 200, "{prefer:?}");
        assert!(took < Duration::from_millis(900), "{prefer:?}: {took:?}");
        assert_eq!(applied(&response), None, "{prefer:?}");
        let order: Value = response.json().await.unwrap();
        assert_eq!(order, placed, "{prefer:?}");
    }

    let stranger = Customer::new();
    for (who, order_id) in [
        (&customer, uuid::Uuid::new_v4().to_string()),
        (&stranger, id.to_owned()),
    ] {
        let started = Instant::now();
        let response = get_with_prefer(&app, who, &order_id, "wait=5").await;
        assert_eq!(response.status(), 404);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(gauge(&app, "order_long_polls_waiting").await, 0);
}

#[tokio::test]
async fn the_listener_reconnects_after_losing_its_connection() {
    let app = listening_app().await;
    let customer = Customer::new();
    let placed = app.place_ok(&customer).await;
    let id = placed["id"].as_str().unwrap();

    let admin = app.db.client().await;
    let listener_pids = async || -> Vec<i32> {
        admin
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE application_name = 'order-service-listener' \
                 AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    let old = listener_pids().await;
    assert_eq!(old.len(), 1, "one listener connection");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&old[0]])
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the listener back up", || async {
        let reconnected = listener_pids().await.iter().any(|pid| *pid != old[0]);
        let up = gauge(&app, "order_change_listener_up").await == 1;
        (reconnected && up).then_some(())
    })
    .await;

    let waiting = start_waiting(&app, &customer, id, "wait=5", 0).await;
    let updated_at = Instant::now();
    execute(&app, "UPDATE orders SET status = 'PAID' WHERE id = $1", id).await;
    let (response, answered_at) = waiting.await.unwrap();
    assert_eq!(applied(&response), Some("wait=5"));
    assert!(answered_at - updated_at < Duration::from_secs(2));
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "PAID");
}

#[tokio::test]
async fn a_change_made_through_another_instance_wakes_the_waiter() {
    let app = listening_app().await;
    let url = app.db.url.clone();
    let other = spawn_app_with(|settings| settings.database.url = Secret::new(&url)).await;
    wait_for_gauge(&other, "order_change_listener_up", 1).await;
    let customer = Customer::new();
    let placed = app.place_ok(&customer).await;
    let id = placed["id"].as_str().unwrap();
    execute(&app, "UPDATE orders SET status = 'PAID' WHERE id = $1", id).await;

    let waiting = start_waiting(&app, &customer, id, "wait=5", 0).await;
    let cancelled_at = Instant::now();
    let cancel = other.cancel(&customer, id, None).await;
    assert_eq!(cancel.status(), 202);
    let (response, answered_at) = waiting.await.unwrap();
    assert_eq!(applied(&response), Some("wait=5"));
    assert!(answered_at - cancelled_at < Duration::from_secs(2));
    let order: Value = response.json().await.unwrap();
    assert!(order["cancellation"]["requested_at"].is_string(), "{order}");
}

#[tokio::test]
async fn stopping_the_service_answers_waiting_requests_at_once() {
    let app = listening_app().await;
    let customer = Customer::new();
    let placed = app.place_ok(&customer).await;
    let id = placed["id"].as_str().unwrap().to_owned();

    let waiting = start_waiting(&app, &customer, &id, "wait=20", 0).await;
    let stopped_at = Instant::now();
    drop(app);
    let (response, answered_at) = waiting.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(applied(&response), Some("wait=20"));
    let took = answered_at - stopped_at;
    assert!(
        took < Duration::from_secs(2),
        "answered {took:?} after shutdown"
    );
    let order: Value = response.json().await.unwrap();
    assert_eq!(order, placed);
}

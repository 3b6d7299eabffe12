//! `order-service replay-dead-letters`: the binary replays a dead-lettered
//! event through the order saga once its cause is fixed.

use std::process::{Command, Output};

use crate::helpers::{TestApp, payment_confirmed, placed_order, spawn_app};
use test_support::{bin_path, query_i64};

/// Runs `order-service replay-dead-letters ARGS...` against the app's database.
fn replay(app: &TestApp, args: &[&str]) -> Output {
    let mut command = Command::new(bin_path("order-service"));
    for (key, _) in std::env::vars() {
        if key.starts_with("APP__") || key == "APP_CONFIG_FILE" {
            command.env_remove(key);
        }
    }
    command
        .arg("replay-dead-letters")
        .args(args)
        .env("APP__DATABASE__URL", &app.db.url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run order-service")
}

#[tokio::test]
async fn replay_dead_letters_applies_the_event_and_deletes_the_dead_letter() {
    let app = spawn_app().await;
    let (customer, order_id) = placed_order(&app).await;
    // A PaymentConfirmed the consumer once gave up on (say, a bug since fixed).
    let confirmed = payment_confirmed(order_id, &customer);
    let value = serde_json::to_string(&confirmed).unwrap();
    app.db
        .client()
        .await
        .execute(
            "INSERT INTO dead_letters (consumer_group, topic, partition, record_offset, \
             record_value, event_id, event_type, reason) \
             VALUES ('order', 'payments', 0, 41, convert_to($1, 'UTF8'), $2, 'PaymentConfirmed', 'a bug')",
            &[&value, &confirmed.event_id],
        )
        .await
        .unwrap();

    let output = replay(&app, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(": handled, dead letter deleted"),
        "{stdout}"
    );
    assert_eq!(
        app.order_json(&customer, &order_id.to_string()).await["status"],
        "PAID"
    );
    assert_eq!(
        query_i64(&app.db, "SELECT count(*) FROM dead_letters").await,
        0
    );

    // Nothing left to replay; an unknown id fails.
    assert!(replay(&app, &[]).status.success());
    let missing = replay(&app, &["999"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stdout).contains("no such dead letter"));
}

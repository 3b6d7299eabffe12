//! The dashboard in a real (headless) browser: it renders from the relay
//! alone (no network) and shows live state, numbers and charts.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use fantoccini::{Client, Locator};
use futures::FutureExt;
use test_support::{Browser, wait_until};

use crate::helpers::{Relay, SourceSpec, insert_events, outbox_database, unique};

async fn text_of(browser: &Client, css: &str) -> Option<String> {
    browser
        .find(Locator::Css(css))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// Waits until the text of `css` passes `check`; returns that text.
async fn wait_for_text(
    browser: &Client,
    css: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    wait_until(timeout, what, || async {
        text_of(browser, css).await.filter(|text| check(text))
    })
    .await
}

#[tokio::test]
async fn dashboard_shows_live_source_state_in_headless_chromium() {
    let (db, client) = outbox_database("relay_dash").await;
    let source = SourceSpec::new("dash", &db);
    let broken = SourceSpec {
        name: "broken".into(),
        url: format!(
            "postgres://postgres@127.0.0.1:{}/nowhere",
            test_support::free_port()
        ),
        slot: unique("relay_test"),
    };
    let relay = Relay::start(&[&source, &broken]).await;
    let (_browser, browser) = Browser::start().await;
    // Close the session even when a check fails: a Chromium left running
    // keeps chromedriver's output pipes open and the guard's drop waiting.
    let checks = AssertUnwindSafe(check_dashboard(&relay, &browser, &client)).catch_unwind();
    let outcome = checks.await;
    let _ = browser.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn check_dashboard(relay: &Relay, browser: &Client, client: &tokio_postgres::Client) {
    browser.goto(&relay.url("/")).await.expect("open dashboard");

    wait_for_text(
        browser,
        "#source-dash .state",
        Duration::from_secs(20),
        "the dash source to show streaming",
        |s| s == "streaming",
    )
    .await;
    let topic = unique("rt_dash");
    insert_events(client, &topic, "k", 0, 250).await;
    wait_for_text(
        browser,
        "#source-dash .events",
        Duration::from_secs(30),
        "the event count to reach 250",
        |s| s.replace(',', "") == "250",
    )
    .await;
    // The lag probe's reading of the slot.
    wait_for_text(
        browser,
        "#source-dash .wal-status",
        Duration::from_secs(20),
        "the dash source's WAL status",
        |s| s == "reserved",
    )
    .await;
    let error = wait_for_text(
        browser,
        "#source-broken .error",
        Duration::from_secs(20),
        "the broken source's error",
        |s| s.contains("last error"),
    )
    .await;
    assert!(error.contains("database"), "{error}");
    assert_eq!(
        text_of(browser, "#source-broken .state").await.as_deref(),
        Some("reconnecting")
    );
    // Its reconnects of the last minute (flapping shows here).
    wait_for_text(
        browser,
        "#source-broken .reconnects-per-minute",
        Duration::from_secs(20),
        "the broken source's reconnects per minute",
        |s| s.parse::<u64>().is_ok_and(|n| n >= 2),
    )
    .await;

    // Four charts per source, drawn (not blank) on real canvases.
    let charts = browser
        .find_all(Locator::Css("#source-dash canvas.chart"))
        .await
        .expect("charts");
    assert_eq!(charts.len(), 4);
    let drawn = browser
        .execute(
            "const c = document.querySelector('#source-dash canvas[data-chart=\"eps\"]');
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             return d.some((v, i) => i % 4 === 3 && v !== 0);",
            vec![],
        )
        .await
        .expect("inspect canvas");
    assert_eq!(drawn, serde_json::Value::Bool(true));
    let png = browser.screenshot().await.expect("screenshot");
    let path = std::env::temp_dir().join("relay-dashboard.png");
    std::fs::write(&path, png).expect("write screenshot");
    println!("dashboard screenshot: {}", path.display());
}

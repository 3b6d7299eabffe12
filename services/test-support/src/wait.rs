//! Waiting for something to become true, with a deadline instead of a sleep.

use std::{future::Future, time::Duration};

use tokio::time::Instant;

/// Polls `f` with a short, growing backoff (10 ms up to 250 ms) until it
/// returns `Some`, and returns that value. Panics naming `what` when
/// `timeout` passes, also when a single attempt hangs past the deadline.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, f()).await {
            Ok(Some(value)) => return value,
            Ok(None) => {}
            Err(_) => panic!("timed out after {timeout:?} waiting for {what} (an attempt hung)"),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay.min(remaining)).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// Waits until `GET url` answers 2xx (e.g. a service's `/ready`).
pub async fn wait_for_http_ok(url: &str, timeout: Duration) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    wait_until(timeout, &format!("GET {url} to answer 2xx"), || {
        let client = client.clone();
        async move {
            match client.get(url).send().await {
                Ok(resp) if resp.status().is_success() => Some(()),
                _ => None,
            }
        }
    })
    .await
}

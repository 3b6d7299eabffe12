//! The scenarios and what they share: registering users, placing orders that
//! keep wallets funded, following a saga to its end.

pub mod light;
pub mod mixed;
pub mod saga;
pub mod saturation;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::api::{Api, OrderState, PlacedOrder, User, is_final};
use crate::cli::{Cli, WaitUntil};
use crate::metrics::Outcome;
use crate::stats::LatencySummary;

pub const PASSWORD: &str = "load-test-Passw0rd";

/// A registered user, an estimate of their wallet, and their orders so far.
#[derive(Debug)]
pub struct Customer {
    pub user: User,
    credit_estimate: AtomicI64,
    topping_up: AtomicBool,
    pub orders: Mutex<Vec<String>>,
}

impl Customer {
    pub fn new(user: User, credit: i64) -> Self {
        Self {
            user,
            credit_estimate: AtomicI64::new(credit),
            topping_up: AtomicBool::new(false),
            orders: Mutex::new(Vec::new()),
        }
    }

    pub fn remember(&self, id: &str) {
        self.orders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.to_string());
    }

    pub fn random_order(&self, rng: &mut impl rand::Rng) -> Option<String> {
        let orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        (!orders.is_empty()).then(|| orders[rng.gen_range(0..orders.len())].clone())
    }
}

/// A pass/fail line against a target of the issue.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// One step of the saturation scenario.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub target_rate: f64,
    pub duration_s: f64,
    pub placed: u64,
    pub errors: u64,
    pub achieved_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub held: bool,
    /// Final status counts of this step's orders after the drain.
    pub final_statuses: BTreeMap<String, u64>,
    /// `updated_at - created_at` of this step's final orders: how long their
    /// sagas took inside the system (None: no final order, or no drain).
    pub sagas: Option<LatencySummary>,
}

/// What a scenario hands to the report besides the recorder's figures.
#[derive(Debug, Default, Serialize)]
pub struct Outcomes {
    pub parameters: BTreeMap<String, Value>,
    pub sagas_started: Option<u64>,
    pub steps: Vec<StepResult>,
    pub max_rate_held: Option<f64>,
    /// The highest rate up to which every step also had its sagas' p99
    /// inside the system within the latency limit (None: none, or no drain).
    pub max_rate_sagas_kept_up: Option<f64>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
}

/// A short random id so several runs against one stack never collide on emails.
pub fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Registers `count` users, `concurrency` at a time (bcrypt makes this slow on purpose).
pub async fn register_customers(
    api: &Api,
    cli: &Cli,
    label: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Arc<Customer>>> {
    let run = run_id();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let api = api.clone();
        let semaphore = semaphore.clone();
        let email = format!("load-{label}-{run}-{i}@example.com");
        let credit = cli.initial_credit;
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await.expect("semaphore open");
            let user = api
                .register(&email, PASSWORD, &format!("Load User {i}"))
                .await
                .ok()?;
            Some(Arc::new(Customer::new(user, credit)))
        });
    }
    let mut customers = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        if let Some(customer) = joined? {
            customers.push(customer);
        }
    }
    anyhow::ensure!(
        !customers.is_empty(),
        "could not register any user at {}: is the gateway up? (see the errors above)",
        api.base()
    );
    Ok(customers)
}

/// Places a random cheap order, topping the customer's wallet up in the
/// background when the estimated credit runs low.
pub async fn place_random_order(
    api: &Api,
    customer: &Arc<Customer>,
    top_up_cents: i64,
) -> Result<(PlacedOrder, Instant), Outcome> {
    let (body, total) = crate::api::random_order_body(&mut rand::thread_rng(), api.products());
    let left = customer.credit_estimate.fetch_sub(total, Ordering::Relaxed) - total;
    if left < top_up_cents / 4 && !customer.topping_up.swap(true, Ordering::AcqRel) {
        let api = api.clone();
        let customer = customer.clone();
        tokio::spawn(async move {
            if api.top_up(&customer.user, top_up_cents).await.is_ok() {
                customer
                    .credit_estimate
                    .fetch_add(top_up_cents, Ordering::Relaxed);
            }
            customer.topping_up.store(false, Ordering::Release);
        });
    }
    let sent = Instant::now();
    let placed = api.place_order(&customer.user, &body).await?;
    customer.remember(&placed.id);
    Ok((placed, sent))
}

/// The wait before the next poll: `poll_interval`, or a tenth of the time
/// already waited when that is longer (at most 1 s), so slow sagas are not
/// drowned in polls while the resolution stays within about 10%.
pub fn next_poll(poll_interval: Duration, waited: Duration) -> Duration {
    poll_interval
        .max(waited / 10)
        .min(Duration::from_secs(1).max(poll_interval))
}

/// How [`follow_saga`] learns about an order's progress.
#[derive(Debug, Clone, Copy)]
pub enum Follow {
    /// `GET` every `next_poll(interval, waited)`.
    Poll(Duration),
    /// `GET` with `Prefer: wait=seconds`: the server answers when the order
    /// changes or is settled (`until`). A server that does not honour it (no
    /// `Preference-Applied`) is polled at the interval instead.
    Wait {
        seconds: u64,
        until: WaitUntil,
        interval: Duration,
    },
}

/// Follows an order until it is final or `timeout` passed since `sent`;
/// records the saga's completion time (POST sent to the first answer showing
/// a final status).
pub async fn follow_saga(
    api: &Api,
    customer: &Customer,
    id: &str,
    sent: Instant,
    follow: Follow,
    timeout: Duration,
) -> Option<OrderState> {
    let mut last = "PENDING".to_string();
    loop {
        let answer = match follow {
            Follow::Poll(interval) => {
                tokio::time::sleep(next_poll(interval, sent.elapsed())).await;
                api.get_order(&customer.user, id).await
            }
            Follow::Wait {
                seconds,
                until,
                interval,
            } => {
                let left = timeout.saturating_sub(sent.elapsed()).as_secs().max(1);
                match api
                    .wait_order(&customer.user, id, seconds.min(left), until)
                    .await
                {
                    Ok((state, true)) => Ok(state),
                    other => {
                        tokio::time::sleep(next_poll(interval, sent.elapsed())).await;
                        other.map(|(state, _)| state)
                    }
                }
            }
        };
        if let Ok(state) = answer {
            if is_final(&state.status) {
                api.recorder()
                    .record_saga(&state.status, sent.elapsed(), state.server_side);
                return Some(state);
            }
            last = state.status;
        }
        if sent.elapsed() >= timeout {
            api.recorder()
                .record_saga(&format!("UNFINISHED({last})"), sent.elapsed(), None);
            return None;
        }
    }
}

/// Waits for spawned request tasks, at most `limit`; returns how many were still running.
pub async fn wait_all(tasks: &mut JoinSet<()>, limit: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(_)) => continue,
            Ok(None) => return 0,
            Err(_) => {
                let left = tasks.len();
                tasks.abort_all();
                return left;
            }
        }
    }
}

/// Reaps finished tasks; true when another may be started under `max_in_flight`.
pub fn has_room(tasks: &mut JoinSet<()>, max_in_flight: usize) -> bool {
    while tasks.try_join_next().is_some() {}
    tasks.len() < max_in_flight
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_slow_down_for_slow_sagas() {
        let base = Duration::from_millis(50);
        assert_eq!(next_poll(base, Duration::ZERO), base);
        assert_eq!(next_poll(base, Duration::from_millis(250)), base);
        assert_eq!(
            next_poll(base, Duration::from_secs(2)),
            Duration::from_millis(200)
        );
        assert_eq!(
            next_poll(base, Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(
            next_poll(Duration::from_secs(2), Duration::ZERO),
            Duration::from_secs(2)
        );
    }
}

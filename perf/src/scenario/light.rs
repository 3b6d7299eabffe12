//! The seed's Gatling scenario: users ramped in evenly, each registering, then
//! placing an order and listing its orders with pauses, a fixed number of times.
//! Closed loop: each user waits for its answer before the pause.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;

use super::{Check, Customer, Outcomes, PASSWORD, run_id};
use crate::api::Api;
use crate::cli::Cli;
use crate::schedule::ramp_offsets;

pub async fn run(api: &Api, cli: &Cli) -> anyhow::Result<Outcomes> {
    let users = cli.users();
    let pause = Duration::from_millis(cli.pause_ms);
    let run = run_id();
    let mut tasks = JoinSet::new();
    for (i, offset) in ramp_offsets(users, Duration::from_secs_f64(cli.ramp))
        .into_iter()
        .enumerate()
    {
        let api = api.clone();
        let email = format!("load-light-{run}-{i}@example.com");
        let iterations = cli.iterations;
        let (credit, top_up) = (cli.initial_credit, cli.top_up_cents);
        tasks.spawn(async move {
            tokio::time::sleep(offset).await;
            let Ok(user) = api
                .register(&email, PASSWORD, &format!("Light User {i}"))
                .await
            else {
                return;
            };
            let customer = Arc::new(Customer::new(user, credit));
            for _ in 0..iterations {
                let _ = super::place_random_order(&api, &customer, top_up).await;
                tokio::time::sleep(pause).await;
                let _ = api.list_orders(&customer.user, 1, 10).await;
                tokio::time::sleep(pause).await;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined?;
    }
    let snapshot = api.recorder().snapshot();
    let mut outcomes = Outcomes::default();
    outcomes.parameters.extend([
        ("users".to_string(), json!(users)),
        ("ramp_s".to_string(), json!(cli.ramp)),
        ("iterations".to_string(), json!(cli.iterations)),
        ("pause_ms".to_string(), json!(cli.pause_ms)),
    ]);
    outcomes.checks.push(Check {
        name: "zero errors in the light scenario".into(),
        passed: snapshot.total.errors == 0 && snapshot.total.count > 0,
        detail: format!(
            "{} errors in {} requests",
            snapshot.total.errors, snapshot.total.count
        ),
    });
    Ok(outcomes)
}

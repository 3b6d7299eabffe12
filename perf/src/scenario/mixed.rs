//! Read-heavy traffic at a fixed rate (open loop): most requests read an
//! order, a page of orders or the wallet; a share places new orders.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::task::JoinSet;

use super::{Check, Customer, Outcomes, has_room, place_random_order, wait_all};
use crate::api::Api;
use crate::cli::Cli;
use crate::schedule::run_open_loop;

/// What one request of the mix does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PlaceOrder,
    GetOrder,
    ListOrders,
    GetWallet,
}

/// Reads split 50/30/20 between an order, a page of orders and the wallet.
pub fn choose(write_share: f64, roll: f64) -> Action {
    if roll < write_share {
        return Action::PlaceOrder;
    }
    let read = (roll - write_share) / (1.0 - write_share).max(f64::EPSILON);
    match read {
        r if r < 0.5 => Action::GetOrder,
        r if r < 0.8 => Action::ListOrders,
        _ => Action::GetWallet,
    }
}

/// Gives every customer one order so there is something to read from the first second.
pub async fn seed(api: &Api, customers: &[Arc<Customer>], top_up: i64) {
    let mut tasks = JoinSet::new();
    for customer in customers {
        let (api, customer) = (api.clone(), customer.clone());
        tasks.spawn(async move {
            let _ = place_random_order(&api, &customer, top_up).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

pub async fn run(api: &Api, cli: &Cli, customers: &[Arc<Customer>]) -> anyhow::Result<Outcomes> {
    eprintln!(
        "mixed load at {}/s for {:?}, {:.0}% writes",
        cli.rate(),
        cli.duration(),
        cli.write_share * 100.0
    );
    let mut tasks = JoinSet::new();
    let mut rng = rand::rngs::StdRng::from_entropy();
    run_open_loop(cli.rate(), cli.duration(), |i, lag| {
        api.recorder().record_generator_lag(lag);
        let action = choose(cli.write_share, rng.r#gen::<f64>());
        if !has_room(&mut tasks, cli.max_in_flight) {
            api.record_skipped(match action {
                Action::PlaceOrder => "place_order",
                Action::GetOrder => "get_order",
                Action::ListOrders => "list_orders",
                Action::GetWallet => "get_wallet",
            });
            return;
        }
        let customer = customers[i as usize % customers.len()].clone();
        let api = api.clone();
        let top_up = cli.top_up_cents;
        let order = customer.random_order(&mut rng);
        let page = rng.gen_range(1..=3);
        tasks.spawn(async move {
            match (action, order) {
                (Action::GetOrder, Some(id)) => {
                    let _ = api.get_order(&customer.user, &id).await;
                }
                (Action::ListOrders, _) | (Action::GetOrder, None) => {
                    let _ = api.list_orders(&customer.user, page, 20).await;
                }
                (Action::GetWallet, _) => {
                    let _ = api.wallet(&customer.user).await;
                }
                (Action::PlaceOrder, _) => {
                    let _ = place_random_order(&api, &customer, top_up).await;
                }
            }
        });
    })
    .await;
    let abandoned = wait_all(&mut tasks, cli.request_timeout() * 2).await;
    let snapshot = api.recorder().snapshot();
    let mut outcomes = Outcomes::default();
    outcomes.parameters.extend([
        ("rate_per_s".to_string(), json!(cli.rate())),
        (
            "duration_s".to_string(),
            json!(cli.duration().as_secs_f64()),
        ),
        ("users".to_string(), json!(customers.len())),
        ("write_share".to_string(), json!(cli.write_share)),
        (
            "read_mix".to_string(),
            json!("get_order 50%, list_orders (page 1-3 of 20) 30%, get_wallet 20% of reads"),
        ),
    ]);
    let error_rate = snapshot.total.errors as f64 / snapshot.total.count.max(1) as f64;
    outcomes.checks.push(Check {
        name: "under 0.1% errors in the mixed scenario".into(),
        passed: snapshot.total.count > 0 && error_rate < 0.001,
        detail: format!(
            "{} errors in {} requests",
            snapshot.total.errors, snapshot.total.count
        ),
    });
    if abandoned > 0 {
        outcomes.notes.push(format!(
            "{abandoned} requests were still running at the deadline and were aborted"
        ));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_follows_the_shares() {
        let mut counts = [0usize; 4];
        let n = 10_000;
        for k in 0..n {
            let roll = (k as f64 + 0.5) / n as f64;
            let index = match choose(0.1, roll) {
                Action::PlaceOrder => 0,
                Action::GetOrder => 1,
                Action::ListOrders => 2,
                Action::GetWallet => 3,
            };
            counts[index] += 1;
        }
        assert_eq!(counts, [1000, 4500, 2700, 1800]);
    }

    #[test]
    fn all_writes_and_no_writes() {
        assert_eq!(choose(1.0, 0.99), Action::PlaceOrder);
        assert_eq!(choose(0.0, 0.0), Action::GetOrder);
        assert_eq!(choose(0.0, 0.99), Action::GetWallet);
    }
}

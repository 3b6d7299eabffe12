//! Orders at a rising rate (open loop), step by step, until a step's p99
//! exceeds the limit (or errors appear); the highest step that held is the
//! answer. Afterwards every placed order is checked for a final status, so
//! "held" can be read together with "every saga completed".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::task::JoinSet;

use super::{Check, Customer, Outcomes, StepResult, has_room, place_random_order, wait_all};
use crate::api::{Api, OrderState, is_final};
use crate::cli::Cli;
use crate::metrics::Recorder;
use crate::schedule::{rate_steps, run_open_loop};
use crate::stats::{LatencySummary, micros, new_histogram};

/// A step holds when its p99 is within the limit and under 1% of its requests failed.
pub fn step_held(p99_ms: f64, limit_ms: f64, requests: u64, errors: u64) -> bool {
    requests > 0 && p99_ms <= limit_ms && (errors as f64) < requests as f64 * 0.01
}

pub async fn run(api: &Api, cli: &Cli, customers: &[Arc<Customer>]) -> anyhow::Result<Outcomes> {
    let step_duration = cli.duration();
    let placed: Arc<Mutex<Vec<(usize, usize, String)>>> = Arc::default();
    let mut steps = Vec::new();
    let mut max_rate_held = None;
    for (index, rate) in rate_steps(cli.rate(), cli.step, cli.max_rate)
        .into_iter()
        .enumerate()
    {
        let step_api = api.with_step(index);
        let mut tasks = JoinSet::new();
        let step_started = Instant::now();
        run_open_loop(rate, step_duration, |i, lag| {
            step_api.recorder().record_generator_lag(lag);
            if !has_room(&mut tasks, cli.max_in_flight) {
                step_api.record_skipped("place_order");
                return;
            }
            let who = i as usize % customers.len();
            let customer = customers[who].clone();
            let (api, placed) = (step_api.clone(), placed.clone());
            let top_up = cli.top_up_cents;
            tasks.spawn(async move {
                if let Ok((order, _)) = place_random_order(&api, &customer, top_up).await {
                    placed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((index, who, order.id));
                }
            });
        })
        .await;
        // Let the step's requests finish so its figures are complete and the next step starts clean.
        wait_all(&mut tasks, cli.request_timeout() + Duration::from_secs(1)).await;
        let summary = step_api
            .recorder()
            .step_summary(index, step_duration.as_secs_f64());
        let orders = summary.iter().find(|k| k.kind == "place_order");
        let (requests, ok, errors) = orders.map_or((0, 0, 0), |k| (k.count, k.ok, k.errors));
        let latency = orders.map(|k| k.latency).unwrap_or_default();
        let held = step_held(latency.p99_ms, cli.p99_limit_ms, requests, errors);
        eprintln!(
            "step {index}: {rate:.0}/s -> {ok} ok, {errors} errors, p50 {:.1} ms, p99 {:.1} ms ({}), {:.1}s",
            latency.p50_ms,
            latency.p99_ms,
            if held { "held" } else { "NOT held" },
            step_started.elapsed().as_secs_f64()
        );
        steps.push(StepResult {
            target_rate: rate,
            duration_s: step_duration.as_secs_f64(),
            placed: ok,
            errors,
            achieved_rate: ok as f64 / step_duration.as_secs_f64(),
            p50_ms: latency.p50_ms,
            p99_ms: latency.p99_ms,
            max_ms: latency.max_ms,
            held,
            final_statuses: BTreeMap::new(),
            sagas: None,
        });
        if !held {
            break;
        }
        max_rate_held = Some(rate);
    }

    let mut outcomes = Outcomes {
        max_rate_held,
        ..Outcomes::default()
    };
    let placed = std::mem::take(&mut *placed.lock().unwrap_or_else(|p| p.into_inner()));
    if cli.drain_timeout > 0.0 {
        eprintln!("checking the final status of {} orders", placed.len());
        let drain_api = api.with_recorder(Arc::new(Recorder::new()));
        let placement_ended = Instant::now();
        let (states, all_final) = drain(
            &drain_api,
            customers,
            &placed,
            Duration::from_secs_f64(cli.drain_timeout),
        )
        .await;
        let mut saga_times: Vec<Histogram<u64>> = steps.iter().map(|_| new_histogram()).collect();
        for (step, _, id) in &placed {
            let status = states
                .get(id.as_str())
                .map(|s| {
                    if is_final(&s.status) {
                        if let Some(took) = s.server_side {
                            let _ = saga_times[*step].record(micros(took));
                        }
                        s.status.clone()
                    } else {
                        format!("UNFINISHED({})", s.status)
                    }
                })
                .unwrap_or_else(|| "NOT LISTED".into());
            *steps[*step].final_statuses.entry(status).or_default() += 1;
        }
        for (step, times) in steps.iter_mut().zip(&saga_times) {
            step.sagas = (!times.is_empty()).then(|| LatencySummary::from_histogram(times));
        }
        outcomes.max_rate_sagas_kept_up = sagas_kept_up(&steps, cli.p99_limit_ms);
        let held_steps: Vec<&StepResult> = steps.iter().filter(|s| s.held).collect();
        let unfinished: u64 = held_steps
            .iter()
            .flat_map(|s| s.final_statuses.iter())
            .filter(|(status, _)| !is_final(status))
            .map(|(_, n)| n)
            .sum();
        outcomes.checks.push(Check {
            name: "every saga of the held steps completes".into(),
            passed: !held_steps.is_empty() && unfinished == 0,
            detail: format!(
                "{unfinished} of {} orders of held steps not final after the drain{}",
                held_steps.iter().map(|s| s.placed).sum::<u64>(),
                match all_final {
                    Some(at) => format!(
                        "; every order was final {:.1} s after the last step ended",
                        at.duration_since(placement_ended).as_secs_f64()
                    ),
                    None => String::new(),
                }
            ),
        });
    } else {
        outcomes
            .notes
            .push("final statuses not checked (--drain-timeout 0)".into());
    }
    // Sustained means the sagas kept pace too, not only placement: with the
    // drain, a step counts when its sagas' p99 inside the system was within
    // the same limit as placement's.
    let sustained = if cli.drain_timeout > 0.0 {
        outcomes.max_rate_sagas_kept_up
    } else {
        max_rate_held
    };
    outcomes.checks.push(Check {
        name: "at least 500 orders/s sustained".into(),
        passed: sustained.is_some_and(|r| r >= 500.0),
        detail: format!(
            "highest rate held: {}; sagas kept up (p99 inside the system within {:.0} ms) to: {}",
            max_rate_held.map_or("none".into(), |r| format!("{r:.0}/s")),
            cli.p99_limit_ms,
            match (cli.drain_timeout > 0.0, outcomes.max_rate_sagas_kept_up) {
                (false, _) => "not checked (--drain-timeout 0)".into(),
                (true, Some(rate)) => format!("{rate:.0}/s"),
                (true, None) => "none".into(),
            }
        ),
    });
    outcomes.parameters.extend([
        ("first_rate_per_s".to_string(), json!(cli.rate())),
        ("step_per_s".to_string(), json!(cli.step)),
        ("max_rate_per_s".to_string(), json!(cli.max_rate)),
        (
            "step_duration_s".to_string(),
            json!(step_duration.as_secs_f64()),
        ),
        ("p99_limit_ms".to_string(), json!(cli.p99_limit_ms)),
        ("users".to_string(), json!(customers.len())),
    ]);
    outcomes.notes.push(
        "each step waits for its own requests to finish before the next starts; \
         a step holds when place_order p99 <= the limit and errors < 1%"
            .into(),
    );
    outcomes.steps = steps;
    Ok(outcomes)
}

/// The rate of the last step of the run's first stretch of steps that held
/// and whose sagas' p99 (inside the system) stayed within `limit_ms`.
pub fn sagas_kept_up(steps: &[StepResult], limit_ms: f64) -> Option<f64> {
    steps
        .iter()
        .take_while(|s| s.held && s.sagas.is_some_and(|t| t.p99_ms <= limit_ms))
        .last()
        .map(|s| s.target_rate)
}

/// Lists every customer's orders until all `placed` orders are final or
/// `limit` passes. Returns the last state seen of each order and, when all
/// were final, when that was seen (to within the one-second listing pace).
async fn drain(
    api: &Api,
    customers: &[Arc<Customer>],
    placed: &[(usize, usize, String)],
    limit: Duration,
) -> (HashMap<String, OrderState>, Option<Instant>) {
    const PAGE_SIZE: u32 = 100;
    let deadline = Instant::now() + limit;
    let mut statuses: HashMap<String, OrderState> = HashMap::new();
    let mut pending_users: Vec<usize> = {
        let mut users: Vec<usize> = placed.iter().map(|(_, who, _)| *who).collect();
        users.sort_unstable();
        users.dedup();
        users
    };
    loop {
        let mut tasks = JoinSet::new();
        for who in pending_users.iter().copied() {
            let (api, customer) = (api.clone(), customers[who].clone());
            tasks.spawn(async move {
                let mut seen: HashMap<String, OrderState> = HashMap::new();
                for page in 1.. {
                    match api.list_orders(&customer.user, page, PAGE_SIZE).await {
                        // A page with nothing new also ends the walk, should the server ignore `page`.
                        Ok(orders) if orders.iter().any(|o| !seen.contains_key(&o.id)) => {
                            seen.extend(orders.into_iter().map(|o| (o.id.clone(), o)));
                        }
                        _ => break,
                    }
                }
                (who, seen)
            });
        }
        let mut still_pending = Vec::new();
        while let Some(Ok((who, orders))) = tasks.join_next().await {
            let mut open = false;
            for (id, state) in orders {
                open |= !is_final(&state.status);
                statuses.insert(id, state);
            }
            if open {
                still_pending.push(who);
            }
        }
        let all_listed = placed.iter().all(|(_, _, id)| statuses.contains_key(id));
        if still_pending.is_empty() && all_listed {
            return (statuses, Some(Instant::now()));
        }
        if Instant::now() >= deadline {
            return (statuses, None);
        }
        pending_users = if all_listed {
            still_pending
        } else {
            pending_users
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, held: bool, saga_p99_ms: Option<f64>) -> StepResult {
        StepResult {
            target_rate: rate,
            duration_s: 10.0,
            placed: 10,
            errors: 0,
            achieved_rate: rate,
            p50_ms: 1.0,
            p99_ms: 2.0,
            max_ms: 3.0,
            held,
            final_statuses: BTreeMap::new(),
            sagas: saga_p99_ms.map(|p99_ms| LatencySummary {
                p99_ms,
                ..LatencySummary::default()
            }),
        }
    }

    #[test]
    fn sagas_keep_up_while_their_p99_is_within_the_limit() {
        let steps = [
            step(50.0, true, Some(200.0)),
            step(100.0, true, Some(900.0)),
            step(150.0, true, Some(4000.0)),
            step(200.0, true, Some(300.0)),
            step(250.0, false, Some(300.0)),
        ];
        assert_eq!(sagas_kept_up(&steps, 1000.0), Some(100.0));
        assert_eq!(sagas_kept_up(&steps, 100.0), None);
        assert_eq!(sagas_kept_up(&steps[..1], 1000.0), Some(50.0));
        assert_eq!(sagas_kept_up(&[step(50.0, true, None)], 1000.0), None);
        assert_eq!(sagas_kept_up(&[step(50.0, false, Some(1.0))], 1000.0), None);
    }

    #[test]
    fn held_means_fast_and_nearly_error_free() {
        assert!(step_held(900.0, 1000.0, 1000, 9));
        assert!(!step_held(1001.0, 1000.0, 1000, 0));
        assert!(!step_held(10.0, 1000.0, 1000, 10));
        assert!(!step_held(10.0, 1000.0, 0, 0));
    }
}

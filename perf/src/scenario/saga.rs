//! Orders at a fixed rate (open loop), each followed until DELIVERY_SCHEDULED
//! or another final status: the end-to-end time of the choreographed saga
//! (gateway, order service, outbox, relay, broker, payment, delivery, back).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;

use super::{Check, Customer, Outcomes, follow_saga, has_room, place_random_order, wait_all};
use crate::api::Api;
use crate::cli::Cli;
use crate::schedule::run_open_loop;

pub async fn run(api: &Api, cli: &Cli, customers: &[Arc<Customer>]) -> anyhow::Result<Outcomes> {
    eprintln!(
        "placing orders at {}/s for {:?}",
        cli.rate(),
        cli.duration()
    );

    let (poll, saga_timeout) = (
        cli.poll_interval(),
        Duration::from_secs_f64(cli.saga_timeout),
    );
    let mut tasks = JoinSet::new();
    let started = run_open_loop(cli.rate(), cli.duration(), |i, lag| {
        api.recorder().record_generator_lag(lag);
        if !has_room(&mut tasks, cli.max_in_flight) {
            api.record_skipped("place_order");
            return;
        }
        let customer = customers[i as usize % customers.len()].clone();
        let api = api.clone();
        let (top_up, cancel) = (cli.top_up_cents, cli.cancel_scheduled);
        tasks.spawn(async move {
            let Ok((placed, sent)) = place_random_order(&api, &customer, top_up).await else {
                return;
            };
            let end = follow_saga(&api, &customer, &placed.id, sent, poll, saga_timeout).await;
            if cancel && end.is_some_and(|order| order.status == "DELIVERY_SCHEDULED") {
                let _ = api.cancel_order(&customer.user, &placed.id).await;
            }
        });
    })
    .await;
    eprintln!("all {started} orders sent; waiting for their sagas");
    let abandoned = wait_all(&mut tasks, saga_timeout + cli.request_timeout() * 2).await;

    let snapshot = api.recorder().snapshot();
    let place = snapshot.kinds.iter().find(|k| k.kind == "place_order");
    let placed_ok = place.map_or(0, |k| k.ok);
    let saga = &snapshot.saga;
    let unfinished: u64 = saga
        .by_status
        .iter()
        .filter(|(status, _)| status.starts_with("UNFINISHED"))
        .map(|(_, s)| s.count)
        .sum::<u64>()
        + abandoned as u64;
    let mut outcomes = Outcomes {
        sagas_started: Some(placed_ok),
        ..Outcomes::default()
    };
    outcomes.parameters.extend([
        ("rate_per_s".to_string(), json!(cli.rate())),
        (
            "duration_s".to_string(),
            json!(cli.duration().as_secs_f64()),
        ),
        ("users".to_string(), json!(customers.len())),
        ("poll_interval_ms".to_string(), json!(cli.poll_interval_ms)),
        ("saga_timeout_s".to_string(), json!(cli.saga_timeout)),
        ("cancel_scheduled".to_string(), json!(cli.cancel_scheduled)),
    ]);
    outcomes.checks.push(Check {
        name: "every saga completes".into(),
        passed: started > 0 && placed_ok == started && unfinished == 0 && saga.finished == started,
        detail: format!(
            "{started} orders scheduled, {placed_ok} accepted, {} reached a final status, {unfinished} unfinished",
            saga.finished
        ),
    });
    outcomes.checks.push(Check {
        name: format!("saga p99 at most 250 ms (at {}/s)", cli.rate()),
        passed: saga.finished > 0 && saga.completion.p99_ms <= 250.0,
        detail: format!(
            "p99 {:.1} ms (poll interval {} ms)",
            saga.completion.p99_ms, cli.poll_interval_ms
        ),
    });
    if cli.cancel_scheduled {
        outcomes.notes.push(
            "each DELIVERY_SCHEDULED order was then cancelled (cancel_order) to free its delivery window; \
             the completion figures end at DELIVERY_SCHEDULED and do not include the cancellation"
                .into(),
        );
    }
    if abandoned > 0 {
        outcomes.notes.push(format!(
            "{abandoned} saga tasks were still running at the deadline and were aborted"
        ));
    }
    outcomes.notes.push(format!(
        "completion is measured from sending POST /api/orders to receiving the first GET /api/orders/{{id}} \
         that shows a final status; polls are {} ms apart (or a tenth of the time waited, if longer), \
         so figures overstate the true time by up to one poll interval; the server-side row \
         (updated_at - created_at of the final order) does not",
        cli.poll_interval_ms
    ));
    Ok(outcomes)
}

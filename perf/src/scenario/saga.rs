//! Orders at a fixed rate (open loop), each followed until DELIVERY_SCHEDULED
//! or another final status: the end-to-end time of the choreographed saga
//! (gateway, order service, outbox, relay, broker, payment, delivery, back).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;

use super::{
    Check, Customer, Follow, Outcomes, follow_saga, has_room, place_random_order, wait_all,
};
use crate::api::Api;
use crate::cli::{Cli, WaitUntil};
use crate::schedule::run_open_loop;

pub async fn run(api: &Api, cli: &Cli, customers: &[Arc<Customer>]) -> anyhow::Result<Outcomes> {
    eprintln!(
        "placing orders at {}/s for {:?}",
        cli.rate(),
        cli.duration()
    );

    let saga_timeout = Duration::from_secs_f64(cli.saga_timeout);
    let follow = match cli.wait_s {
        0 => Follow::Poll(cli.poll_interval()),
        seconds => Follow::Wait {
            seconds,
            until: cli.wait_until,
            interval: cli.poll_interval(),
        },
    };
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
            let end = follow_saga(&api, &customer, &placed.id, sent, follow, saga_timeout).await;
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
        ("wait_s".to_string(), json!(cli.wait_s)),
        ("wait_until".to_string(), json!(cli.wait_until.as_str())),
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
        detail: format!("p99 {:.1} ms ({})", saga.completion.p99_ms, how(cli)),
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
    let resolution = if cli.wait_s > 0 {
        format!(
            "each GET carries `Prefer: wait={}` and `until={}`, so the order service answers as soon \
             as the order {} and the figures are exact to the network hop (reads that were held are \
             `wait_order`; had the server not honoured the wait, polls would have been {} ms apart)",
            cli.wait_s,
            cli.wait_until.as_str(),
            match cli.wait_until {
                WaitUntil::Settled => "is settled",
                WaitUntil::Change => "changes",
            },
            cli.poll_interval_ms
        )
    } else {
        format!(
            "polls are {} ms apart (or a tenth of the time waited, if longer), so figures \
             overstate the true time by up to one poll interval",
            cli.poll_interval_ms
        )
    };
    outcomes.notes.push(format!(
        "completion is measured from sending POST /api/orders to receiving the first GET /api/orders/{{id}} \
         that shows a final status; {resolution}; the server-side row \
         (updated_at - created_at of the final order) is the time inside the system"
    ));
    Ok(outcomes)
}

fn how(cli: &Cli) -> String {
    match cli.wait_s {
        0 => format!("poll interval {} ms", cli.poll_interval_ms),
        seconds => format!("Prefer: wait={seconds}"),
    }
}

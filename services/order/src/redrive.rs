//! Sagas heal themselves: an order that has not moved for a while has its
//! requests written to the outbox again, under the event ids they were
//! first announced with (docs/saga.md, "What heals what").
//!
//! - PENDING, or PAID and waiting for delivery or a refund: `OrderCreated`
//!   again. The payment service either handles it for the first time (it
//!   was lost) or, having handled it, announces its answer again under the
//!   answer's first id (`EventHandler::repeated`). That answer is in turn
//!   the request of the next step: delivery books, or announces its booking
//!   again; a failed booking's refund is announced again by payment. So one
//!   repeated request walks the whole saga again, and every service
//!   publishes only its own events.
//! - A cancellation under way: `OrderCancellationRequested` again (payment
//!   refunds or announces its refund again, delivery likewise).
//!
//! Whoever already has an event skips it (inboxes and facts keep event ids
//! and facts once), so a re-drive of a saga that was only slow changes
//! nothing. Re-drives back off (`after`, then twice as long each time up to
//! `max_backoff`); after `max_attempts` the order is *stuck*: logged, counted
//! (`sagas_stuck`), listed by `GET /admin/sagas/stuck`, and re-driven again
//! when an operator asks (`POST /admin/sagas/{id}/redrive`).

use chrono::Utc;
use commerce_common::{
    db::DbPool,
    events::{self, Event},
    outbox,
};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::RedriveConfig,
    domain::{DeliveryState, OrderStatus, PaymentState},
    metrics::OrderMetrics,
    store::{
        CUSTOMER_CANCELLED, ItemRow,
        redrive::{self, InFlight},
    },
};

/// Orders re-driven per scan, at most: an overloaded stack (a backlog
/// older than `redrive.after`, every order "not moving") gets at most this
/// many re-drives per scan interval (20/s with the defaults), not a storm of
/// repeated requests on top of its backlog; each order then backs off.
const BATCH: i64 = 100;

/// The step of the saga an in-flight order waits on (the `step` label of
/// `saga_redrives`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// PENDING: the charge.
    Payment,
    /// PAID: the booking.
    Delivery,
    /// PAID, the booking failed: the refund.
    Refund,
    /// A cancellation under way: refund and release.
    Cancellation,
}

impl Step {
    pub fn of(order: &InFlight) -> Step {
        let row = &order.order;
        if row.cancellation_requested_at.is_some() {
            return Step::Cancellation;
        }
        if row.status == OrderStatus::Pending.as_str() {
            return Step::Payment;
        }
        let failed = row.facts.delivery_status.as_deref() == Some(DeliveryState::Failed.as_str());
        let refunded = row.facts.payment_status.as_deref() == Some(PaymentState::Refunded.as_str());
        if failed || refunded {
            Step::Refund
        } else {
            Step::Delivery
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Payment => "payment",
            Step::Delivery => "delivery",
            Step::Refund => "refund",
            Step::Cancellation => "cancellation",
        }
    }
}

/// Re-drives due orders until `shutdown`.
pub async fn run(
    pool: DbPool,
    config: RedriveConfig,
    metrics: OrderMetrics,
    shutdown: CancellationToken,
) {
    let schedule = config.schedule();
    loop {
        if let Err(error) = redrive_due(&pool, schedule, &metrics).await {
            tracing::warn!(error = %format!("{error:#}"), "re-driving sagas failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.scan_interval()) => {}
        }
    }
}

/// One batch: claims due orders and writes their requests again, in one
/// transaction. Answers how many orders were re-driven.
pub async fn redrive_due(
    pool: &DbPool,
    schedule: redrive::Schedule,
    metrics: &OrderMetrics,
) -> anyhow::Result<usize> {
    let mut conn = pool.get().await?;
    let trace_id = Uuid::now_v7().simple().to_string();
    let redriven = conn
        .transaction::<_, anyhow::Error, _>(async |conn| {
            let due = redrive::claim_due(conn, schedule, Utc::now(), BATCH).await?;
            if due.is_empty() {
                return Ok(due);
            }
            let ids: Vec<Uuid> = due.iter().map(|order| order.order.id).collect();
            let lines = redrive::lines(conn, &ids).await?;
            for order in &due {
                write_requests(conn, order, &lines, &trace_id).await?;
            }
            Ok(due)
        })
        .await?;
    for order in &redriven {
        let step = Step::of(order);
        metrics.redriven(step);
        let attempt = order.redrive_attempts;
        if attempt >= schedule.max_attempts {
            tracing::error!(order_id = %order.order.id, status = %order.order.status,
                step = step.as_str(), attempt, %trace_id,
                "saga re-driven for the last time; it is stuck if this does not move it \
                 (GET /admin/sagas/stuck)");
        } else {
            tracing::warn!(order_id = %order.order.id, status = %order.order.status,
                step = step.as_str(), attempt, %trace_id, "saga did not move; re-driven");
        }
    }
    Ok(redriven.len())
}

/// The order's requests for its step, under their first event ids (a new
/// id for orders from before the ids were kept).
async fn write_requests(
    conn: &mut AsyncPgConnection,
    order: &InFlight,
    lines: &[ItemRow],
    trace_id: &str,
) -> diesel::QueryResult<()> {
    let row = &order.order;
    let (event, first_id) = if Step::of(order) == Step::Cancellation {
        let event = Event::OrderCancellationRequested(events::OrderCancellationRequested {
            order_id: row.id,
            customer_id: row.customer_id,
            reason: CUSTOMER_CANCELLED.to_owned(),
        });
        (event, order.cancellation_event_id)
    } else {
        (order_created(order, lines), order.placed_event_id)
    };
    outbox::enqueue_again(conn, &event, first_id, trace_id)
        .await
        .map(drop)
}

fn order_created(order: &InFlight, lines: &[ItemRow]) -> Event {
    let row = &order.order;
    Event::OrderCreated(events::OrderCreated {
        order_id: row.id,
        customer_id: row.customer_id,
        items: lines
            .iter()
            .filter(|line| line.order_id == row.id)
            .map(|line| events::OrderLine {
                sku: line.sku.clone(),
                quantity: line.quantity,
                unit_price_cents: line.unit_price_cents,
            })
            .collect(),
        total_cents: row.total_cents,
        shipping_address: row.shipping_address(),
    })
}

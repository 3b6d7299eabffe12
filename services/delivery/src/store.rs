//! Where windows are booked and released: each change with its outbox
//! event in the caller's transaction. Everything about one order runs under
//! a transaction-scoped advisory lock on the order id, so a booking and a
//! cancellation of the same order (arriving on different topics) never
//! interleave.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::{AtomicI64, Ordering},
};

use chrono::{DateTime, Utc};
use commerce_common::{
    consumer::ParticipantAnswer,
    db::Reuse,
    events::{
        DeliveryCancelled, DeliveryFailed, DeliveryScheduled, Event, OrderCancellationRequested,
        PaymentConfirmed,
    },
    outbox,
};
use diesel::{
    dsl::now,
    prelude::*,
    sql_types::{Array, BigInt, Int4, Timestamptz},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::{
    domain::{DeliveryStatus, Reason, TrackingNumber, WindowPlan},
    schema::{deliveries, delivery_windows},
};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = deliveries)]
pub struct Delivery {
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub status: String,
    pub window_id: Option<i64>,
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
    pub tracking_number: Option<String>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub outcome_event_id: Option<Uuid>,
    pub cancel_event_id: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookingOutcome {
    Scheduled,
    NoCapacity,
    /// The customer's bookings of the day reached the quota.
    DailyLimit,
    /// The order already has a delivery (handled, or cancelled first).
    AlreadyHandled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// A booked window was given back.
    Released,
    /// Nothing was booked yet: remembered, a later booking does nothing.
    Remembered,
    /// Failed or cancelled already.
    NothingToDo,
}

#[derive(QueryableByName)]
struct BookedWindow {
    #[diesel(sql_type = Timestamptz)]
    starts_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    ends_at: DateTime<Utc>,
}

/// Serializes all work on these orders within this database. The keys are
/// taken in ascending order (`unnest` keeps the array's), so two
/// transactions locking several orders never wait for each other in a
/// cycle; one statement whatever their number.
async fn lock_orders(
    conn: &mut AsyncPgConnection,
    order_ids: impl IntoIterator<Item = Uuid>,
) -> QueryResult<()> {
    let mut keys: Vec<i64> = order_ids
        .into_iter()
        .map(|id| i64::from_be_bytes(id.as_bytes()[..8].try_into().expect("8 bytes")))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    diesel::sql_query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS k")
        .bind::<Array<BigInt>, _>(keys)
        .prepared()
        .execute(conn)
        .await?;
    Ok(())
}

/// How far ahead the delivery windows are known to exist, so that a
/// booking does not insert the whole plan again every time. Set only when an
/// insert found every window of a plan already there (committed: the
/// conflict check waits for concurrent inserters), so a rolled-back
/// transaction never leaves it claiming windows that do not exist. Windows
/// are never deleted.
#[derive(Debug, Default)]
pub struct KnownWindows(AtomicI64);

/// Creates the plan's windows that do not exist yet, unless they are known
/// to exist.
async fn ensure_windows(
    conn: &mut AsyncPgConnection,
    plan: &WindowPlan,
    capacity: i32,
    known: &KnownWindows,
) -> QueryResult<()> {
    let until = plan.until.timestamp_millis();
    if AtomicI64::load(&known.0, Ordering::Relaxed) >= until {
        return Ok(());
    }
    let starts: Vec<DateTime<Utc>> = plan.windows.iter().map(|w| w.starts_at).collect();
    let ends: Vec<DateTime<Utc>> = plan.windows.iter().map(|w| w.ends_at).collect();
    let inserted = diesel::sql_query(
        "INSERT INTO delivery_windows (starts_at, ends_at, capacity) \
         SELECT s, e, $3 FROM unnest($1::timestamptz[], $2::timestamptz[]) AS w(s, e) \
         ON CONFLICT (starts_at) DO NOTHING",
    )
    .bind::<Array<Timestamptz>, _>(starts)
    .bind::<Array<Timestamptz>, _>(ends)
    .bind::<Int4, _>(capacity)
    .execute(conn)
    .await?;
    if inserted == 0 {
        known.0.fetch_max(until, Ordering::Relaxed);
    }
    Ok(())
}

/// What booking one paid order did: the outcome, and the answer to
/// announce with the id it goes out under (none for an order handled
/// before: the caller announces the answer given then again).
#[derive(Debug)]
pub struct Booked {
    pub outcome: BookingOutcome,
    pub answer: Option<(Event, Uuid)>,
}

/// Books, for each paid order in turn, the earliest window with free
/// capacity in the plan's range: DeliveryScheduled, or
/// DeliveryFailed{NO_CAPACITY}, or DeliveryFailed{DAILY_LIMIT} when the
/// customer booked `bookings_per_day` windows today already; an order that
/// has a delivery (or comes twice) is `AlreadyHandled`. The orders are
/// locked and what they and their customers have read in one statement
/// each whatever their number; each booking is one statement. The caller
/// writes the answers to the outbox.
pub async fn book_all(
    conn: &mut AsyncPgConnection,
    paid: &[&PaymentConfirmed],
    plan: &WindowPlan,
    capacity: i32,
    bookings_per_day: u32,
    known: &KnownWindows,
) -> QueryResult<Vec<Booked>> {
    lock_orders(conn, paid.iter().map(|p| p.order_id)).await?;
    let (mut handled, mut bookings) = deliveries_and_bookings(conn, paid).await?;
    ensure_windows(conn, plan, capacity, known).await?;
    let mut booked = Vec::with_capacity(paid.len());
    for &paid in paid {
        if !handled.insert(paid.order_id) {
            tracing::info!(order_id = %paid.order_id, "delivery exists, nothing booked");
            booked.push(Booked {
                outcome: BookingOutcome::AlreadyHandled,
                answer: None,
            });
            continue;
        }
        let booked_today = bookings.entry(paid.customer_id).or_default();
        let outcome_event_id = Uuid::now_v7();
        let (outcome, event) = if *booked_today >= i64::from(bookings_per_day) {
            tracing::info!(order_id = %paid.order_id, customer_id = %paid.customer_id, bookings_per_day, "daily booking limit reached");
            let event = record_failure(conn, paid, outcome_event_id, Reason::DailyLimit).await?;
            (BookingOutcome::DailyLimit, event)
        } else if let Some(event) = book_window(conn, paid, plan, outcome_event_id).await? {
            *booked_today += 1;
            (BookingOutcome::Scheduled, event)
        } else {
            tracing::info!(order_id = %paid.order_id, "no delivery window left");
            let event = record_failure(conn, paid, outcome_event_id, Reason::NoCapacity).await?;
            (BookingOutcome::NoCapacity, event)
        };
        booked.push(Booked {
            outcome,
            answer: Some((event, outcome_event_id)),
        });
    }
    Ok(booked)
}

/// Books the earliest window with free capacity in the plan's range for a
/// paid order, its delivery row inserted by the same statement (a
/// data-modifying WITH): its DeliveryScheduled, announced under
/// `outcome_event_id`; `None` when no window is free (nothing booked).
/// The row lock makes concurrent bookings queue; one that finds the window
/// full after waiting moves on to the next (and the CHECK constraint would
/// refuse an overbooking anyway).
async fn book_window(
    conn: &mut AsyncPgConnection,
    paid: &PaymentConfirmed,
    plan: &WindowPlan,
    outcome_event_id: Uuid,
) -> QueryResult<Option<Event>> {
    let delivery_id = Uuid::now_v7();
    let tracking = TrackingNumber::generate();
    let window: Option<BookedWindow> = diesel::sql_query(
        "WITH booked AS ( \
             UPDATE delivery_windows SET booked = booked + 1 \
             WHERE id = (SELECT id FROM delivery_windows \
                         WHERE starts_at >= $1 AND starts_at < $2 AND booked < capacity \
                         ORDER BY starts_at LIMIT 1 FOR UPDATE) \
             RETURNING id, starts_at, ends_at) \
         INSERT INTO deliveries (id, order_id, customer_id, status, window_id, \
                                 window_start, window_end, tracking_number, outcome_event_id) \
         SELECT $3, $4, $5, $6, id, starts_at, ends_at, $7, $8 FROM booked \
         RETURNING window_start AS starts_at, window_end AS ends_at",
    )
    .bind::<Timestamptz, _>(plan.from)
    .bind::<Timestamptz, _>(plan.until)
    .bind::<diesel::sql_types::Uuid, _>(delivery_id)
    .bind::<diesel::sql_types::Uuid, _>(paid.order_id)
    .bind::<diesel::sql_types::Uuid, _>(paid.customer_id)
    .bind::<diesel::sql_types::Text, _>(DeliveryStatus::Scheduled.as_str())
    .bind::<diesel::sql_types::Text, _>(tracking.as_str())
    .bind::<diesel::sql_types::Uuid, _>(outcome_event_id)
    .prepared()
    .get_result(conn)
    .await
    .optional()?;
    Ok(window.map(|window| {
        tracing::info!(order_id = %paid.order_id, window_start = %window.starts_at, "delivery scheduled");
        Event::DeliveryScheduled(DeliveryScheduled {
            delivery_id,
            order_id: paid.order_id,
            customer_id: paid.customer_id,
            window_start: window.starts_at,
            window_end: window.ends_at,
            tracking_number: tracking.as_str().into(),
        })
    }))
}

#[derive(QueryableByName)]
struct Known {
    /// `true`: `id` is an order with a delivery; `false`: `id` is a
    /// customer, who booked `bookings` windows today.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    delivery: bool,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = BigInt)]
    bookings: i64,
}

/// Which of the paid orders have a delivery already, and the windows each
/// of their customers booked since the start of the UTC day, whether still
/// booked or cancelled since (failed and cancelled-before-booking
/// deliveries booked nothing); one statement. Race-free because the
/// delivery consumer applies one fetch at a time
/// (`Concurrency::Serialized`) and the orders are locked: no other booking
/// commits between this read and the caller's inserts.
async fn deliveries_and_bookings(
    conn: &mut AsyncPgConnection,
    paid: &[&PaymentConfirmed],
) -> QueryResult<(HashSet<Uuid>, HashMap<Uuid, i64>)> {
    let day_start = Utc::now()
        .date_naive()
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    let known: Vec<Known> = diesel::sql_query(
        "SELECT true AS delivery, order_id AS id, 0::int8 AS bookings \
         FROM deliveries WHERE order_id = ANY($1) \
         UNION ALL \
         SELECT false, customer_id, count(*) FROM deliveries \
         WHERE customer_id = ANY($2) AND created_at >= $3 AND window_id IS NOT NULL \
         GROUP BY customer_id",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(paid.iter().map(|p| p.order_id).collect::<Vec<_>>())
    .bind::<Array<diesel::sql_types::Uuid>, _>(
        paid.iter().map(|p| p.customer_id).collect::<Vec<_>>(),
    )
    .bind::<Timestamptz, _>(day_start)
    .prepared()
    .load(conn)
    .await?;
    let (deliveries, customers): (Vec<Known>, Vec<Known>) =
        known.into_iter().partition(|k| k.delivery);
    Ok((
        deliveries.into_iter().map(|k| k.id).collect(),
        customers.into_iter().map(|k| (k.id, k.bookings)).collect(),
    ))
}

/// Records that the order gets no delivery, for `reason`, with the id its
/// `DeliveryFailed` is announced under (and announced again under, see
/// the `ParticipantAnswer` impl of [`Answer`]); returns that event.
async fn record_failure(
    conn: &mut AsyncPgConnection,
    paid: &PaymentConfirmed,
    outcome_event_id: Uuid,
    reason: Reason,
) -> QueryResult<Event> {
    diesel::insert_into(deliveries::table)
        .values((
            deliveries::id.eq(Uuid::now_v7()),
            deliveries::order_id.eq(paid.order_id),
            deliveries::customer_id.eq(paid.customer_id),
            deliveries::status.eq(DeliveryStatus::Failed.as_str()),
            deliveries::reason.eq(reason.as_str()),
            deliveries::outcome_event_id.eq(outcome_event_id),
        ))
        .execute(conn)
        .await?;
    Ok(Event::DeliveryFailed(DeliveryFailed {
        order_id: paid.order_id,
        customer_id: paid.customer_id,
        reason: reason.as_str().into(),
    }))
}

/// The customer cancelled: release the booked window (DeliveryCancelled),
/// or remember the cancellation when nothing is booked yet.
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    request: &OrderCancellationRequested,
    trace_id: &str,
) -> QueryResult<CancelOutcome> {
    lock_orders(conn, [request.order_id]).await?;
    let cancel_event_id = Uuid::now_v7();
    let released: Option<Delivery> = diesel::update(
        deliveries::table
            .filter(deliveries::order_id.eq(request.order_id))
            .filter(deliveries::status.eq(DeliveryStatus::Scheduled.as_str())),
    )
    .set((
        deliveries::status.eq(DeliveryStatus::Cancelled.as_str()),
        deliveries::reason.eq(Reason::CustomerCancelled.as_str()),
        deliveries::cancelled_at.eq(now),
        deliveries::updated_at.eq(now),
        deliveries::cancel_event_id.eq(cancel_event_id),
    ))
    .returning(Delivery::as_returning())
    .prepared()
    .get_result(conn)
    .await
    .optional()?;
    if let Some(delivery) = released {
        if let Some(window_id) = delivery.window_id {
            diesel::update(delivery_windows::table.find(window_id))
                .set(delivery_windows::booked.eq(delivery_windows::booked - 1))
                .prepared()
                .execute(conn)
                .await?;
        }
        let event = Event::DeliveryCancelled(DeliveryCancelled {
            delivery_id: delivery.id,
            order_id: delivery.order_id,
            customer_id: delivery.customer_id,
        });
        outbox::insert(
            conn,
            &outbox::NewRow::new(&event, trace_id).with_id(cancel_event_id),
        )
        .await?;
        tracing::info!(order_id = %request.order_id, "delivery cancelled, window released");
        return Ok(CancelOutcome::Released);
    }
    let remembered = diesel::insert_into(deliveries::table)
        .values((
            deliveries::id.eq(Uuid::now_v7()),
            deliveries::order_id.eq(request.order_id),
            deliveries::customer_id.eq(request.customer_id),
            deliveries::status.eq(DeliveryStatus::Cancelled.as_str()),
            deliveries::reason.eq(Reason::CustomerCancelled.as_str()),
            deliveries::cancelled_at.eq(now),
        ))
        .on_conflict(deliveries::order_id)
        .do_nothing()
        .execute(conn)
        .await?;
    if remembered > 0 {
        tracing::info!(order_id = %request.order_id, "cancelled before booking: remembered");
        Ok(CancelOutcome::Remembered)
    } else {
        Ok(CancelOutcome::NothingToDo)
    }
}

/// Which of its answers about an order the delivery service announces again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// To `PaymentConfirmed`: `DeliveryScheduled` (also for a booking
    /// released since) or `DeliveryFailed`.
    Booking,
    /// To `OrderCancellationRequested`: `DeliveryCancelled`, if a booked
    /// window was released.
    Release,
}

impl ParticipantAnswer for Answer {
    type Record = Delivery;

    fn record(
        conn: &mut AsyncPgConnection,
        order_id: Uuid,
    ) -> impl Future<Output = QueryResult<Option<Delivery>>> + Send {
        by_order(conn, order_id)
    }

    fn given(self, delivery: &Delivery) -> Option<(Event, Option<Uuid>)> {
        let status = delivery.status.as_str();
        let booked = (
            delivery.window_start,
            delivery.window_end,
            &delivery.tracking_number,
        );
        let (event, event_id) = match (self, booked) {
            // Booked once (scheduled, or released since).
            (Answer::Booking, (Some(window_start), Some(window_end), Some(tracking)))
                if status != DeliveryStatus::Failed.as_str() =>
            {
                let event = Event::DeliveryScheduled(DeliveryScheduled {
                    delivery_id: delivery.id,
                    order_id: delivery.order_id,
                    customer_id: delivery.customer_id,
                    window_start,
                    window_end,
                    tracking_number: tracking.clone(),
                });
                (event, delivery.outcome_event_id)
            }
            (Answer::Booking, _) if status == DeliveryStatus::Failed.as_str() => {
                let event = Event::DeliveryFailed(DeliveryFailed {
                    order_id: delivery.order_id,
                    customer_id: delivery.customer_id,
                    reason: delivery.reason.clone().unwrap_or_default(),
                });
                (event, delivery.outcome_event_id)
            }
            (Answer::Release, (Some(_), _, _)) if status == DeliveryStatus::Cancelled.as_str() => {
                let event = Event::DeliveryCancelled(DeliveryCancelled {
                    delivery_id: delivery.id,
                    order_id: delivery.order_id,
                    customer_id: delivery.customer_id,
                });
                (event, delivery.cancel_event_id)
            }
            // Cancelled before anything was booked: nothing was announced.
            _ => return None,
        };
        Some((event, event_id))
    }
}

commerce_common::order_records!(deliveries, Delivery, one: delivery, page: list_deliveries);

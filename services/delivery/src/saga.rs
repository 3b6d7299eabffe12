//! The delivery side of the saga: where a paid order gets its window
//! (PaymentConfirmed) and where a cancelled order gives it back
//! (OrderCancellationRequested). Runs inside the consumer runtime's
//! transaction.

use commerce_common::{
    consumer::{HandleError, Participant, ParticipantMetrics},
    events::{Envelope, Event, PaymentConfirmed},
    outbox,
};
use diesel_async::AsyncPgConnection;

use crate::{
    config::{QuotasConfig, WindowsConfig},
    domain::WindowPlan,
    store::{self, Answer, BookingOutcome, CancelOutcome, KnownWindows},
};

pub struct DeliverySaga {
    windows: WindowsConfig,
    quotas: QuotasConfig,
    metrics: ParticipantMetrics,
    known: KnownWindows,
}

impl DeliverySaga {
    pub fn new(windows: WindowsConfig, quotas: QuotasConfig, metrics: ParticipantMetrics) -> Self {
        Self {
            windows,
            quotas,
            metrics,
            known: KnownWindows::default(),
        }
    }
}

impl Participant for DeliverySaga {
    type Answer = Answer;

    fn request(event: &Event) -> Option<(uuid::Uuid, Answer)> {
        match event {
            Event::PaymentConfirmed(paid) => Some((paid.order_id, Answer::Booking)),
            Event::OrderCancellationRequested(cancel) => Some((cancel.order_id, Answer::Release)),
            _ => None,
        }
    }

    fn metrics(&self) -> &ParticipantMetrics {
        &self.metrics
    }

    async fn decide(
        &self,
        conn: &mut AsyncPgConnection,
        event: Event,
        trace_id: &str,
    ) -> Result<(), HandleError> {
        match event {
            Event::PaymentConfirmed(paid) => self.book(conn, &[(&paid, trace_id)]).await?,
            Event::OrderCancellationRequested(request) => {
                match store::cancel(conn, &request, trace_id).await? {
                    CancelOutcome::Released => self.metrics.outcome("cancelled"),
                    CancelOutcome::Remembered => self.metrics.outcome("cancelled_before_booking"),
                    CancelOutcome::NothingToDo => {
                        self.answer_again(conn, request.order_id, Answer::Release, trace_id)
                            .await?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A fetch of bookings (the payments topic's requests) is booked
    /// together ([`store::book_all`]): a handful of statements for the
    /// whole fetch instead of a handful per order. Anything else is
    /// decided one by one.
    async fn decide_all(
        &self,
        conn: &mut AsyncPgConnection,
        records: Vec<(&Envelope, Event)>,
    ) -> Result<(), HandleError> {
        let bookings: Vec<(&PaymentConfirmed, &str)> = records
            .iter()
            .filter_map(|(envelope, event)| match event {
                Event::PaymentConfirmed(paid) => Some((paid, envelope.trace_id.as_str())),
                _ => None,
            })
            .collect();
        if bookings.len() == records.len() {
            return self.book(conn, &bookings).await;
        }
        for (envelope, event) in records {
            self.decide(conn, event, &envelope.trace_id).await?;
        }
        Ok(())
    }
}

impl DeliverySaga {
    /// Books a window for each paid order, in order, and announces the
    /// answers in one outbox statement; an order booked (or failed)
    /// before, under another event id, gets the answer given then, again.
    async fn book(
        &self,
        conn: &mut AsyncPgConnection,
        requests: &[(&PaymentConfirmed, &str)],
    ) -> Result<(), HandleError> {
        let plan = WindowPlan::for_day(chrono::Utc::now().date_naive(), &self.windows);
        let paid: Vec<&PaymentConfirmed> = requests.iter().map(|&(paid, _)| paid).collect();
        let booked = store::book_all(
            conn,
            &paid,
            &plan,
            self.windows.capacity,
            self.quotas.bookings_per_customer_per_day,
            &self.known,
        )
        .await?;
        let mut answers = Vec::with_capacity(booked.len());
        let mut again = Vec::new();
        for (&(paid, trace_id), booked) in requests.iter().zip(&booked) {
            self.metrics.outcome(match booked.outcome {
                BookingOutcome::Scheduled => "scheduled",
                BookingOutcome::NoCapacity => "no_capacity",
                BookingOutcome::DailyLimit => "daily_limit",
                BookingOutcome::AlreadyHandled => {
                    again.push((paid.order_id, trace_id));
                    continue;
                }
            });
            if let Some((event, id)) = &booked.answer {
                answers.push(outbox::NewRow::new(event, trace_id).with_id(*id));
            }
        }
        outbox::insert_rows(conn, &answers).await?;
        // After the answers of this fetch: one of them may be what an order
        // that came twice in it is answered with again.
        for (order_id, trace_id) in again {
            self.answer_again(conn, order_id, Answer::Booking, trace_id)
                .await?;
        }
        Ok(())
    }
}

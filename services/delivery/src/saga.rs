//! The delivery side of the saga: where a paid order gets its window
//! (PaymentConfirmed) and where a cancelled order gives it back
//! (OrderCancellationRequested). Runs inside the consumer runtime's
//! transaction.

use commerce_common::{
    consumer::{HandleError, Participant, ParticipantMetrics},
    events::Event,
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
            Event::PaymentConfirmed(paid) => {
                let plan = WindowPlan::for_day(chrono::Utc::now().date_naive(), &self.windows);
                match store::book(
                    conn,
                    &paid,
                    &plan,
                    self.windows.capacity,
                    self.quotas.bookings_per_customer_per_day,
                    &self.known,
                    trace_id,
                )
                .await?
                {
                    BookingOutcome::Scheduled => self.metrics.outcome("scheduled"),
                    BookingOutcome::NoCapacity => self.metrics.outcome("no_capacity"),
                    BookingOutcome::DailyLimit => self.metrics.outcome("daily_limit"),
                    // Booked (or failed) before, under another event id:
                    // the answer given then, again.
                    BookingOutcome::AlreadyHandled => {
                        self.answer_again(conn, paid.order_id, Answer::Booking, trace_id)
                            .await?;
                    }
                }
            }
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
}

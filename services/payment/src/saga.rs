//! The payment side of the saga: where an order is charged (OrderCreated)
//! and where money goes back (DeliveryFailed, OrderCancellationRequested).
//! Runs inside the consumer runtime's transaction.

use commerce_common::{
    consumer::{HandleError, Participant, ParticipantMetrics},
    events::{self, Envelope, Event, OrderCreated},
};
use diesel_async::AsyncPgConnection;

use crate::{
    config::WalletConfig,
    domain::{ChargeAmount, RefundReason},
    store::{self, Answer, ChargeOutcome, ChargeRequest},
};

/// What a refund request says about the charge before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charge {
    /// It was made: delivery is only asked for after this service confirmed
    /// the payment, so a payment row that cannot be read is one whose commit
    /// is not visible yet (see [`events::NOT_YET_VISIBLE_WINDOW`]).
    Made,
    /// It may never have been made (a cancellation can come first).
    MaybeNot,
}

pub struct PaymentSaga {
    wallet: WalletConfig,
    metrics: ParticipantMetrics,
}

impl PaymentSaga {
    pub fn new(wallet: WalletConfig, metrics: ParticipantMetrics) -> Self {
        Self { wallet, metrics }
    }

    async fn refund(
        &self,
        conn: &mut AsyncPgConnection,
        order_id: uuid::Uuid,
        reason: RefundReason,
        charge: Charge,
        trace_id: &str,
    ) -> Result<(), HandleError> {
        if store::refund(conn, order_id, reason, trace_id).await? {
            self.metrics.outcome("refunded");
        } else {
            if charge == Charge::Made
                && events::made_recently(order_id)
                && !store::has_payment(conn, order_id).await?
            {
                return Err(HandleError::Transient(anyhow::anyhow!(
                    "the charge of order {order_id} is not visible yet (its commit is being \
                     completed); the refund is tried again after a pause"
                )));
            }
            // Refunded before (or never charged: then nothing is said).
            self.answer_again(conn, order_id, Answer::Refund, trace_id)
                .await?;
        }
        Ok(())
    }
}

impl PaymentSaga {
    /// Charges the orders, in order ([`store::charge_all`]); an order
    /// charged before, under another event id (re-driven from before the
    /// ids were kept, or after the inbox forgot), gets the answer given
    /// then, again.
    async fn charge(
        &self,
        conn: &mut AsyncPgConnection,
        orders: &[(&OrderCreated, &str)],
    ) -> Result<(), HandleError> {
        if orders.is_empty() {
            return Ok(());
        }
        let requests = orders
            .iter()
            .map(|&(order, trace_id)| {
                let amount =
                    ChargeAmount::parse(order.total_cents).map_err(HandleError::Permanent)?;
                Ok(ChargeRequest {
                    order,
                    amount,
                    trace_id,
                })
            })
            .collect::<Result<Vec<_>, HandleError>>()?;
        let outcomes = store::charge_all(conn, &requests, self.wallet.initial_credit_cents).await?;
        for (request, outcome) in requests.iter().zip(outcomes) {
            match outcome {
                ChargeOutcome::Confirmed => self.metrics.outcome("confirmed"),
                ChargeOutcome::Failed => self.metrics.outcome("failed"),
                ChargeOutcome::AlreadyCharged => {
                    self.answer_again(
                        conn,
                        request.order.order_id,
                        Answer::Charge,
                        request.trace_id,
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

impl Participant for PaymentSaga {
    type Answer = Answer;

    fn request(event: &Event) -> Option<(uuid::Uuid, Answer)> {
        match event {
            Event::OrderCreated(order) => Some((order.order_id, Answer::Charge)),
            Event::DeliveryFailed(failed) => Some((failed.order_id, Answer::Refund)),
            Event::OrderCancellationRequested(cancel) => Some((cancel.order_id, Answer::Refund)),
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
            Event::UserRegistered(user) => {
                store::open_wallet(conn, user.user_id, self.wallet.initial_credit_cents).await?;
            }
            Event::OrderCreated(order) => self.charge(conn, &[(&order, trace_id)]).await?,
            Event::DeliveryFailed(failed) => {
                let reason = RefundReason::delivery_failed(&failed.reason);
                self.refund(conn, failed.order_id, reason, Charge::Made, trace_id)
                    .await?;
            }
            Event::OrderCancellationRequested(cancel) => {
                self.refund(
                    conn,
                    cancel.order_id,
                    RefundReason::CustomerCancelled,
                    Charge::MaybeNot,
                    trace_id,
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The orders of a fetch (the orders topic's charge requests) are
    /// charged together, each run of them between other requests
    /// ([`store::charge_all`]): two statements for the run instead of two
    /// per order. Anything else is decided one by one, in order.
    async fn decide_all(
        &self,
        conn: &mut AsyncPgConnection,
        records: Vec<(&Envelope, Event)>,
    ) -> Result<(), HandleError> {
        let mut run: Vec<(&OrderCreated, &str)> = Vec::new();
        for (envelope, event) in &records {
            if let Event::OrderCreated(order) = event {
                run.push((order, &envelope.trace_id));
                continue;
            }
            self.charge(conn, &run).await?;
            run.clear();
            self.decide(conn, event.clone(), &envelope.trace_id).await?;
        }
        self.charge(conn, &run).await
    }

    /// A new user's wallet, and the requests it answers; the other events
    /// skip the inbox.
    fn wants(&self, event: &Event) -> bool {
        matches!(event, Event::UserRegistered(_)) || Self::request(event).is_some()
    }
}

//! What the saga's participants (payment, delivery) share: their
//! decisions counted by outcome, and a request answered again when it comes
//! again (the order service re-drives a saga that stopped moving, and the
//! answer given the first time may be what was lost). The order service is
//! the saga's coordinator, not a participant.

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use uuid::Uuid;

use super::handler::{BoxFuture, HandleError};
use crate::events::{Envelope, Event};

type OutcomeLabel = [(&'static str, &'static str); 1];

/// A participant's decisions by outcome, and its answers written again.
#[derive(Clone, Default)]
pub struct ParticipantMetrics {
    outcomes: Family<OutcomeLabel, Counter>,
    announced_again: Counter,
}

impl ParticipantMetrics {
    /// Registers the decisions as `name` (label `outcome`, described by
    /// `help`) and the answers written again as
    /// `saga_answers_announced_again`.
    pub fn register(registry: &mut Registry, name: &str, help: &str) -> Self {
        let metrics = Self::default();
        registry.register(name, help, metrics.outcomes.clone());
        registry.register(
            "saga_answers_announced_again",
            "Answers written again because their request came again (a saga re-drive)",
            metrics.announced_again.clone(),
        );
        metrics
    }

    pub fn outcome(&self, outcome: &'static str) {
        self.outcomes.get_or_create(&[("outcome", outcome)]).inc();
    }
}

/// A service that answers the saga's requests about an order.
pub trait Participant: Send + Sync + 'static {
    /// Which of its answers a request asks for (payment: the charge or the
    /// refund; delivery: the booking or the release).
    type Answer: Copy + Send + 'static;

    /// The order a request is about and the answer it asks for; `None` for
    /// an event that is no request to this service.
    fn request(event: &Event) -> Option<(Uuid, Self::Answer)>;

    /// Writes to the outbox again, under its original event id, the answer
    /// given about `order_id`; false when none was given.
    fn announce_again<'a>(
        conn: &'a mut AsyncPgConnection,
        order_id: Uuid,
        answer: Self::Answer,
        trace_id: &'a str,
    ) -> BoxFuture<'a, QueryResult<bool>>;

    fn metrics(&self) -> &ParticipantMetrics;

    /// Writes again what the service answered about `order_id`, and counts
    /// it.
    fn answer_again<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        order_id: Uuid,
        answer: Self::Answer,
        trace_id: &'a str,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            if Self::announce_again(conn, order_id, answer, trace_id).await? {
                self.metrics().announced_again.inc();
            }
            Ok(())
        })
    }

    /// A participant's [`EventHandler::repeated`](super::EventHandler::repeated):
    /// the answer to a request handled before, written again for whoever
    /// lost it. Nothing is decided again (no second charge or booking).
    fn answer_repeated<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        envelope: &'a Envelope,
        event: &Event,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        match Self::request(event) {
            Some((order_id, answer)) => {
                self.answer_again(conn, order_id, answer, &envelope.trace_id)
            }
            None => Box::pin(async { Ok(()) }),
        }
    }
}

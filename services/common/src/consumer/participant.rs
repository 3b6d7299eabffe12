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

use super::handler::{BoxFuture, EventHandler, HandleError};
use crate::{
    events::{Envelope, Event},
    outbox,
};

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

/// Which of its answers about an order a participant is asked for
/// (payment: the charge or the refund; delivery: the booking or the
/// release), and where it finds the answer it gave.
pub trait ParticipantAnswer: Copy + Send + 'static {
    /// The service's record of an order (its payment, its delivery), which
    /// keeps the answers given about it and the ids they went out under.
    type Record: Send;

    /// The record of `order_id`, if the service has one.
    fn record(
        conn: &mut AsyncPgConnection,
        order_id: Uuid,
    ) -> impl Future<Output = QueryResult<Option<Self::Record>>> + Send;

    /// This answer as `record` says it was given: the event and the id it
    /// was first announced under; `None` when it was not given.
    fn given(self, record: &Self::Record) -> Option<(Event, Option<Uuid>)>;
}

/// A service that answers the saga's requests about an order. Every
/// participant is an [`EventHandler`]: a new event goes to
/// [`decide`](Self::decide), a repeated request gets the answer given the
/// first time ([`answer_again`](Self::answer_again)).
pub trait Participant: Send + Sync + 'static {
    /// Which of its answers a request asks for.
    type Answer: ParticipantAnswer;

    /// The order a request is about and the answer it asks for; `None` for
    /// an event that is no request to this service.
    fn request(event: &Event) -> Option<(Uuid, Self::Answer)>;

    fn metrics(&self) -> &ParticipantMetrics;

    /// Acts on an event new to the inbox: decides a request (charge,
    /// booking, refund, release) and writes its answer to the outbox, or
    /// keeps what else the service learns from the event (payment: a new
    /// user's wallet).
    fn decide(
        &self,
        conn: &mut AsyncPgConnection,
        event: Event,
        trace_id: &str,
    ) -> impl Future<Output = Result<(), HandleError>> + Send;

    /// Acts on the consecutive new records of a fetch at once (the
    /// runtime's optimistic pass, see [`EventHandler::handle_all`]): what
    /// a participant can decide set-based (one statement for all the
    /// fetch's requests instead of a few per request) it does here. The
    /// participant's [`EventHandler::handle_all`]. Default:
    /// [`decide`](Self::decide) for each in turn.
    fn decide_all(
        &self,
        conn: &mut AsyncPgConnection,
        records: Vec<(&Envelope, Event)>,
    ) -> impl Future<Output = Result<(), HandleError>> + Send {
        async move {
            for (envelope, event) in records {
                self.decide(conn, event, &envelope.trace_id).await?;
            }
            Ok(())
        }
    }

    /// Whether [`decide`](Self::decide) acts on `event`: by default the
    /// requests it answers; the others skip the inbox.
    fn wants(&self, event: &Event) -> bool {
        Self::request(event).is_some()
    }

    /// Writes to the outbox again, under its original event id, what the
    /// service answered about `order_id` (a repeated request: the requester
    /// may have lost it), and counts it; nothing when no answer was given.
    fn answer_again<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        order_id: Uuid,
        answer: Self::Answer,
        trace_id: &'a str,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            let Some(record) = Self::Answer::record(conn, order_id).await? else {
                return Ok(());
            };
            if let Some((event, first_id)) = answer.given(&record) {
                outbox::enqueue_again(conn, &event, first_id, trace_id).await?;
                self.metrics().announced_again.inc();
            }
            Ok(())
        })
    }
}

impl<P: Participant> EventHandler for P {
    fn handle_all<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        records: Vec<(&'a Envelope, Event)>,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(self.decide_all(conn, records))
    }

    /// A request handled before comes again: the answer given then,
    /// written again for whoever lost it. Nothing is decided again (no
    /// second charge or booking).
    fn repeated<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        envelope: &'a Envelope,
        event: Event,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        match Self::request(&event) {
            Some((order_id, answer)) => {
                self.answer_again(conn, order_id, answer, &envelope.trace_id)
            }
            None => Box::pin(async { Ok(()) }),
        }
    }

    fn wants(&self, event: &Event) -> bool {
        Participant::wants(self, event)
    }
}

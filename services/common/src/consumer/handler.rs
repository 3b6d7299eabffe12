//! The contract between the runtime and a service: what a handler is
//! given, what it answers ([`HandleError`]: dead-letter or retry), and how
//! fetches of different partitions may run together ([`Concurrency`]).

use std::fmt;

use diesel_async::AsyncPgConnection;
pub use futures::future::BoxFuture;

use crate::events::{Envelope, Event};

/// Why a handler could not apply an event.
#[derive(Debug)]
pub enum HandleError {
    /// Can never succeed (invalid content, broken invariant): the record goes
    /// to `dead_letters` with this reason, its effects are rolled back and the
    /// partition moves on.
    Permanent(String),
    /// May succeed later (database trouble, deadlock): the whole fetch is
    /// rolled back and retried with backoff.
    Transient(anyhow::Error),
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandleError::Permanent(reason) => write!(f, "permanent: {reason}"),
            HandleError::Transient(error) => write!(f, "transient: {error:#}"),
        }
    }
}

impl std::error::Error for HandleError {}

/// What `?` on a diesel error gives a handler: a data exception (the
/// event's values do not fit the database) is permanent, anything else
/// transient.
impl From<diesel::result::Error> for HandleError {
    fn from(error: diesel::result::Error) -> Self {
        match data_exception(&error) {
            Some(reason) => HandleError::Permanent(reason),
            None => HandleError::Transient(error.into()),
        }
    }
}

/// Messages of PostgreSQL's data exceptions (SQLSTATE class 22) that values
/// taken from a record can cause. diesel-async passes on only eight
/// SQLSTATEs (as `DatabaseErrorKind`) and keeps the rest, class 22
/// included, in a type that cannot be inspected, so the (English) server
/// message is what is left to go by. A server with translated messages
/// (`lc_messages`) retries these like any transient error; NUL characters,
/// the likeliest cause, are refused before the handler runs either way
/// (see [`decode_value`](super::decode::decode_value)).
const DATA_EXCEPTIONS: [&str; 10] = [
    "invalid byte sequence for encoding", // 22021 character_not_in_repertoire
    "unsupported Unicode escape sequence", // 22P05 untranslatable_character
    "has no equivalent in encoding",      // 22P05
    "invalid input syntax for",           // 22P02 invalid_text_representation, 22007
    "invalid input value for enum",       // 22P02
    "malformed array literal",            // 22P02
    "value too long for type",            // 22001 string_data_right_truncation
    "out of range",                       // 22003 numeric_value_out_of_range, 22008
    "numeric field overflow",             // 22003
    "division by zero",                   // 22012
];

/// The dead-letter reason when `error` is a data exception: the database
/// refused the record's values, and would refuse them again. Connection,
/// serialization, deadlock and constraint errors are not (a constraint
/// violation can be a race with a concurrent writer: retried).
fn data_exception(error: &diesel::result::Error) -> Option<String> {
    match error {
        diesel::result::Error::DatabaseError(_, info)
            if DATA_EXCEPTIONS.iter().any(|m| info.message().contains(m)) =>
        {
            Some(format!(
                "the database refused the event's data: {}",
                info.message()
            ))
        }
        _ => None,
    }
}

/// A transient handler error that is a data exception after all (a diesel
/// error wrapped by the handler): the dead-letter reason.
pub(super) fn permanent_cause(error: &anyhow::Error) -> Option<String> {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<diesel::result::Error>())
        .find_map(data_exception)
}

/// What a service does with the events of its topics.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies records that are new to the inbox, in their order, in one
    /// go, inside the diesel transaction that also advances the partition
    /// offset and records each `envelope.event_id` in the inbox; write
    /// effects and outbox rows on `conn`. What a handler can do set-based
    /// (one statement for all of them instead of a few per record, e.g. lock
    /// every order of the fetch at once) it does here. Events the service
    /// does not care about: nothing to do. The runtime hands it the
    /// consecutive new records of a fetch in the optimistic pass (no
    /// savepoints); on a `Permanent` error the fetch is applied again with a
    /// savepoint per record, where [`handle`](Self::handle) takes each alone
    /// and only the failing one is dead-lettered. It may run more than once
    /// for one record (rolled back each time but the last).
    fn handle_all<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        records: Vec<(&'a Envelope, Event)>,
    ) -> BoxFuture<'a, Result<(), HandleError>>;

    /// Applies one record alone (the savepoint pass, a dead letter
    /// replayed). Default: [`handle_all`](Self::handle_all) with that record.
    fn handle<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        envelope: &'a Envelope,
        event: Event,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        self.handle_all(conn, vec![(envelope, event)])
    }

    /// Whether [`handle`](Self::handle) acts on `event` at all. Events it
    /// does not want are skipped without touching the database: no inbox
    /// row, no savepoint, and a fetch holding only such events moves the
    /// offset in memory only (stored with the next fetch that has work, so a
    /// restart may read them again and skip them again). Default: all.
    fn wants(&self, event: &Event) -> bool {
        let _ = event;
        true
    }

    /// Called instead of [`handle`](Self::handle) for a record whose event
    /// id is already in the inbox (a repeat, in the same transaction and
    /// savepoint rules). A saga participant writes again, with their
    /// original event ids, the events it answered that event with the first
    /// time: the requester may have lost them. Default: nothing.
    /// `Permanent` here only means "nothing to announce": logged, not
    /// dead-lettered.
    fn repeated<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        envelope: &'a Envelope,
        event: Event,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        let _ = (conn, envelope, event);
        Box::pin(async { Ok(()) })
    }

    /// How fetches of different partitions may run at the same time.
    fn concurrency(&self) -> Concurrency {
        Concurrency::Serialized
    }
}

/// How the runtime keeps a group's fetches (one transaction each, one per
/// partition at a time) from deadlocking on rows they share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// One fetch of the group applies at a time (a group advisory lock).
    /// Safe for any handler; the default.
    Serialized,
    /// Fetches apply concurrently, each in ascending order of the records'
    /// keys (a stable sort: one key's events keep their order). Every
    /// transaction then locks rows in the same order, so none can deadlock,
    /// PROVIDED that a handler locks only rows of the record's own key (its
    /// aggregate, e.g. the order row for an event keyed by order id), or in
    /// [`EventHandler::handle_all`] the rows of all its records' keys at
    /// once, in key order.
    ByKey,
}

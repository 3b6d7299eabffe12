//! The shared crate's integration tests, one binary: the consumer runtime, the
//! database pool, the outbox, and the event contract document.

mod consumer;
mod db_pool;
mod events_doc;
mod outbox;

//! The outbox relay: streams each source database's outbox inserts from a
//! logical replication slot (pgoutput) to Kafka, and confirms WAL to
//! PostgreSQL only after the broker acknowledged (at-least-once, nothing
//! lost). Generic CDC: it knows the outbox table's columns, not the events. What it
//! shares with the services (wire format, config loading, backoff, logging)
//! is in `commerce_base`.
//!
//! - [`replication`]: replication protocol client and pgoutput decoder
//! - [`catalog`]: publication/slot checks and the lag probe's query (plain SQL)
//! - [`slots`]: creating slots, and the marker that refuses to replace a
//!   lost one silently; [`create_slots`]: the `create-slots` command
//! - [`source`]: one source's connect/reconnect loop; [`pipeline`]: its stream;
//!   [`error`]: why a source stopped
//! - [`confirm`]: where an LSN is confirmed to PostgreSQL ([`confirm::Confirmation`]),
//!   over [`inflight`]: the in-flight transactions in commit order
//! - [`probe`]: the slot's lag and WAL status, on a connection of its own
//! - [`outbox`]: row -> Kafka record (or dead letter), in the wire format of
//!   `commerce_base::outbox`; [`publisher`]: rskafka (with
//!   `commerce_base::nodelay`: `TCP_NODELAY` on its broker connections)
//! - [`metrics`], [`http`]: Prometheus, JSON status, dashboard

pub mod catalog;
pub mod config;
pub mod confirm;
pub mod create_slots;
pub mod error;
pub mod http;
pub mod inflight;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod probe;
pub mod publisher;
pub mod replication;
pub mod slots;
pub mod source;
pub mod startup;

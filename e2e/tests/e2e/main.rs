//! Whole-stack tests: the real binaries (gateway, order, payment and
//! delivery services, outbox relay) as child processes, each service on a
//! fresh database, wired together by `test_support::Stack`. Nothing is
//! faked: events travel outbox -> WAL -> relay -> Kafka -> consumer runtime.
//! And Swagger UI in a real browser, served by the gateway binary.

mod browser;
mod saga;
mod walkthrough;

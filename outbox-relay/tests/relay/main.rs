//! End-to-end tests of the relay binary against real PostgreSQL and a real
//! Kafka (the test broker, or one of the test's own). Each test owns its databases, slots and
//! topics (random names) and starts its own relay process. And the compose
//! container.

mod backpressure;
mod compose;
mod dashboard;
mod helpers;
mod publishing;
mod resilience;
mod slots;
mod supervision;

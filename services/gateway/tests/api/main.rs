//! End-to-end tests of the gateway over HTTP: real PostgreSQL, the real app
//! on port 0, fake upstream services started in the test; and the compose
//! container.

mod abuse;
mod auth;
mod compose;
mod docs;
mod helpers;
mod hostile_input;
mod hygiene;
mod proxy;
mod tokens;

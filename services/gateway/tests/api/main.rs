//! End-to-end tests of the gateway over HTTP: real PostgreSQL, the real app
//! on port 0, fake upstream services started in the test.

mod auth;
mod browser;
mod docs;
mod helpers;
mod proxy;
mod tokens;

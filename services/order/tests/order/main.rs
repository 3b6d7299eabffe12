//! The order service's integration tests, one binary: the real app on port 0
//! against a fresh database (`helpers`), the HTTP API, long polling, the saga
//! handlers, the consumer, dead letters, and the compose container.

mod api;
mod compose;
mod consumer;
mod dead_letters;
mod helpers;
mod long_poll;
mod saga;

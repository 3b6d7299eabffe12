//! The delivery service's integration tests, one binary: the real app on port 0
//! against a fresh database (`helpers`), the HTTP API, the saga handlers, the
//! events it emits, and the compose container.

mod api;
mod compose;
mod emitted;
mod helpers;
mod saga;

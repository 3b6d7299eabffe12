//! test-support's own integration tests, one binary: its helpers and the compose
//! files.

mod compose_files;
mod helpers;

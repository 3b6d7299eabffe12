//! Helpers for tests that exercise the real thing (zero2prod / IOx style):
//! fresh databases on a real PostgreSQL, the real binaries as child
//! processes, a service's app in the test's own process ([`RunningApp`]),
//! tokens the services accept, a Kafka reader, Kafka nodes of a test's own,
//! a headless browser, wait-until helpers instead of sleeps, and [`Stack`]:
//! any subset of the whole system started from one wiring.
//!
//! Environment (set by `cargo xtask test`, defaulting to the shared dev
//! instances): `TEST_DATABASE_URL`, `TEST_KAFKA_BROKERS`, `TEST_KAFKA_LIBS`
//! (the broker's jars, for nodes of a test's own), `COMMERCE_BIN_DIR`,
//! `TEST_LOG` (print child logs live).

mod app;
mod auth;
mod broker;
mod browser;
pub mod compose;
pub mod config_doc;
mod db;
mod env;
mod events;
mod http;
mod kafka;
mod process;
mod relay;
mod stack;
mod wait;

pub use app::{ConsumingApp, RunningApp, fresh_topic};
pub use auth::{TestKeys, claims_for, jwt_keys, mint_token, mint_token_with};
pub use broker::{KafkaNode, StackBroker};
pub use browser::Browser;
pub use db::{
    Statements, TestDatabase, admin_client, database_url, fresh_database, inserted_in_transaction,
    query_i64, try_query_i64, wait_for_value, wait_for_value_at_least,
};
pub use env::{
    DEFAULT_DATABASE_URL, DEFAULT_KAFKA_BROKERS, admin_url, bin_dir, bin_path, kafka_brokers,
    test_log_enabled,
};
pub use events::{envelope, partition_of};
pub use http::{SendExt, assert_error, assert_error_code, shipping_address};
pub use kafka::{
    KafkaReader, KafkaRecord, delete_all_records, ensure_topics, kafka_client, produce_envelope,
    produce_envelopes, read_topic,
};
pub use process::{ChildProcess, free_port};
pub use relay::{Relay, ReplicationSlots};
pub use stack::{Service, Stack, StackBuilder};
pub use wait::{wait_for_http_ok, wait_until};

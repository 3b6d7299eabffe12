//! Where the tests find PostgreSQL, the broker and the built binaries.

use std::{collections::BTreeMap, ffi::OsString, path::PathBuf, sync::LazyLock};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:55999/postgres";
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:19092";

/// The process environment as the test binary started with it. A test that
/// loads a config with an exact environment ([`crate::compose::with_exact_env`])
/// empties the real one for a moment while the binary's other tests run on:
/// they read this copy, and hand it to the processes they start.
static STARTING_ENV: LazyLock<BTreeMap<OsString, OsString>> =
    LazyLock::new(|| std::env::vars_os().collect());

/// Takes the copy of the environment if no test has yet: before anything
/// changes the real one.
pub(crate) fn keep_starting_env() {
    LazyLock::force(&STARTING_ENV);
}

/// The environment the test binary started with (for a child process).
pub(crate) fn starting_env() -> &'static BTreeMap<OsString, OsString> {
    &STARTING_ENV
}

/// `name` in the environment the test binary started with.
pub(crate) fn var(name: &str) -> Option<String> {
    STARTING_ENV
        .get(std::ffi::OsStr::new(name))
        .and_then(|v| v.to_str())
        .map(str::to_owned)
}

fn env_or(name: &str, default: &str) -> String {
    var(name)
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Superuser URL of the PostgreSQL cluster tests create databases in
/// (`TEST_DATABASE_URL`).
pub fn admin_url() -> String {
    env_or("TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
}

/// Comma-separated `host:port` list of the Kafka-protocol broker
/// (`TEST_KAFKA_BROKERS`).
pub fn kafka_brokers() -> String {
    env_or("TEST_KAFKA_BROKERS", DEFAULT_KAFKA_BROKERS)
}

/// Whether child process logs are printed live (`TEST_LOG` set and not `0`).
pub fn test_log_enabled() -> bool {
    var("TEST_LOG").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Directory of the workspace binaries: `COMMERCE_BIN_DIR`, else the
/// profile directory the running test binary was built into (`.../debug`),
/// else `$CARGO_TARGET_DIR/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = var("COMMERCE_BIN_DIR")
        && !dir.is_empty()
    {
        return PathBuf::from(dir);
    }
    // Test executables live in <target>/<profile>/deps/.
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
        && deps.file_name().is_some_and(|n| n == "deps")
        && let Some(profile) = deps.parent()
    {
        return profile.to_path_buf();
    }
    let target = var("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    target.join("debug")
}

/// Path of a workspace binary (`gateway`, `order-service`, `payment-service`,
/// `delivery-service`, `outbox-relay`). Panics with the fix when it was not
/// built.
pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}: build it with `cargo build --bins` \
         (or run the tests through `cargo xtask test`), or point COMMERCE_BIN_DIR at it",
        path.display()
    );
    path
}

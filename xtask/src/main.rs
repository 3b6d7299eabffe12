//! Developer commands for the workspace (`cargo xtask <command>`).
//!
//! - `up`: the whole system natively: a private PostgreSQL cluster, the
//!   Kafka broker, the relay and the four services, until Ctrl-C.
//! - `test`: every test of the workspace against a throwaway PostgreSQL
//!   cluster and broker.

mod broker;
mod http;
mod keys;
mod paths;
mod ports;
mod postgres;
mod process;
mod signals;
mod test;
mod up;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  up [--kafka HOST:PORT] [--partitions N] [--release] [--postgres-per-service]
     [--data-dir DIR] [--port-offset N] [--fail-fast] [--recreate-slot SOURCE]...
     [--set BINARY:APP__KEY=VALUE]...
      Start PostgreSQL (port 55432, data kept in .data/postgres; with
      --postgres-per-service one server per service database on ports
      55432-55435, data in .data/postgres/<database>), Apache Kafka
      (port 9092, controller 9093, data kept in .data/kafka) unless
      --kafka names an existing broker, the outbox relay
      (dashboard 8090) and the services (gateway 8084, order 8081,
      payment 8082, delivery 8083); the relay's replication slots are
      created before any service starts (`outbox-relay create-slots`), and a
      slot that went missing or was lost stops the start until
      --recreate-slot names its source (gateway, order, payment, delivery). Ctrl-C drains (the gateway stops, the
      sagas in flight settle, at most 15 s; Ctrl-C again skips that) and
      stops everything; a process that dies is restarted with backoff
      (--fail-fast: the whole stack stops instead). --release
      runs optimised builds (for load tests; the first build takes minutes).
      --data-dir keeps the data elsewhere than .data; --port-offset N adds N
      to every port (a second stack beside the first). With
      COMMERCE_BIN_DIR set, its binaries run as they are (no build).
      --set gives one binary (gateway, order-service, payment-service,
      delivery-service, outbox-relay) a setting: inherited APP__* variables
      are not passed on, so the stack does not depend on the caller's shell.
  test [-- <test runner args>]
      Fetch the broker's jars if needed, build the binaries, start a
      throwaway PostgreSQL cluster and Kafka node on free ports (unless
      TEST_DATABASE_URL / TEST_KAFKA_BROKERS are set), run every test of the
      workspace (TEST_KAFKA_LIBS lets tests start Kafka nodes of their own),
      tear everything down, exit with the tests' status.
  install-broker
      Fetch Apache Kafka's jars (xtask/kafka/pom.xml) with Maven into
      ~/.cache/cdc-commerce/kafka-<version> unless they are there (`up` and
      `test` do this on demand too) and print their directory.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wants_help = args
        .first()
        .is_some_and(|c| c == "up" || c == "install-broker")
        && args.iter().any(|a| a == "-h" || a == "--help");
    if wants_help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = match args.first().map(String::as_str) {
        Some("up") => up::Args::parse(&args[1..]).and_then(up::run),
        Some("test") => test::run(&args[1..]),
        Some("install-broker") => broker::ensure_installed().map(|bin| {
            println!("{}", bin.display());
            ExitCode::SUCCESS
        }),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(anyhow::anyhow!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

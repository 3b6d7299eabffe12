//! Command-line options of the `load` binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// What a waiting read of an order waits for (the order service's `until`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WaitUntil {
    Change,
    Settled,
}

impl WaitUntil {
    /// The value of the `until` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitUntil::Change => "change",
            WaitUntil::Settled => "settled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// The seed's Gatling scenario: users ramped over --ramp s, each placing an order
    /// and listing orders with --pause-ms pauses, --iterations times (closed loop).
    Light,
    /// Orders at a rate that rises by --step every --duration s (open loop) until
    /// the step's p99 exceeds --p99-limit-ms; reports the highest rate held.
    Saturation,
    /// Orders at a fixed --rate for --duration s, each polled until DELIVERY_SCHEDULED
    /// or another final status; reports saga completion percentiles.
    Saga,
    /// Read-heavy traffic at a fixed --rate: order reads, order lists, wallet
    /// reads and a --write-share of new orders.
    Mixed,
    /// Issue 22's five targets in one command: a warm-up (100 orders/s for
    /// 20 s, not graded), an idle stack (an order every 5 s), 100 orders/s,
    /// 200 orders/s twice back to back (--duration s each, 30 by default),
    /// then saturation; prints one pass/fail line per target.
    ReportCard,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Light => "light",
            Scenario::Saturation => "saturation",
            Scenario::Saga => "saga",
            Scenario::Mixed => "mixed",
            Scenario::ReportCard => "report-card",
        }
    }
}

/// Load scenarios against the commerce gateway.
#[derive(Debug, Clone, Parser)]
#[command(name = "load", version, about)]
pub struct Cli {
    pub scenario: Scenario,

    /// Base URL of the gateway.
    #[arg(long, env = "LOAD_GATEWAY", default_value = "http://127.0.0.1:8084")]
    pub gateway: String,

    /// Requests (orders) per second: saga and mixed 200 by default; saturation's first step, 50 by default.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Seconds of load: saga and mixed 60 by default; the length of each saturation step, 10 by default.
    #[arg(long)]
    pub duration: Option<f64>,

    /// Registered users the load is spread over (light: 10; others: 20).
    #[arg(long)]
    pub users: Option<usize>,

    /// light: iterations per user.
    #[arg(long, default_value_t = 100)]
    pub iterations: u32,

    /// light: seconds over which users start.
    #[arg(long, default_value_t = 30.0)]
    pub ramp: f64,

    /// light: pause after each request, in ms.
    #[arg(long, default_value_t = 200)]
    pub pause_ms: u64,

    /// saga: time between polls of an order, in ms (the resolution of completion times),
    /// when not waiting (`--wait-s 0`) or when the server does not honour `Prefer: wait`.
    #[arg(long, default_value_t = 50)]
    pub poll_interval_ms: u64,

    /// saga: follow each order with `GET /api/orders/{id}` and `Prefer: wait=N`: the
    /// server answers as soon as the order changes, so completion times are exact
    /// and cost about one request per status change. 0: plain polling instead.
    #[arg(long, default_value_t = 5)]
    pub wait_s: u64,

    /// saga: what each waiting read waits for (`until` of `GET /api/orders/{id}`):
    /// `settled` answers once the saga is done with the order (one read per order),
    /// `change` at every status change (one read per step, as a UI following the
    /// order would).
    #[arg(long, value_enum, default_value_t = WaitUntil::Settled)]
    pub wait_until: WaitUntil,

    /// saga: seconds after which an order that is not final counts as UNFINISHED.
    #[arg(long, default_value_t = 30.0)]
    pub saga_timeout: f64,

    /// saga: cancel each order once it is DELIVERY_SCHEDULED, which frees its delivery
    /// window, so long runs do not use up the windows (adds a request and a refund per order).
    #[arg(long)]
    pub cancel_scheduled: bool,

    /// saturation: rate increment per step, orders/s.
    #[arg(long, default_value_t = 50.0)]
    pub step: f64,

    /// saturation: highest rate tried, orders/s.
    #[arg(long, default_value_t = 2000.0)]
    pub max_rate: f64,

    /// saturation: a step is held while its p99 is at most this, in ms.
    #[arg(long, default_value_t = 1000.0)]
    pub p99_limit_ms: f64,

    /// saturation: seconds to wait after the run for every placed order to become final (0: skip).
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout: f64,

    /// mixed: share of requests that place orders (0..1).
    #[arg(long, default_value_t = 0.1)]
    pub write_share: f64,

    /// Timeout of each HTTP request, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,

    /// Open-loop scenarios skip (and count) a request when this many are unfinished.
    #[arg(long, default_value_t = 5000)]
    pub max_in_flight: usize,

    /// Wallet credit a new user starts with, cents (the tool tops up before it runs out).
    #[arg(long, default_value_t = 100_000)]
    pub initial_credit: i64,

    /// Amount of each top-up, cents.
    #[arg(long, default_value_t = 100_000)]
    pub top_up_cents: i64,

    /// Processes to sample, `name=port,...` (the process listening on the port and its
    /// children; a name given several times with different ports is one group of all their
    /// listeners; a name without port matches by name). Default: the native stack's ports.
    #[arg(long)]
    pub procs: Option<String>,

    /// Directory for the reports (default: perf/reports of this crate).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
}

impl Cli {
    pub fn rate(&self) -> f64 {
        self.rate.unwrap_or(match self.scenario {
            Scenario::Saturation => 50.0,
            _ => 200.0,
        })
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.unwrap_or(match self.scenario {
            Scenario::Saturation => 10.0,
            _ => 60.0,
        }))
    }

    pub fn users(&self) -> usize {
        self.users.unwrap_or(match self.scenario {
            Scenario::Light => 10,
            _ => 20,
        })
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.rate() > 0.0, "--rate must be positive");
        anyhow::ensure!(
            self.duration() > Duration::ZERO,
            "--duration must be positive"
        );
        anyhow::ensure!(self.users() > 0, "--users must be at least 1");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.write_share),
            "--write-share must be between 0 and 1"
        );
        anyhow::ensure!(self.step > 0.0, "--step must be positive");
        anyhow::ensure!(self.timeout > 0.0, "--timeout must be positive");
        anyhow::ensure!(
            (self.wait_s as f64) < self.timeout,
            "--wait-s must be shorter than the request --timeout"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_depend_on_the_scenario() {
        let saga = Cli::parse_from(["load", "saga"]);
        assert_eq!(saga.rate(), 200.0);
        assert_eq!(saga.duration(), Duration::from_secs(60));
        assert_eq!(saga.users(), 20);
        let light = Cli::parse_from(["load", "light"]);
        assert_eq!(light.users(), 10);
        let sat = Cli::parse_from(["load", "saturation"]);
        assert_eq!(sat.rate(), 50.0);
        assert_eq!(sat.duration(), Duration::from_secs(10));
    }

    #[test]
    fn options_parse() {
        let cli = Cli::parse_from([
            "load",
            "saga",
            "--gateway",
            "http://gw:8084",
            "--rate",
            "500",
            "--duration",
            "30",
        ]);
        assert_eq!(cli.scenario, Scenario::Saga);
        assert_eq!(cli.gateway, "http://gw:8084");
        assert_eq!(cli.rate(), 500.0);
        assert_eq!(cli.duration(), Duration::from_secs(30));
        cli.validate().unwrap();
        assert!(
            Cli::parse_from(["load", "mixed", "--write-share", "2"])
                .validate()
                .is_err()
        );
    }
}

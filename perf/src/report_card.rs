//! `load report-card`: the runs behind issue 22's five targets, one after the
//! other against the running stack, and one table of pass/fail lines.
//!
//! The runs: a warm-up at 100 orders/s for [`WARM_UP_S`] s (not graded: a
//! broker just started is still compiling), an idle stack with an order
//! every 5 s (targets 2 and 5's idle CPU), 100 orders/s (target 3),
//! 200 orders/s twice back to back (target 1, and target 5's "nothing grows
//! with history"), then saturation (target 4).
//! Each run also writes its own report, named in the card.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::cli::{Cli, Scenario};
use crate::report::Report;

/// Stack CPU per order at 200 orders/s, ms.
pub const CPU_PER_ORDER_MS: f64 = 4.5;
/// Idle single saga, client side, ms.
pub const IDLE_P50_MS: f64 = 30.0;
pub const IDLE_P99_MS: f64 = 60.0;
/// Completion p99 at 100 orders/s, ms.
pub const P99_AT_100_MS: f64 = 150.0;
/// Sagas sustained in `saturation`, orders/s.
pub const SAGAS_SUSTAINED: f64 = 400.0;
/// Idle stack CPU, percent of one core.
pub const IDLE_CPU_PCT: f64 = 3.0;
/// Two identical runs back to back: CPU per order within this share.
pub const HISTORY_DRIFT: f64 = 0.05;

/// Seconds of the ungraded warm-up run at 100 orders/s before the others.
pub const WARM_UP_S: f64 = 20.0;

/// Seconds of each loaded run (100 and 200 orders/s) unless `--duration`
/// says otherwise: one `autovacuum_naptime` of PostgreSQL, which visits each
/// database once a minute. On a fresh stack, whose tables grow by more than
/// a tenth between visits, each visit analyzes them, and every backend
/// plans its prepared statements again. A 30-s run took that visit or not
/// depending on its phase, and the card's steps take the same time on every
/// card: the first of the two 200/s runs cost 5-7% more than the second in
/// each of three cards, and with autovacuum logged the visits of all three
/// service databases fell into the first run (4.68 against 4.28 ms per
/// order, docs/perf.md). That read as history in target 5b and doubled the
/// visits' share in target 1. A 60-s run takes one visit, as a minute of a
/// running stack does.
pub const LOADED_S: f64 = 60.0;

/// One target's verdict.
#[derive(Debug, Clone)]
pub struct Line {
    pub target: String,
    pub passed: bool,
    pub measured: String,
}

/// The reports of one card's runs.
pub struct Runs {
    pub idle: Report,
    pub at_100: Report,
    pub at_200: [Report; 2],
    pub saturation: Report,
}

fn stack_cpu_ms(report: &Report) -> Option<f64> {
    report.cpu_ms_per_unit().map(|(stack, _)| stack)
}

fn every_saga_final(report: &Report) -> (bool, String) {
    let placed = report.sagas_started.unwrap_or(0);
    let finished = report.measured.saga.finished;
    (
        placed > 0 && finished == placed,
        format!("{finished} of {placed} final"),
    )
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.2} ms"))
}

/// Grades the runs against the targets (pure: tested without a stack).
pub fn grade(runs: &Runs) -> Vec<Line> {
    let mut lines = Vec::new();

    let cpu: Vec<Option<f64>> = runs.at_200.iter().map(stack_cpu_ms).collect();
    lines.push(Line {
        target: format!("1. stack CPU per order at 200 orders/s <= {CPU_PER_ORDER_MS} ms"),
        passed: cpu.iter().all(|c| c.is_some_and(|c| c <= CPU_PER_ORDER_MS)),
        measured: format!("{} then {}", ms(cpu[0]), ms(cpu[1])),
    });

    let idle = &runs.idle.measured.saga.completion;
    let (idle_final, idle_count) = every_saga_final(&runs.idle);
    lines.push(Line {
        target: format!("2. idle single saga p50 <= {IDLE_P50_MS} ms, p99 <= {IDLE_P99_MS} ms"),
        passed: idle_final && idle.p50_ms <= IDLE_P50_MS && idle.p99_ms <= IDLE_P99_MS,
        measured: format!(
            "p50 {:.1} ms, p99 {:.1} ms ({idle_count})",
            idle.p50_ms, idle.p99_ms
        ),
    });

    let at_100 = &runs.at_100.measured.saga.completion;
    let (final_100, count_100) = every_saga_final(&runs.at_100);
    lines.push(Line {
        target: format!(
            "3. at 100 orders/s every saga final, completion p99 <= {P99_AT_100_MS} ms"
        ),
        passed: final_100 && at_100.p99_ms <= P99_AT_100_MS,
        measured: format!(
            "{count_100}; p50 {:.1} ms, p99 {:.1} ms",
            at_100.p50_ms, at_100.p99_ms
        ),
    });

    let kept_up = runs.saturation.max_rate_sagas_kept_up;
    lines.push(Line {
        target: format!("4. sagas sustained >= {SAGAS_SUSTAINED}/s (saturation: sagas kept up to)"),
        passed: kept_up.is_some_and(|r| r >= SAGAS_SUSTAINED),
        measured: format!(
            "sagas kept up to {}, placement held {}",
            kept_up.map_or_else(|| "none".into(), |r| format!("{r:.0}/s")),
            runs.saturation
                .max_rate_held
                .map_or_else(|| "none".into(), |r| format!("{r:.0}/s"))
        ),
    });

    let idle_cpu: f64 = runs
        .idle
        .processes
        .iter()
        .filter(|p| p.matched_by != "self")
        .map(|p| p.cpu_avg_pct)
        .sum();
    lines.push(Line {
        target: format!("5a. idle stack CPU <= {IDLE_CPU_PCT}% of one core"),
        passed: !runs.idle.processes.is_empty() && idle_cpu <= IDLE_CPU_PCT,
        measured: format!("{idle_cpu:.1}% (an order every 5 s)"),
    });

    let drift = match (cpu[0], cpu[1]) {
        (Some(a), Some(b)) if a > 0.0 => Some((b - a) / a),
        _ => None,
    };
    lines.push(Line {
        target: format!(
            "5b. two 200/s runs back to back within {:.0}% CPU per order",
            HISTORY_DRIFT * 100.0
        ),
        passed: drift.is_some_and(|d| d.abs() <= HISTORY_DRIFT),
        measured: drift.map_or_else(|| "-".into(), |d| format!("{:+.1}%", d * 100.0)),
    });
    lines
}

/// The card as markdown: the lines, then the reports they come from.
pub fn to_markdown(lines: &[Line], reports: &[(String, PathBuf)]) -> String {
    let mut md = String::from("# Report card (issue 22's targets)\n\n");
    md.push_str("| target | result | measured |\n|---|---|---|\n");
    for line in lines {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            line.target,
            if line.passed { "PASS" } else { "FAIL" },
            line.measured
        );
    }
    md.push_str("\nRuns:\n\n");
    for (label, path) in reports {
        let _ = writeln!(md, "- {label}: {}", path.with_extension("md").display());
    }
    md
}

/// A run of the card: `cli` with another scenario, rate and duration.
fn variant(cli: &Cli, scenario: Scenario, rate: f64, duration: f64) -> Cli {
    let mut run = cli.clone();
    run.scenario = scenario;
    run.rate = Some(rate);
    run.duration = Some(duration);
    run
}

/// Runs the card's scenarios one after the other; returns the lines and the
/// path of the card's markdown file.
pub async fn run(cli: &Cli) -> anyhow::Result<(Vec<Line>, String, PathBuf)> {
    let loaded_s = cli.duration.unwrap_or(LOADED_S);
    let plan = [
        // Not graded: a broker just started runs its JIT compiler for a
        // minute or two, and the first sagas meet cold caches and connection
        // set-up everywhere. Measured on a fresh release stack
        // (docs/perf.md, 2026-12-05): idle p50 31.4 ms and stack CPU 6.5%
        // of a core with the broker at 5.3% cold, 20.2 ms and 3.7% with
        // the broker at 1.9% warm.
        (
            "warm-up (not graded)",
            variant(cli, Scenario::Saga, 100.0, WARM_UP_S),
        ),
        (
            "idle (an order every 5 s)",
            variant(cli, Scenario::Saga, 0.2, 60.0),
        ),
        (
            "100 orders/s",
            variant(cli, Scenario::Saga, 100.0, loaded_s),
        ),
        (
            "200 orders/s, first",
            variant(cli, Scenario::Saga, 200.0, loaded_s),
        ),
        (
            "200 orders/s, second",
            variant(cli, Scenario::Saga, 200.0, loaded_s),
        ),
        // The issue's `saturation --rate 50 --step 50 --duration 10`.
        ("saturation", variant(cli, Scenario::Saturation, 50.0, 10.0)),
    ];
    let mut reports = Vec::new();
    let mut paths = Vec::new();
    for (label, run) in plan {
        let command = format!(
            "load {} --rate {} --duration {} (report-card)",
            run.scenario.name(),
            run.rate(),
            run.duration().as_secs_f64()
        );
        eprintln!("report card: {label}: {command}");
        let (report, html) = crate::run::execute(&run, command).await?;
        eprintln!("{}", report.headline());
        paths.push((label.to_string(), html));
        reports.push(report);
    }
    let mut reports = reports.into_iter();
    let mut next = || reports.next().expect("one report per run");
    let _warm_up = next();
    let runs = Runs {
        idle: next(),
        at_100: next(),
        at_200: [next(), next()],
        saturation: next(),
    };
    let lines = grade(&runs);
    let md = to_markdown(&lines, &paths);
    let dir = paths[0].1.parent().unwrap_or(Path::new(".")).to_path_buf();
    let path = dir.join(format!(
        "report-card-{}.md",
        chrono::Utc::now().format("%Y%m%d-%H%M%S")
    ));
    fs::write(&path, &md)?;
    Ok((lines, md, path))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::Recorder;
    use crate::report::tests::sample_report;

    /// A saga run: `sagas` completion times in ms, all final, and the stack's
    /// CPU in ms per order.
    fn saga_run(sagas: &[u64], cpu_ms_per_order: f64) -> Report {
        let mut report = sample_report();
        let recorder = Recorder::new();
        for &ms in sagas {
            recorder.record_saga("DELIVERY_SCHEDULED", Duration::from_millis(ms), None);
        }
        report.measured = recorder.snapshot();
        report.sagas_started = Some(sagas.len() as u64);
        report.processes[0].cpu_seconds = cpu_ms_per_order * sagas.len() as f64 / 1000.0;
        report.processes[0].cpu_avg_pct = 2.0;
        report
    }

    fn passing() -> Runs {
        let mut saturation = sample_report();
        saturation.max_rate_sagas_kept_up = Some(450.0);
        Runs {
            idle: saga_run(&[12, 14, 18], 20.0),
            at_100: saga_run(&[30, 40, 120], 4.0),
            at_200: [saga_run(&[40, 90], 4.0), saga_run(&[40, 90], 4.1)],
            saturation,
        }
    }

    fn failed(runs: &Runs) -> Vec<String> {
        grade(runs)
            .into_iter()
            .filter(|line| !line.passed)
            .map(|line| {
                line.target
                    .split(' ')
                    .next()
                    .unwrap()
                    .trim_end_matches('.')
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn a_stack_within_every_target_passes_every_line() {
        let lines = grade(&passing());
        assert_eq!(lines.len(), 6);
        assert!(lines.iter().all(|l| l.passed), "{lines:?}");
        assert!(to_markdown(&lines, &[]).contains("| PASS | 4.00 ms then 4.10 ms |"));
    }

    #[test]
    fn each_target_fails_on_its_own_figure() {
        let mut runs = passing();
        runs.at_200[1] = saga_run(&[40, 90], 4.4);
        assert_eq!(failed(&runs), ["5b"], "10% more CPU in the second run");

        let mut runs = passing();
        runs.at_200 = [saga_run(&[40], 4.6), saga_run(&[40], 4.6)];
        assert_eq!(failed(&runs), ["1"]);

        let mut runs = passing();
        runs.idle = saga_run(&[12, 14, 70], 20.0);
        assert_eq!(failed(&runs), ["2"], "an idle p99 of 70 ms");

        let mut runs = passing();
        runs.at_100.sagas_started = Some(4);
        assert_eq!(failed(&runs), ["3"], "one saga of four not final");

        let mut runs = passing();
        runs.saturation.max_rate_sagas_kept_up = Some(350.0);
        assert_eq!(failed(&runs), ["4"]);

        let mut runs = passing();
        runs.idle.processes[0].cpu_avg_pct = 3.5;
        assert_eq!(failed(&runs), ["5a"]);
    }
}

//! The report of one run: a JSON document, a Markdown summary and a
//! self-contained HTML page (tables and inline SVG charts, readable offline).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::metrics::{KindSummary, Snapshot};
use crate::procs::{GroupSeries, GroupSummary};
use crate::scenario::{Check, StepResult};
use crate::stats::LatencySummary;
use crate::svg::{Line, escape, line_chart};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mb: u64,
    pub kernel: String,
    pub os: String,
}

impl Machine {
    pub fn detect() -> Self {
        let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let memory_mb =
            crate::procs::parse_kb_field(&read("/proc/meminfo"), "MemTotal").unwrap_or(0) / 1024;
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| std::env::consts::OS.into());
        Self {
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_mb,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), {} MB RAM, {}, Linux {}",
            self.cpus, self.cpu_model, self.memory_mb, self.os, self.kernel
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub started_at: String,
    pub finished_at: String,
    pub gateway: String,
    pub command: String,
    pub machine: Machine,
    pub parameters: BTreeMap<String, Value>,
    /// The measured phase.
    pub measured: Snapshot,
    /// Requests made before the measured phase (registering users, seeding orders).
    pub setup: Option<Snapshot>,
    pub sagas_started: Option<u64>,
    pub steps: Vec<StepResult>,
    pub max_rate_held: Option<f64>,
    #[serde(default)]
    pub max_rate_sagas_kept_up: Option<f64>,
    pub processes: Vec<GroupSummary>,
    pub process_series: Vec<GroupSeries>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
}

/// A table both renderers share.
struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn markdown(&self) -> String {
        let mut out = format!(
            "| {} |\n|{}\n",
            self.headers.join(" | "),
            "---|".repeat(self.headers.len())
        );
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }

    fn html(&self) -> String {
        let mut out = String::from("<table><thead><tr>");
        for h in &self.headers {
            let _ = write!(out, "<th>{}</th>", escape(h));
        }
        out.push_str("</tr></thead><tbody>");
        for row in &self.rows {
            out.push_str("<tr>");
            for cell in row {
                // Numbers right-aligned, text left-aligned.
                let class = if cell.parse::<f64>().is_ok() {
                    ""
                } else {
                    " class=\"text\""
                };
                let _ = write!(out, "<td{class}>{}</td>", escape(cell));
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
        out
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn request_rows(kinds: &[KindSummary], total: Option<&KindSummary>) -> Table {
    let mut rows: Vec<Vec<String>> = kinds
        .iter()
        .chain(total)
        .map(|k| {
            let l = &k.latency;
            vec![
                k.kind.clone(),
                k.count.to_string(),
                k.errors.to_string(),
                format!("{:.1}", k.per_second),
                ms(l.p50_ms),
                ms(l.p90_ms),
                ms(l.p99_ms),
                ms(l.p999_ms),
                ms(l.max_ms),
            ]
        })
        .collect();
    if let Some(last) = rows.last_mut().filter(|_| total.is_some()) {
        last[0] = "all".into();
    }
    Table {
        headers: vec![
            "request", "count", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
            "max ms",
        ],
        rows,
    }
}

fn latency_cells(l: &LatencySummary) -> Vec<String> {
    vec![ms(l.p50_ms), ms(l.p90_ms), ms(l.p99_ms), ms(l.max_ms)]
}

impl Report {
    fn checks_table(&self) -> Table {
        Table {
            headers: vec!["target", "result", "detail"],
            rows: self
                .checks
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        if c.passed { "PASS" } else { "FAIL" }.into(),
                        c.detail.clone(),
                    ]
                })
                .collect(),
        }
    }

    fn saga_table(&self) -> Table {
        let saga = &self.measured.saga;
        let mut rows: Vec<Vec<String>> = saga
            .by_status
            .iter()
            .map(|(status, l)| {
                let mut row = vec![status.clone(), l.count.to_string()];
                row.extend(latency_cells(l));
                row
            })
            .collect();
        let mut all = vec!["all final".to_string(), saga.finished.to_string()];
        all.extend(latency_cells(&saga.completion));
        rows.push(all);
        if let Some(server) = &saga.server_side {
            let mut row = vec![
                "server side (updated_at - created_at)".to_string(),
                server.count.to_string(),
            ];
            row.extend(latency_cells(server));
            rows.push(row);
        }
        Table {
            headers: vec![
                "final status",
                "orders",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
            ],
            rows,
        }
    }

    fn steps_table(&self) -> Table {
        Table {
            headers: vec![
                "target/s",
                "placed",
                "achieved/s",
                "errors",
                "p50 ms",
                "p99 ms",
                "max ms",
                "held",
                "saga p50 / p99 ms (server)",
                "final statuses",
            ],
            rows: self
                .steps
                .iter()
                .map(|s| {
                    vec![
                        format!("{:.0}", s.target_rate),
                        s.placed.to_string(),
                        format!("{:.1}", s.achieved_rate),
                        s.errors.to_string(),
                        ms(s.p50_ms),
                        ms(s.p99_ms),
                        ms(s.max_ms),
                        if s.held { "yes" } else { "no" }.into(),
                        s.sagas.map_or_else(
                            || "-".into(),
                            |t| format!("{} / {}", ms(t.p50_ms), ms(t.p99_ms)),
                        ),
                        s.final_statuses
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ]
                })
                .collect(),
        }
    }

    fn errors_table(&self) -> Table {
        Table {
            headers: vec!["request", "error", "count"],
            rows: self
                .measured
                .errors
                .iter()
                .map(|e| vec![e.request.clone(), e.error.clone(), e.count.to_string()])
                .collect(),
        }
    }

    /// What the stack's CPU time is divided by: orders placed (saga and
    /// saturation runs) or requests made (the others).
    fn work_unit(&self) -> (&'static str, u64) {
        match self.sagas_started {
            Some(placed) => ("order", placed),
            None if !self.steps.is_empty() => {
                ("order", self.steps.iter().map(|step| step.placed).sum())
            }
            None => ("request", self.measured.total.count),
        }
    }

    /// The groups of the stack under test: every group but this tool.
    fn stack_groups(&self) -> impl Iterator<Item = &GroupSummary> {
        self.processes.iter().filter(|p| p.matched_by != "self")
    }

    /// `cpu_seconds` in ms per work unit; `None` without work done.
    fn ms_per_unit(&self, cpu_seconds: f64) -> Option<f64> {
        let (_, units) = self.work_unit();
        (units > 0).then(|| cpu_seconds * 1000.0 / units as f64)
    }

    /// CPU time of the stack under test, and of this tool, in ms per work
    /// unit; `None` without work done.
    pub fn cpu_ms_per_unit(&self) -> Option<(f64, f64)> {
        if self.processes.is_empty() {
            return None;
        }
        // Folds from +0.0: an empty f64 sum is -0.0, printed "-0.00".
        let stack = self.stack_groups().fold(0.0, |sum, p| sum + p.cpu_seconds);
        let tool = self
            .processes
            .iter()
            .filter(|p| p.matched_by == "self")
            .fold(0.0, |sum, p| sum + p.cpu_seconds);
        Some((self.ms_per_unit(stack)?, self.ms_per_unit(tool)?))
    }

    fn processes_table(&self) -> Table {
        let (unit, _) = self.work_unit();
        let per_unit = |cpu_seconds: f64| {
            self.ms_per_unit(cpu_seconds)
                .map_or_else(|| "-".to_string(), |ms| format!("{ms:.2}"))
        };
        let mut rows: Vec<Vec<String>> = self
            .processes
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.matched_by.clone(),
                    p.pids_seen.to_string(),
                    format!("{:.1}", p.cpu_avg_pct),
                    format!("{:.1}", p.cpu_max_pct),
                    format!("{:.1}", p.cpu_seconds),
                    per_unit(p.cpu_seconds),
                    format!("{:.1}", p.rss_avg_mb),
                    format!("{:.1}", p.rss_max_mb),
                    format!("{:.1}", p.pss_max_mb),
                ]
            })
            .collect();
        let stack: Vec<&GroupSummary> = self.stack_groups().collect();
        if stack.len() > 1 {
            let cpu_seconds = stack.iter().map(|p| p.cpu_seconds).sum::<f64>();
            rows.push(vec![
                "stack (all but this tool)".into(),
                String::new(),
                stack.iter().map(|p| p.pids_seen).sum::<usize>().to_string(),
                format!("{:.1}", stack.iter().map(|p| p.cpu_avg_pct).sum::<f64>()),
                String::new(),
                format!("{cpu_seconds:.1}"),
                per_unit(cpu_seconds),
                String::new(),
                String::new(),
                format!("{:.1}", stack.iter().map(|p| p.pss_max_mb).sum::<f64>()),
            ]);
        }
        Table {
            headers: vec![
                "process",
                "found by",
                "pids",
                "CPU avg %",
                "CPU max %",
                "CPU s",
                if unit == "order" {
                    "CPU ms per order"
                } else {
                    "CPU ms per request"
                },
                "RSS avg MB",
                "RSS max MB",
                "PSS max MB",
            ],
            rows,
        }
    }

    fn parameters_line(&self) -> String {
        self.parameters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The headline figures, as printed at the end of a run.
    pub fn headline(&self) -> String {
        let total = &self.measured.total;
        let mut out = format!(
            "{}: {} requests in {:.1} s = {:.1} req/s, {} errors; p50 {} ms, p99 {} ms",
            self.scenario,
            total.count,
            self.measured.elapsed_s,
            total.per_second,
            total.errors,
            ms(total.latency.p50_ms),
            ms(total.latency.p99_ms)
        );
        if self.sagas_started.is_some() {
            let c = &self.measured.saga.completion;
            let _ = write!(
                out,
                "\nsagas: {} final of {} placed; completion p50 {} / p90 {} / p99 {} / max {} ms",
                self.measured.saga.finished,
                self.sagas_started.unwrap_or(0),
                ms(c.p50_ms),
                ms(c.p90_ms),
                ms(c.p99_ms),
                ms(c.max_ms)
            );
        }
        if let Some((stack, tool)) = self.cpu_ms_per_unit() {
            let (unit, _) = self.work_unit();
            let _ = write!(
                out,
                "\nCPU per {unit}: {stack:.2} ms in the stack, {tool:.2} ms in this tool"
            );
        }
        if let Some(rate) = self.max_rate_held {
            let _ = write!(out, "\nhighest rate held: {rate:.0} orders/s");
        } else if !self.steps.is_empty() {
            out.push_str("\nhighest rate held: none (the first step failed)");
        }
        if self.steps.iter().any(|s| s.sagas.is_some()) {
            match self.max_rate_sagas_kept_up {
                Some(rate) => {
                    let _ = write!(out, "\nsagas kept up to: {rate:.0} orders/s");
                }
                None => out.push_str("\nsagas kept up to: none (not even in the first step)"),
            }
        }
        out
    }

    pub fn to_markdown(&self) -> String {
        let mut md = format!("# Load report: {}\n\n", self.scenario);
        let _ = writeln!(
            md,
            "- started: {} (finished {})",
            self.started_at, self.finished_at
        );
        let _ = writeln!(md, "- gateway: {}", self.gateway);
        let _ = writeln!(md, "- command: `{}`", self.command);
        let _ = writeln!(md, "- machine: {}", self.machine.describe());
        let _ = writeln!(md, "- parameters: {}", self.parameters_line());
        let _ = writeln!(md, "- measured phase: {:.1} s\n", self.measured.elapsed_s);
        md.push_str("```text\n");
        md.push_str(&self.headline());
        md.push_str("\n```\n\n");
        if !self.checks.is_empty() {
            let _ = write!(md, "## Targets\n\n{}\n", self.checks_table().markdown());
        }
        let _ = write!(
            md,
            "## Requests\n\n{}\n",
            request_rows(&self.measured.kinds, Some(&self.measured.total)).markdown()
        );
        if self.sagas_started.is_some() {
            let _ = write!(
                md,
                "## Saga completion\n\n{} orders accepted, {} reached a final status.\n\n{}\n",
                self.sagas_started.unwrap_or(0),
                self.measured.saga.finished,
                self.saga_table().markdown()
            );
        }
        if !self.steps.is_empty() {
            let _ = write!(
                md,
                "## Saturation steps\n\n{}\n",
                self.steps_table().markdown()
            );
        }
        let _ = write!(md, "## Errors by kind\n\n");
        if self.measured.errors.is_empty() {
            md.push_str("None.\n\n");
        } else {
            let _ = writeln!(md, "{}", self.errors_table().markdown());
        }
        let _ = write!(
            md,
            "## Processes (sampled every second)\n\nCPU in % of one core. PostgreSQL's RSS sum counts shared buffers once per process; PSS does not.\n\n{}\n",
            self.processes_table().markdown()
        );
        let _ = writeln!(
            md,
            "Load generator lag (how late requests were sent): p99 {} ms, max {} ms.\n",
            ms(self.measured.generator_lag.p99_ms),
            ms(self.measured.generator_lag.max_ms)
        );
        if let Some(setup) = &self.setup {
            let _ = write!(
                md,
                "## Set-up (not part of the figures above)\n\n{}\n",
                request_rows(&setup.kinds, None).markdown()
            );
        }
        if !self.notes.is_empty() {
            md.push_str("## Notes\n\n");
            for note in &self.notes {
                let _ = writeln!(md, "- {note}");
            }
        }
        md
    }

    fn charts(&self) -> Vec<String> {
        let mut charts = Vec::new();
        let kinds: Vec<&str> = self
            .measured
            .kinds
            .iter()
            .map(|k| k.kind.as_str())
            .collect();
        let per_kind =
            |pick: &dyn Fn(&crate::metrics::SecondPoint, &str) -> Option<f64>| -> Vec<Line> {
                kinds
                    .iter()
                    .map(|kind| {
                        Line::new(
                            *kind,
                            self.measured
                                .seconds
                                .iter()
                                .filter_map(|p| Some((p.second as f64, pick(p, kind)?)))
                                .collect(),
                        )
                    })
                    .collect()
            };
        charts.push(line_chart(
            "Requests started per second",
            "second of the run",
            "requests",
            &per_kind(&|p, k| Some(*p.requests.get(k).unwrap_or(&0) as f64)),
        ));
        charts.push(line_chart(
            "p99 latency per second (by start second)",
            "second of the run",
            "ms",
            &per_kind(&|p, k| p.p99_ms.get(k).copied()),
        ));
        charts.push(line_chart(
            "p50 latency per second (by start second)",
            "second of the run",
            "ms",
            &per_kind(&|p, k| p.p50_ms.get(k).copied()),
        ));
        if self.sagas_started.is_some() {
            charts.push(line_chart(
                "Saga completion: cumulative distribution",
                "completion time, ms",
                "fraction of final orders",
                &[Line::new("all final", self.measured.saga.cdf.clone())],
            ));
            charts.push(line_chart(
                "Sagas finished per second",
                "second of the run",
                "sagas",
                &[Line::new(
                    "finished",
                    self.measured
                        .seconds
                        .iter()
                        .map(|p| (p.second as f64, p.sagas_finished as f64))
                        .collect(),
                )],
            ));
        }
        if !self.steps.is_empty() {
            let by_step = |f: &dyn Fn(&StepResult) -> f64| -> Vec<(f64, f64)> {
                self.steps.iter().map(|s| (s.target_rate, f(s))).collect()
            };
            charts.push(line_chart(
                "Saturation: achieved vs target rate",
                "target orders/s",
                "orders/s",
                &[
                    Line::new("target", by_step(&|s| s.target_rate)),
                    Line::new("achieved", by_step(&|s| s.achieved_rate)),
                ],
            ));
            charts.push(line_chart(
                "Saturation: place_order latency per step",
                "target orders/s",
                "ms",
                &[
                    Line::new("p50", by_step(&|s| s.p50_ms)),
                    Line::new("p99", by_step(&|s| s.p99_ms)),
                ],
            ));
        }
        charts.push(line_chart(
            "In flight (max per second)",
            "second of the run",
            "requests",
            &[Line::new(
                "in flight",
                self.measured
                    .seconds
                    .iter()
                    .map(|p| (p.second as f64, p.max_in_flight as f64))
                    .collect(),
            )],
        ));
        let proc_lines = |f: &dyn Fn(&crate::procs::ProcPoint) -> Option<f64>| -> Vec<Line> {
            self.process_series
                .iter()
                .filter(|s| s.pids_seen > 0)
                .map(|s| {
                    Line::new(
                        s.name.clone(),
                        s.points
                            .iter()
                            .filter_map(|p| Some((p.t_s, f(p)?)))
                            .collect(),
                    )
                })
                .collect()
        };
        charts.push(line_chart(
            "CPU per process group (% of one core)",
            "second of the run",
            "% CPU",
            &proc_lines(&|p| Some(p.cpu_pct)),
        ));
        charts.push(line_chart(
            "Memory per process group (PSS)",
            "second of the run",
            "MB",
            &proc_lines(&|p| p.pss_mb),
        ));
        charts
    }

    pub fn to_html(&self) -> String {
        let mut html =
            String::from("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
        let _ = write!(
            html,
            "<title>Load report: {}</title><style>\
             body{{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}}\
             table{{border-collapse:collapse;margin:8px 0 20px}}\
             th,td{{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}}\
             th{{background:#f3f3f3}} td.text,th{{text-align:left}}\
             pre{{background:#f6f6f6;padding:10px}} .charts svg{{display:block;margin:10px 0}}\
             </style></head><body>",
            escape(&self.scenario)
        );
        let _ = write!(html, "<h1>Load report: {}</h1><ul>", escape(&self.scenario));
        for (k, v) in [
            (
                "started",
                format!("{} (finished {})", self.started_at, self.finished_at),
            ),
            ("gateway", self.gateway.clone()),
            ("command", self.command.clone()),
            ("machine", self.machine.describe()),
            ("parameters", self.parameters_line()),
            (
                "measured phase",
                format!("{:.1} s", self.measured.elapsed_s),
            ),
        ] {
            let _ = write!(html, "<li><b>{k}</b>: {}</li>", escape(&v));
        }
        let _ = write!(html, "</ul><pre>{}</pre>", escape(&self.headline()));
        if !self.checks.is_empty() {
            let _ = write!(html, "<h2>Targets</h2>{}", self.checks_table().html());
        }
        let _ = write!(
            html,
            "<h2>Requests</h2>{}",
            request_rows(&self.measured.kinds, Some(&self.measured.total)).html()
        );
        if self.sagas_started.is_some() {
            let _ = write!(html, "<h2>Saga completion</h2>{}", self.saga_table().html());
        }
        if !self.steps.is_empty() {
            let _ = write!(
                html,
                "<h2>Saturation steps</h2>{}",
                self.steps_table().html()
            );
        }
        let _ = write!(html, "<h2>Errors by kind</h2>");
        if self.measured.errors.is_empty() {
            html.push_str("<p>None.</p>");
        } else {
            html.push_str(&self.errors_table().html());
        }
        let _ = write!(
            html,
            "<h2>Processes</h2><p>Sampled every second from /proc. CPU in % of one core; PSS shares PostgreSQL's shared buffers fairly, the RSS sum does not.</p>{}<p>Load generator lag: p99 {} ms, max {} ms.</p>",
            self.processes_table().html(),
            ms(self.measured.generator_lag.p99_ms),
            ms(self.measured.generator_lag.max_ms)
        );
        html.push_str("<h2>Charts</h2><div class=\"charts\">");
        for chart in self.charts() {
            html.push_str(&chart);
        }
        html.push_str("</div>");
        if let Some(setup) = &self.setup {
            let _ = write!(
                html,
                "<h2>Set-up (not part of the figures above)</h2>{}",
                request_rows(&setup.kinds, None).html()
            );
        }
        if !self.notes.is_empty() {
            html.push_str("<h2>Notes</h2><ul>");
            for note in &self.notes {
                let _ = write!(html, "<li>{}</li>", escape(note));
            }
            html.push_str("</ul>");
        }
        html.push_str("</body></html>\n");
        html
    }

    /// Writes `<dir>/<scenario>-<timestamp>.{json,md,html}`; returns the HTML path.
    pub fn write(&self, dir: &Path, stamp: &str) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(dir)?;
        let base = dir.join(format!("{}-{stamp}", self.scenario));
        fs::write(
            base.with_extension("json"),
            serde_json::to_string_pretty(self)?,
        )?;
        fs::write(base.with_extension("md"), self.to_markdown())?;
        let html = base.with_extension("html");
        fs::write(&html, self.to_html())?;
        Ok(html)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::{Outcome, Recorder};
    use crate::procs::ProcPoint;

    pub(crate) fn sample_report() -> Report {
        let rec = Recorder::new();
        for ms in 1..=50 {
            rec.record_ms("place_order", ms, &Outcome::Ok);
            rec.record_ms("get_order", ms / 2 + 1, &Outcome::Ok);
        }
        rec.record_ms("place_order", 3, &Outcome::Status(503, None));
        rec.record_saga("DELIVERY_SCHEDULED", Duration::from_millis(140), None);
        rec.record_saga("REJECTED", Duration::from_millis(90), None);
        let series = GroupSeries {
            name: "gateway".into(),
            matched_by: "port 8084".into(),
            pids_seen: 1,
            points: vec![ProcPoint {
                t_s: 1.0,
                cpu_pct: 40.0,
                rss_mb: 20.0,
                pss_mb: Some(19.0),
                processes: 1,
            }],
        };
        Report {
            scenario: "saga".into(),
            started_at: "2026-11-25T14:00:00Z".into(),
            finished_at: "2026-11-25T14:01:00Z".into(),
            gateway: "http://127.0.0.1:8084".into(),
            command: "load saga --rate 200".into(),
            machine: Machine::detect(),
            parameters: BTreeMap::from([("rate_per_s".into(), Value::from(200))]),
            measured: rec.snapshot(),
            setup: None,
            sagas_started: Some(2),
            steps: vec![StepResult {
                target_rate: 100.0,
                duration_s: 10.0,
                placed: 1000,
                errors: 0,
                achieved_rate: 100.0,
                p50_ms: 5.0,
                p99_ms: 20.0,
                max_ms: 30.0,
                held: true,
                final_statuses: BTreeMap::from([("DELIVERY_SCHEDULED".into(), 1000)]),
                sagas: None,
            }],
            max_rate_held: Some(100.0),
            max_rate_sagas_kept_up: None,
            processes: vec![series.summary()],
            process_series: vec![series],
            checks: vec![Check {
                name: "every saga completes".into(),
                passed: false,
                detail: "x <y>".into(),
            }],
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn markdown_has_every_section() {
        let md = sample_report().to_markdown();
        for section in [
            "## Targets",
            "## Requests",
            "## Saga completion",
            "## Saturation steps",
            "## Errors by kind",
            "## Processes",
            "## Notes",
        ] {
            assert!(md.contains(section), "missing {section}");
        }
        assert!(md.contains("| place_order | 51 | 1 |"));
        assert!(md.contains("http 503"));
        assert!(md.contains("| DELIVERY_SCHEDULED | 1 |"));
        assert!(md.contains("| gateway | port 8084 | 1 | 40.0 |"));
        // 0.4 CPU seconds over the 2 orders placed.
        assert!(md.contains("| 0.4 | 200.00 |"), "{md}");
        assert!(
            md.contains("CPU per order: 200.00 ms in the stack, 0.00 ms in this tool"),
            "{md}"
        );
        assert!(md.contains("highest rate held: 100 orders/s"));
    }

    #[test]
    fn cpu_is_divided_by_the_orders_placed_and_summed_over_the_stack() {
        let mut report = sample_report();
        let group = |name: &str, matched_by: &str, cpu_pct: f64| {
            GroupSeries {
                name: name.into(),
                matched_by: matched_by.into(),
                pids_seen: 1,
                points: vec![ProcPoint {
                    t_s: 2.0,
                    cpu_pct,
                    rss_mb: 10.0,
                    pss_mb: None,
                    processes: 1,
                }],
            }
            .summary()
        };
        report.processes.push(group("postgres", "port 55432", 60.0));
        report
            .processes
            .push(group("load (this tool)", "self", 10.0));
        // gateway 0.4 s + postgres 1.2 s over 2 orders; the tool 0.2 s.
        let (stack, tool) = report.cpu_ms_per_unit().unwrap();
        assert!((stack - 800.0).abs() < 1e-6, "{stack}");
        assert!((tool - 100.0).abs() < 1e-6, "{tool}");
        let md = report.to_markdown();
        assert!(
            md.contains("| stack (all but this tool) |  | 2 | 100.0 |  | 1.6 | 800.00 |"),
            "{md}"
        );
        assert!(md.contains("CPU per order: 800.00 ms in the stack, 100.00 ms in this tool"));

        // Saturation: the orders placed over all steps (1000 in the sample).
        report.sagas_started = None;
        assert!(
            report
                .to_markdown()
                .contains("CPU per order: 1.60 ms in the stack")
        );
        report.steps.clear();
        assert!(report.to_markdown().contains("CPU ms per request"));
    }

    #[test]
    fn html_is_self_contained() {
        let html = sample_report().to_html();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(!html.contains("<script"));
        assert!(!html.contains("src=\"http"));
        assert!(!html.contains("href=\"http"));
        assert!(html.matches("<svg").count() >= 8);
        assert!(html.contains("x &lt;y&gt;"));
        assert!(html.contains("FAIL"));
    }

    #[test]
    fn writes_three_files() {
        let dir = std::env::temp_dir().join(format!("perf-report-test-{}", std::process::id()));
        let html = sample_report().write(&dir, "20261125-140000").unwrap();
        assert!(html.ends_with("saga-20261125-140000.html"));
        let json: Value = serde_json::from_str(
            &fs::read_to_string(dir.join("saga-20261125-140000.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["measured"]["total"]["count"], 101);
        assert!(dir.join("saga-20261125-140000.md").exists());
        fs::remove_dir_all(dir).unwrap();
    }
}

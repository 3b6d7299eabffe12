//! One run: set-up (users, seed data), the measured scenario with the /proc
//! sampler and a progress line, then the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::Api;
use crate::cli::{Cli, Scenario};
use crate::metrics::Recorder;
use crate::procs::{SamplerHandle, default_groups, parse_groups};
use crate::report::{Machine, Report};
use crate::scenario::{self, Outcomes};

/// Lifts the open-files limit to the hard limit: thousands of connections need it.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn check_gateway(base: &str) -> anyhow::Result<()> {
    let url = format!("{}/api/health", base.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => anyhow::bail!("{url} answered {}: is the stack ready?", response.status()),
        Err(error) => anyhow::bail!(
            "cannot reach the gateway at {url}: {error} (start it with `cargo xtask up`)"
        ),
    }
}

fn progress(recorder: Arc<Recorder>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let (second, completed, errors) = recorder.current_second();
            eprintln!(
                "[{second:>4} s] {completed} answers/s ({errors} errors), {} in flight",
                recorder.in_flight()
            );
        }
    })
}

/// Runs the scenario `cli` asks for; returns the report and the path of its HTML file.
pub async fn execute(cli: &Cli, command: String) -> anyhow::Result<(Report, PathBuf)> {
    cli.validate()?;
    raise_open_files_limit();
    check_gateway(&cli.gateway).await?;
    let groups = match &cli.procs {
        Some(spec) => parse_groups(spec)?,
        None => default_groups(),
    };

    let setup = Arc::new(Recorder::new());
    let setup_api = Api::new(&cli.gateway, cli.request_timeout(), setup.clone())?;
    let products = setup_api.load_catalog().await?;
    eprintln!("ordering {products} products of the catalog");
    let customers = match cli.scenario {
        Scenario::Light => Vec::new(),
        _ => {
            let customers =
                scenario::register_customers(&setup_api, cli, cli.scenario.name(), cli.users(), 4)
                    .await?;
            eprintln!("registered {} of {} users", customers.len(), cli.users());
            customers
        }
    };
    if cli.scenario == Scenario::Mixed {
        scenario::mixed::seed(&setup_api, &customers, cli.top_up_cents).await;
    }

    let started_at = chrono::Utc::now();
    let recorder = Arc::new(Recorder::new());
    let api = setup_api.with_recorder(recorder.clone());
    let sampler = SamplerHandle::spawn(groups, Some("load (this tool)"), Duration::from_secs(1));
    let ticker = progress(recorder.clone());
    let result = match cli.scenario {
        Scenario::Light => scenario::light::run(&api, cli).await,
        Scenario::Saga => scenario::saga::run(&api, cli, &customers).await,
        Scenario::Saturation => scenario::saturation::run(&api, cli, &customers).await,
        Scenario::Mixed => scenario::mixed::run(&api, cli, &customers).await,
        Scenario::ReportCard => Err(anyhow::anyhow!(
            "report-card runs the other scenarios (crate::report_card::run)"
        )),
    };
    ticker.abort();
    let process_series = sampler.stop();
    let finished_at = chrono::Utc::now();
    let outcomes: Outcomes = result?;

    let setup_snapshot = setup.snapshot();
    let report = Report {
        scenario: cli.scenario.name().to_string(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished_at: finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        gateway: cli.gateway.clone(),
        command,
        machine: Machine::detect(),
        parameters: outcomes.parameters,
        measured: recorder.snapshot(),
        setup: (setup_snapshot.total.count > 0).then_some(setup_snapshot),
        sagas_started: outcomes.sagas_started,
        steps: outcomes.steps,
        max_rate_held: outcomes.max_rate_held,
        max_rate_sagas_kept_up: outcomes.max_rate_sagas_kept_up,
        processes: process_series.iter().map(|s| s.summary()).collect(),
        process_series,
        checks: outcomes.checks,
        notes: outcomes.notes,
    };
    let dir = cli
        .report_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports"));
    let path = report.write(&dir, &started_at.format("%Y%m%d-%H%M%S").to_string())?;
    Ok((report, path))
}

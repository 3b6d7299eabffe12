//! `cargo run --release -p perf --bin load -- <light|saturation|saga|mixed|report-card> [options]`
//!
//! `report-card` exits 2 when a target is missed.

use std::process::ExitCode;

use clap::Parser;
use perf::cli::{Cli, Scenario};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = std::iter::once("load".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    if cli.scenario == Scenario::ReportCard {
        return match perf::report_card::run(&cli).await {
            Ok((lines, card, path)) => {
                println!("{card}");
                println!("report card: {}", path.display());
                if lines.iter().all(|line| line.passed) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(2)
                }
            }
            Err(error) => {
                eprintln!("load: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    match perf::run::execute(&cli, command).await {
        Ok((report, html)) => {
            println!("{}", report.to_markdown());
            println!("report: {}", html.display());
            println!("        {}", html.with_extension("md").display());
            println!("        {}", html.with_extension("json").display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

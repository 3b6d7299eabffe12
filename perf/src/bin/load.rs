//! `cargo run --release -p perf --bin load -- <light|saturation|saga|mixed> [options]`

use std::process::ExitCode;

use clap::Parser;
use perf::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = std::iter::once("load".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
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

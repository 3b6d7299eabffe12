use std::process::ExitCode;

use commerce_base::telemetry;
use outbox_relay::{config::RelayConfig, create_slots, startup::Application};

/// `RUST_LOG` when unset: rskafka logs every reconnect at info.
const LOG_DIRECTIVES: &str = "info,rskafka=warn";

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("-h" | "--help") => {
            println!("{}", create_slots::USAGE);
            return Ok(ExitCode::SUCCESS);
        }
        Some("create-slots") => {
            let recreate = recreate_args(&args[1..])?;
            telemetry::init("outbox-relay", LOG_DIRECTIVES);
            let config = RelayConfig::load()?;
            let ok = create_slots::run(&config, &recreate).await?;
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Some(_) => anyhow::bail!("unexpected arguments {args:?}\n{}", create_slots::USAGE),
    }
    telemetry::init("outbox-relay", LOG_DIRECTIVES);
    let config = RelayConfig::load()?;
    let application = Application::build(config)?;
    application.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

/// The sources named by `--recreate <source>` (repeatable).
fn recreate_args(args: &[String]) -> anyhow::Result<Vec<String>> {
    let mut sources = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let source = match arg.strip_prefix("--recreate=") {
            Some(source) => source.to_owned(),
            None if arg == "--recreate" => args
                .next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("--recreate needs a source name"))?,
            None => anyhow::bail!("unexpected argument {arg}\n{}", create_slots::USAGE),
        };
        sources.push(source);
    }
    Ok(sources)
}

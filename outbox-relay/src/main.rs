use outbox_relay::{config::RelayConfig, startup::Application, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let config = RelayConfig::load()?;
    let application = Application::build(config)?;
    application.run_until_stopped().await?;
    Ok(())
}

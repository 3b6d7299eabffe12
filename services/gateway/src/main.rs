use gateway::{config::Config, startup::Application};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    commerce_common::telemetry::init("gateway");
    let config = Config::load()?;
    let application = Application::build(config).await?;
    tracing::info!(port = application.port(), "gateway listening");
    application.run_until_stopped().await?;
    Ok(())
}

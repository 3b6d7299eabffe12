use delivery_service::{config::Settings, startup::Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_common::telemetry::init(delivery_service::config::SERVICE);
    let settings = Settings::load()?;
    Application::build(settings)
        .await?
        .run_until_stopped()
        .await
}

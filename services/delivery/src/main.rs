use commerce_common::service::Command;
use delivery_service::{
    config::Settings,
    startup::{self, Application},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_common::telemetry::init(delivery_service::config::SERVICE);
    let command = Command::from_env()?;
    let settings = Settings::load()?;
    match command {
        Command::Serve => {
            Application::build(settings)
                .await?
                .run_until_stopped()
                .await
        }
        Command::ReplayDeadLetters(ids) => startup::replay_dead_letters(settings, &ids).await,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_common::service::main::<delivery_service::startup::DeliveryService>().await
}

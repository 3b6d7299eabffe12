#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_common::service::main::<order_service::startup::OrderService>().await
}

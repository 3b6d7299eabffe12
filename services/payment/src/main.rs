#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_common::service::main::<payment_service::startup::PaymentService>().await
}

use gateway::{config::Config, keygen, startup::Application};

const USAGE: &str = "usage: gateway                        run the gateway (configured by APP__... / APP_CONFIG_FILE)
       gateway generate-keys <dir>    write jwt.pem + jwt.pub.pem (Ed25519) into <dir> unless present";

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {}
        [command, dir] if command == "generate-keys" => {
            println!("{}", keygen::ensure_key_pair(std::path::Path::new(dir))?);
            return Ok(());
        }
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            return Ok(());
        }
        _ => anyhow::bail!("unexpected arguments {args:?}\n{USAGE}"),
    }
    commerce_common::telemetry::init("gateway");
    let config = Config::load()?;
    let application = Application::build(config).await?;
    tracing::info!(port = application.port(), "gateway listening");
    application.run_until_stopped().await?;
    Ok(())
}

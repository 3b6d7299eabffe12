use gateway::{config::Config, keygen, startup::Application};

const USAGE: &str = "usage: gateway                        run the gateway (configured by APP__... / APP_CONFIG_FILE)
       gateway generate-keys <dir> [<public-dir>]
                                      write jwt.pem + jwt.pub.pem (Ed25519) into <dir> unless present,
                                      and a copy of jwt.pub.pem into <public-dir> (what the services mount)";

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {}
        [command, dir, public @ ..] if command == "generate-keys" && public.len() <= 1 => {
            let dir = std::path::Path::new(dir);
            println!("{}", keygen::ensure_key_pair(dir)?);
            if let [public] = public {
                let copy = keygen::publish_public_key(dir, std::path::Path::new(public))?;
                println!("the public key is also in {}", copy.display());
            }
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

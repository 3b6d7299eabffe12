use commerce_common::service::{self, Command};
use gateway::{keygen, startup::Gateway};

const USAGE: &str = "usage: gateway                        run the gateway (configured by APP__... / APP_CONFIG_FILE)
       gateway generate-keys <dir> [<public-dir>]
                                      write jwt.pem + jwt.pub.pem (Ed25519) into <dir> unless present,
                                      and a copy of jwt.pub.pem into <public-dir> (what the services mount)";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => service::run::<Gateway>(Command::Serve).await,
        [command, dir, public @ ..] if command == "generate-keys" && public.len() <= 1 => {
            let dir = std::path::Path::new(dir);
            println!("{}", keygen::ensure_key_pair(dir)?);
            if let [public] = public {
                let copy = keygen::publish_public_key(dir, std::path::Path::new(public))?;
                println!("the public key is also in {}", copy.display());
            }
            Ok(())
        }
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => anyhow::bail!("unexpected arguments {args:?}\n{USAGE}"),
    }
}

//! The local Kafka-protocol broker, tansu (FACTS.md): installed once per
//! machine into the cache, started with memory or SQLite storage, stopped
//! with SIGINT (it was seen ignoring SIGTERM) and SIGKILL after a timeout.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    paths,
    process::{self, Options, Proc, StopPolicy, say},
    signals,
};

pub enum Storage {
    /// Fast, gone when the broker stops.
    Memory,
    /// Durable: `tansu.db` in this directory.
    Sqlite(PathBuf),
}

/// Installs tansu into the per-machine cache unless it is there.
pub fn ensure_installed() -> anyhow::Result<PathBuf> {
    let bin = paths::tansu_bin();
    if bin.is_file() {
        return Ok(bin);
    }
    anyhow::ensure!(
        std::env::var_os("TANSU_BIN").is_none(),
        "TANSU_BIN points at {}, which does not exist",
        bin.display()
    );
    let root = paths::tansu_root();
    say(&format!(
        "the broker (tansu {}) is not installed yet: building it into {} with `cargo install`. \
         The first build takes about 20 minutes on 2 cores; later runs reuse it.",
        paths::TANSU_VERSION,
        root.display()
    ));
    let started = Instant::now();
    let mut install = Command::new(paths::cargo());
    install
        .args([
            "install",
            "tansu",
            "--version",
            paths::TANSU_VERSION,
            "--locked",
        ])
        .args(["--features", "dynostore,libsql,postgres", "--root"])
        .arg(&root)
        // A throwaway target dir (cargo's default for install), not the
        // workspace's: the broker build is 1.5 GB we do not need afterwards.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    process::run_inherited(install).map_err(|e| {
        anyhow::anyhow!(
            "installing tansu failed: {e:#}. Retry with `cargo install tansu --version {} --locked \
             --features dynostore,libsql,postgres --root {}`",
            paths::TANSU_VERSION,
            root.display()
        )
    })?;
    say(&format!("tansu installed in {:.0?}", started.elapsed()));
    anyhow::ensure!(
        bin.is_file(),
        "cargo install did not produce {}",
        bin.display()
    );
    Ok(bin)
}

/// Starts the broker on 127.0.0.1:`port` and waits until it accepts
/// connections.
pub fn start(port: u16, storage: Storage, log_file: Option<PathBuf>) -> anyhow::Result<Proc> {
    let bin = ensure_installed()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(&bin);
    command
        .arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .arg("--storage-engine");
    match &storage {
        Storage::Memory => {
            command.arg("memory://tansu/");
        }
        Storage::Sqlite(dir) => {
            // tansu resolves sqlite:// paths against its working directory.
            std::fs::create_dir_all(dir)?;
            command.arg("sqlite://tansu.db").current_dir(dir);
        }
    }
    // Its own settings come from these variables when set: keep them out.
    for var in [
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
    ] {
        command.env_remove(var);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        command.env("NO_COLOR", "1");
    }
    let options = Options {
        run_as: None,
        death_signal: libc::SIGINT,
        stop: StopPolicy(vec![(libc::SIGINT, Duration::from_secs(5))]),
        log_file,
    };
    let mut broker = Proc::spawn("tansu", command, options)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = broker.exited() {
            anyhow::bail!(
                "the broker exited during start-up ({})",
                process::describe(status)
            );
        }
        if let Some(signal) = signals::received() {
            anyhow::bail!("interrupted by {}", signals::name(signal));
        }
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
            .is_ok()
        {
            return Ok(broker);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the broker did not listen on port {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The topics of the event contract (`commerce_common::events::topics`).
pub const TOPICS: [&str; 4] = ["users", "orders", "payments", "deliveries"];

/// Creates the topics on our broker before any service starts, so every
/// consumer sees its partitions (empty after a restart of the in-memory
/// broker) before the relay publishes anything. Failures only warn: the
/// relay creates missing topics too.
pub fn create_topics(port: u16, partitions: u32) {
    let Ok(bin) = ensure_installed() else { return };
    for topic in TOPICS {
        let mut command = Command::new(&bin);
        command
            .args(["topic", "create", topic, "--broker"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--partitions")
            .arg(partitions.to_string());
        if let Err(e) = process::run("tansu", command, None) {
            say(&format!(
                "could not create topic {topic} (the relay will): {e:#}"
            ));
        }
    }
}

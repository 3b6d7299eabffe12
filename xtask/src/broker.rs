//! The local broker: Apache Kafka, one KRaft node (broker and controller in
//! one JVM), the broker compose.yaml runs. Its jars come from Maven Central
//! once per version into the per-machine cache (`xtask/kafka/pom.xml` names
//! them); `xtask/kafka/run.sh` configures, formats and starts it. Records
//! are durable in the node's data directory: a restart resumes with its
//! topics and records.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;
use rskafka::client::{
    ClientBuilder,
    error::{Error as KafkaError, ProtocolError},
};

use crate::{
    paths,
    process::{self, Options, Proc, StopPolicy, say},
    signals,
};

/// The topics of the event contract (`commerce_common::events::topics`).
pub const TOPICS: [&str; 4] = ["users", "orders", "payments", "deliveries"];

/// How long a node may take from `java` to answering metadata requests.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The Kafka version the pom pins (`<kafka.version>`).
pub fn version() -> anyhow::Result<String> {
    let pom = paths::kafka_pom();
    let text =
        std::fs::read_to_string(&pom).with_context(|| format!("reading {}", pom.display()))?;
    let start = text
        .find("<kafka.version>")
        .map(|i| i + "<kafka.version>".len())
        .with_context(|| format!("{} has no <kafka.version>", pom.display()))?;
    let end = text[start..]
        .find('<')
        .with_context(|| format!("{}: unterminated <kafka.version>", pom.display()))?;
    Ok(text[start..start + end].trim().to_owned())
}

/// The directory of the broker's jars, fetched with Maven unless already
/// in the cache.
pub fn ensure_installed() -> anyhow::Result<PathBuf> {
    let version = version()?;
    let home = paths::kafka_home(&version);
    let libs = home.join("libs");
    if libs.join(".complete").is_file() {
        return Ok(libs);
    }
    check_java()?;
    let mvn = which("mvn").context(
        "Maven (`mvn`) is not installed; it fetches the Kafka broker from Maven Central: \
         `apt-get install maven` (.ci/run does this on a new machine)",
    )?;
    say(&format!(
        "fetching Apache Kafka {version} (broker jars) from Maven Central into {} (once per version)",
        libs.display()
    ));
    let started = Instant::now();
    let partial = home.join("libs.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(&home)?;
    let mut fetch = Command::new(mvn);
    fetch
        .args(["--batch-mode", "--quiet", "--file"])
        .arg(paths::kafka_pom())
        .arg("dependency:copy-dependencies")
        .arg("-DincludeScope=runtime")
        .arg(format!("-DoutputDirectory={}", partial.display()));
    process::run("maven", fetch, None).context(
        "fetching the Kafka broker with Maven failed (see its output above); \
         check that Maven Central is reachable",
    )?;
    std::fs::write(partial.join(".complete"), format!("{version}\n"))?;
    if libs.exists() {
        std::fs::remove_dir_all(&libs)?;
    }
    std::fs::rename(&partial, &libs)?;
    say(&format!(
        "Kafka {version} fetched in {:.0?}",
        started.elapsed()
    ));
    Ok(libs)
}

/// Kafka 4 needs Java 17 or newer (`JAVA_HOME`, else `java` on the PATH).
fn check_java() -> anyhow::Result<()> {
    let java = java();
    let output = Command::new(&java)
        .arg("-version")
        .output()
        .with_context(|| {
            format!(
                "Java is not installed ({java} not found); the broker needs Java 17+: \
                 `apt-get install openjdk-17-jre-headless`"
            )
        })?;
    // `openjdk version "17.0.15" 2025-04-15` on stderr.
    let text = String::from_utf8_lossy(&output.stderr);
    let major = text
        .split('"')
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(major) if major >= 17 => Ok(()),
        Some(major) => anyhow::bail!(
            "{java} is Java {major}; the Kafka broker needs Java 17 or newer (set JAVA_HOME)"
        ),
        None => anyhow::bail!("cannot tell the version of {java} from: {}", text.trim()),
    }
}

fn java() -> String {
    std::env::var_os("JAVA_HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join("bin/java").display().to_string())
        .unwrap_or_else(|| "java".into())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// One Kafka node: clients on 127.0.0.1:`port`, its controller on
/// `controller_port`, data in `dir` (formatted on the first start).
#[derive(Clone)]
pub struct Node {
    pub port: u16,
    pub controller_port: u16,
    pub dir: PathBuf,
    /// JVM heap, e.g. "512m".
    pub heap: &'static str,
    /// Output to this file instead of our stdout.
    pub log_file: Option<PathBuf>,
}

impl Node {
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the node and waits until it answers metadata requests.
    pub fn start(&self) -> anyhow::Result<Proc> {
        let libs = ensure_installed()?;
        let mut command = Command::new(paths::kafka_run_script());
        command
            .arg(&libs)
            .arg(&self.dir)
            .arg(self.port.to_string())
            .arg(self.controller_port.to_string())
            .env("KAFKA_HEAP", self.heap);
        let options = Options {
            run_as: None,
            death_signal: libc::SIGTERM,
            // SIGTERM is a controlled shutdown: it flushes and closes the
            // log, so the next start needs no recovery.
            stop: StopPolicy::term(Duration::from_secs(30)),
            log_file: self.log_file.clone(),
        };
        let started = Instant::now();
        let mut broker = Proc::spawn("kafka", command, options)?;
        let brokers = self.brokers();
        let deadline = started + START_TIMEOUT;
        loop {
            if let Some(status) = broker.exited() {
                let log = match &self.log_file {
                    Some(file) => format!(
                        "its log ({}) ends with:\n{}",
                        file.display(),
                        process::log_tail(file, 10).join("\n")
                    ),
                    None => "its log is above".into(),
                };
                return Err(anyhow::Error::new(StartupExit).context(format!(
                    "Kafka exited during start-up ({}); {log}",
                    process::describe(status)
                )));
            }
            if let Some(signal) = signals::received() {
                anyhow::bail!("interrupted by {}", signals::name(signal));
            }
            let last = match block_on(answers_metadata(&brokers)) {
                Ok(()) => {
                    say(&format!(
                        "Kafka answers on {brokers} ({:.1} s)",
                        started.elapsed().as_secs_f64()
                    ));
                    return Ok(broker);
                }
                Err(e) => e,
            };
            anyhow::ensure!(
                Instant::now() < deadline,
                "Kafka did not answer metadata requests on {brokers} within {START_TIMEOUT:?} \
                 (last: {last})"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Kafka ended during start-up (e.g. a port taken meanwhile), as opposed to
/// not answering in time.
#[derive(Debug)]
pub struct StartupExit;

impl std::fmt::Display for StartupExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kafka exited during start-up")
    }
}

impl std::error::Error for StartupExit {}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

async fn client(brokers: &str) -> Result<rskafka::client::Client, String> {
    let bootstrap = brokers.split(',').map(|b| b.trim().to_owned()).collect();
    tokio::time::timeout(
        Duration::from_secs(2),
        ClientBuilder::new(bootstrap).build(),
    )
    .await
    .map_err(|_| "no answer within 2 s".to_owned())?
    .map_err(|e| e.to_string())
}

async fn answers_metadata(brokers: &str) -> Result<(), String> {
    let client = client(brokers).await?;
    tokio::time::timeout(Duration::from_secs(2), client.list_topics())
        .await
        .map_err(|_| "no metadata within 2 s".to_owned())?
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Creates the topics of the contract that do not exist yet, so every
/// consumer finds its partitions before the relay publishes anything (the
/// relay would create them too, but a service starts first).
pub fn create_topics(brokers: &str, partitions: u32) -> anyhow::Result<()> {
    block_on(async {
        let client = client(brokers).await.map_err(anyhow::Error::msg)?;
        let existing: Vec<String> = client
            .list_topics()
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        let controller = client.controller_client()?;
        for topic in TOPICS {
            if existing.iter().any(|t| t == topic) {
                continue;
            }
            let partitions = i32::try_from(partitions).context("--partitions is too large")?;
            match controller.create_topic(topic, partitions, 1, 10_000).await {
                Ok(())
                | Err(KafkaError::ServerError {
                    protocol_error: ProtocolError::TopicAlreadyExists,
                    ..
                }) => {}
                Err(e) => anyhow::bail!("creating topic {topic} on {brokers}: {e}"),
            }
            say(&format!("created topic {topic} ({partitions} partitions)"));
        }
        // Kafka answers CreateTopics before its metadata lists the topics.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let listed: Vec<String> = client
                .list_topics()
                .await?
                .into_iter()
                .filter(|t| !t.partitions.is_empty())
                .map(|t| t.name)
                .collect();
            if TOPICS.iter().all(|t| listed.iter().any(|l| l == t)) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the topics {TOPICS:?} are not all listed by {brokers} 15 s after creating them"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use crate::paths;

    /// kafka-storage reads a cluster id that starts with '-' as an option
    /// and Kafka does not start; one random id in 64 does. Of 400 ids drawn
    /// without the check, all start otherwise with a chance of 0.2%.
    #[test]
    fn a_fresh_cluster_id_never_starts_with_a_dash() {
        let output = Command::new("bash")
            .arg(paths::kafka_run_script())
            .args(["--new-cluster-id", "400"])
            .output()
            .expect("bash runs");
        assert!(output.status.success(), "{output:?}");
        let ids = String::from_utf8(output.stdout).expect("ids are ASCII");
        let ids: Vec<&str> = ids.lines().collect();
        assert_eq!(ids.len(), 400);
        for id in ids {
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-'), "{id}");
        }
    }
}

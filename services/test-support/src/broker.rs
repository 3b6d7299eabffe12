//! Kafka nodes of a test's own: `xtask/kafka/run.sh` (the script `cargo
//! xtask up` and `cargo xtask test` run) with the broker jars `cargo xtask
//! test` names in `TEST_KAFKA_LIBS`, on free ports, with its data in a
//! temporary directory that outlives a stop, so a test can take the broker
//! away and bring it back with its records.
//!
//! A whole saga stack gets a node of its own ([`StackBroker`]), because
//! every consumer of a fresh stack reads its topics from offset 0 and a
//! shared broker's history would be replayed into it; without
//! `TEST_KAFKA_LIBS` it takes the shared test broker, one stack at a time.

use std::{
    path::PathBuf,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use commerce_common::events::topics;
use rskafka::client::ClientBuilder;

use crate::{ChildProcess, compose::workspace_root, ensure_topics, free_port, kafka_brokers};

/// How long a node may take to answer metadata requests (a JVM start and,
/// the first time, formatting its storage).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// A controlled shutdown flushes the log and hands leadership over.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The broker jars, when `cargo xtask test` named them.
fn kafka_libs() -> Option<PathBuf> {
    crate::env::var("TEST_KAFKA_LIBS")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
}

/// One Kafka node (broker and controller), stopped when dropped.
pub struct KafkaNode {
    process: Option<ChildProcess>,
    port: u16,
    controller_port: u16,
    libs: PathBuf,
    dir: tempfile::TempDir,
}

impl KafkaNode {
    /// Whether a test can start a node of its own (`TEST_KAFKA_LIBS`).
    pub fn available() -> bool {
        kafka_libs().is_some()
    }

    /// Starts a node and waits until it answers metadata requests. Panics
    /// without `TEST_KAFKA_LIBS` (run the tests through `cargo xtask test`).
    pub async fn start() -> KafkaNode {
        let libs = kafka_libs().expect(
            "TEST_KAFKA_LIBS does not name the Kafka broker's jars: run the tests through \
             `cargo xtask test`, which fetches them",
        );
        let mut node = KafkaNode {
            process: None,
            port: free_port(),
            controller_port: free_port(),
            libs,
            dir: tempfile::tempdir().expect("a directory for the broker's data"),
        };
        // A free port can be taken by another process before Kafka binds it
        // (the tests run side by side): then other ports.
        for _ in 1..3 {
            if node.spawn().await {
                return node;
            }
            node.process = None;
            (node.port, node.controller_port) = (free_port(), free_port());
        }
        node.resume().await;
        node
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the stopped node again on the same ports and data, and waits
    /// until it answers.
    pub async fn resume(&mut self) {
        assert!(
            self.spawn().await,
            "the test's Kafka exited during start-up"
        );
    }

    /// Starts the node and waits until it answers metadata requests; false
    /// when it exits first (its log is printed then).
    async fn spawn(&mut self) -> bool {
        assert!(self.process.is_none(), "the broker is running");
        let script = workspace_root().join("xtask/kafka/run.sh");
        let args: [std::ffi::OsString; 4] = [
            self.libs.clone().into(),
            self.dir.path().into(),
            self.port.to_string().into(),
            self.controller_port.to_string().into(),
        ];
        let brokers = self.brokers();
        let process = self.process.insert(ChildProcess::spawn_with_args(
            "kafka",
            script,
            args,
            [("KAFKA_HEAP", "256m")],
        ));
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if answers_metadata(&brokers).await {
                return true;
            }
            if !process.is_running() {
                eprintln!(
                    "the test's Kafka on {brokers} exited during start-up:\n{}",
                    process.logs().join("\n")
                );
                return false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the test's Kafka on {brokers} did not answer within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A controlled shutdown (SIGTERM); the data stays for [`resume`](Self::resume).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop_with(libc::SIGTERM, STOP_TIMEOUT);
        }
    }
}

async fn answers_metadata(brokers: &str) -> bool {
    let attempt = async {
        let client = ClientBuilder::new(vec![brokers.to_owned()])
            .build()
            .await
            .ok()?;
        client.list_topics().await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(_))
    )
}

/// The broker of one saga stack, with the contract's topics.
pub struct StackBroker {
    /// `host:port` for `APP__KAFKA__BROKERS`.
    pub brokers: String,
    _node: Option<KafkaNode>,
    /// Held while the stack uses the shared broker.
    _exclusive: Option<MutexGuard<'static, ()>>,
}

impl StackBroker {
    /// A node of the stack's own (or the shared broker, exclusively), with
    /// the four topics of the contract in 3 partitions.
    pub async fn start() -> StackBroker {
        static SHARED: Mutex<()> = Mutex::new(());
        let (brokers, node, exclusive) = if KafkaNode::available() {
            let node = KafkaNode::start().await;
            (node.brokers(), Some(node), None)
        } else {
            let guard = SHARED.lock().unwrap_or_else(|p| p.into_inner());
            (kafka_brokers(), None, Some(guard))
        };
        ensure_topics(&brokers, &topics::ALL, 3).await;
        StackBroker {
            brokers,
            _node: node,
            _exclusive: exclusive,
        }
    }
}

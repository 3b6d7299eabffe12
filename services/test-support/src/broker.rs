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

use crate::{
    ChildProcess, compose::workspace_root, ensure_topics, free_port, kafka_brokers, wait_until,
};

/// How long a node may take to answer metadata requests (a JVM start and,
/// the first time, formatting its storage).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// A controlled shutdown flushes the log and hands leadership over.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The broker jars, when `cargo xtask test` named them.
fn kafka_libs() -> Option<PathBuf> {
    std::env::var_os("TEST_KAFKA_LIBS")
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
        assert!(self.process.is_none(), "the broker is running");
        let script = workspace_root().join("xtask/kafka/run.sh");
        let args: [std::ffi::OsString; 4] = [
            self.libs.clone().into(),
            self.dir.path().into(),
            self.port.to_string().into(),
            self.controller_port.to_string().into(),
        ];
        self.process = Some(ChildProcess::spawn_with_args(
            "kafka",
            script,
            args,
            [("KAFKA_HEAP", "256m")],
        ));
        let brokers = self.brokers();
        wait_until(START_TIMEOUT, "the test's Kafka to answer", || {
            let brokers = brokers.clone();
            async move { answers_metadata(&brokers).await.then_some(()) }
        })
        .await;
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

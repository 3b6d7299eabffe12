//! docs/walkthrough.md is true: its `sh` blocks, run by bash with curl and
//! jq exactly as a reader would paste them, succeed against a live stack of
//! the real binaries (gateway, order, payment, delivery services and the
//! outbox relay as child processes, each service on a fresh database, a
//! Kafka node of its own). The script itself checks
//! the outcomes a reader is told to expect (`test "$STATUS" = ...`, `curl
//! -f` on every request); this test adds the figures of the output.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use test_support::{
    ChildProcess, ReplicationSlots, StackBroker, TestDatabase, bin_path, compose::workspace_root,
    free_port, fresh_database, jwt_keys, wait_for_http_ok, wait_until,
};
use uuid::Uuid;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The `sh` code blocks of a Markdown document, in order.
fn shell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start() == "```sh" => current = Some(String::new()),
            Some(block) if line.trim_start() == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    assert!(current.is_none(), "an unclosed code block");
    blocks
}

/// Field order is drop order: relay, then its slots, services, broker.
struct Stack {
    gateway_port: u16,
    _relay: ChildProcess,
    _slots: ReplicationSlots,
    _services: Vec<ChildProcess>,
    _databases: Vec<TestDatabase>,
    _broker: StackBroker,
}

fn base_env() -> Vec<(String, String)> {
    vec![
        ("APP__HTTP__HOST".into(), "127.0.0.1".into()),
        ("RUST_LOG".into(), "info,rskafka=error".into()),
        ("LOG_FORMAT".into(), "pretty".into()),
    ]
}

impl Stack {
    async fn start() -> Stack {
        let broker = StackBroker::start().await;
        let keys = jwt_keys();
        let public_key = keys.public_key_file.display().to_string();
        let mut services = Vec::new();
        let mut databases = Vec::new();
        let mut ports = Vec::new();
        // (binary, relay source name)
        let stack = [
            ("order-service", "order"),
            ("payment-service", "payment"),
            ("delivery-service", "delivery"),
            ("gateway", "gateway"),
        ];
        for (binary, source) in stack {
            let db = fresh_database(&format!("walkthrough_{source}")).await;
            let port = free_port();
            let mut env = base_env();
            env.extend([
                ("APP__HTTP__PORT".into(), port.to_string()),
                ("APP__DATABASE__URL".into(), db.url.clone()),
                ("APP__DATABASE__MAX_CONNECTIONS".into(), "4".into()),
                ("APP__AUTH__PUBLIC_KEY_FILE".into(), public_key.clone()),
            ]);
            if binary == "gateway" {
                env.extend([
                    (
                        "APP__AUTH__PRIVATE_KEY_FILE".into(),
                        keys.private_key_file.display().to_string(),
                    ),
                    // Debug builds hash slowly; the cost does not change the flow.
                    ("APP__AUTH__BCRYPT_COST".into(), "4".into()),
                ]);
                for ((_, upstream), port) in stack.iter().zip(&ports) {
                    env.push((
                        format!("APP__UPSTREAMS__{}", upstream.to_uppercase()),
                        format!("http://127.0.0.1:{port}"),
                    ));
                }
            } else {
                env.push(("APP__KAFKA__BROKERS".into(), broker.brokers.clone()));
            }
            services.push(ChildProcess::spawn(binary, bin_path(binary), env));
            ports.push(port);
            databases.push((source, db));
        }
        // Migrations (which create the relay's publications) before the relay.
        for port in &ports {
            wait_for_http_ok(&format!("http://127.0.0.1:{port}/ready"), START_TIMEOUT).await;
        }

        let relay_port = free_port();
        let mut env = base_env();
        env.extend([
            ("APP__HTTP__PORT".into(), relay_port.to_string()),
            ("APP__KAFKA__BROKERS".into(), broker.brokers.clone()),
            ("APP__REPLICATION__STATUS_INTERVAL".into(), "200ms".into()),
        ]);
        let mut slots = Vec::new();
        for (source, db) in &databases {
            let slot = format!("walkthrough_{}", &Uuid::new_v4().simple().to_string()[..12]);
            let key = source.to_uppercase();
            env.push((format!("APP__SOURCES__{key}__URL"), db.url.clone()));
            env.push((format!("APP__SOURCES__{key}__SLOT"), slot.clone()));
            slots.push((db.url.clone(), slot));
        }
        let slots = ReplicationSlots(slots);
        let relay = ChildProcess::spawn("outbox-relay", bin_path("outbox-relay"), env);
        let http = reqwest::Client::new();
        let status_url = format!("http://127.0.0.1:{relay_port}/api/status");
        wait_until(START_TIMEOUT, "every relay source to stream", || async {
            let status: Value = http.get(&status_url).send().await.ok()?.json().await.ok()?;
            let sources = status["sources"].as_array()?;
            (sources.len() == 4 && sources.iter().all(|s| s["state"] == "streaming")).then_some(())
        })
        .await;

        Stack {
            gateway_port: ports[3],
            _relay: relay,
            _slots: slots,
            _services: services,
            _databases: databases.into_iter().map(|(_, db)| db).collect(),
            _broker: broker,
        }
    }
}

#[test]
fn the_walkthrough_finds_its_blocks() {
    let doc = std::fs::read_to_string(workspace_root().join("docs/walkthrough.md")).unwrap();
    let blocks = shell_blocks(&doc);
    let script = blocks.join("\n");
    for step in [
        "/api/register",
        "/api/login",
        "/api/products?",
        "/api/products/LAMP-0042",
        "/api/orders\"",
        "/api/orders/$ORDER_ID\"",
        "/api/orders/$ORDER_ID/cancel",
    ] {
        assert!(script.contains(step), "the walkthrough runs {step}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_runs_against_a_live_stack() {
    for tool in ["bash", "curl", "jq"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "the walkthrough needs `{tool}` (apt-get install {tool})"
        );
    }
    let doc = std::fs::read_to_string(workspace_root().join("docs/walkthrough.md")).unwrap();
    let script = shell_blocks(&doc).join("\n");
    let stack = Stack::start().await;

    let mut command = tokio::process::Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", &script])
        .env(
            "GATEWAY",
            format!("http://127.0.0.1:{}", stack.gateway_port),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
        .await
        .expect("the walkthrough finishes within its time")
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if std::env::var_os("WALKTHROUGH_PRINT").is_some() {
        println!("{stdout}");
    }
    assert!(
        output.status.success(),
        "the walkthrough failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    // What the text promises about the figures.
    for promise in [
        "\"balance_cents\": 100000",
        "\"sku\": \"LAMP-0042\"",
        "\"price_cents\": 4500",
        "\"total_cents\": 8498",
        "\"status\": \"PENDING\"",
        "\"balance_cents\": 91502",
        "\"reason\": \"CUSTOMER_CANCELLED\"",
        "\"tracking_number\": \"TRK-",
    ] {
        assert!(
            stdout.contains(promise),
            "output shows {promise}:\n{stdout}"
        );
    }
    assert!(
        stdout.trim_end().ends_with("\"balance_cents\": 100000\n}"),
        "the refund restores the balance:\n{stdout}"
    );
}

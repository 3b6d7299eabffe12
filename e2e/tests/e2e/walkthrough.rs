//! docs/walkthrough.md is true: its `sh` blocks, run by bash with curl and
//! jq exactly as a reader would paste them, succeed against a live stack of
//! the real binaries (`Stack::everything`: gateway, order, payment, delivery
//! services and the outbox relay). The script itself checks
//! the outcomes a reader is told to expect (`test "$STATUS" = ...`, `curl
//! -f` on every request); this test adds the figures of the output.

use std::{process::Stdio, time::Duration};

use test_support::{Service, Stack, compose::workspace_root};

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
    let stack = Stack::builder("walkthrough").everything().start().await;

    let mut command = tokio::process::Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", &script])
        .env("GATEWAY", stack.address(Service::Gateway))
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

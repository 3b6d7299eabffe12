//! Headless Chromium driven through chromedriver (WebDriver) with
//! fantoccini, for tests of the pages the system serves (Swagger UI, the
//! relay dashboard).

use std::{path::Path, time::Duration};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use tempfile::TempDir;

use crate::process::{ChildProcess, free_port};

const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// Keeps chromedriver and the browser profile alive; dropping it kills
/// chromedriver and every Chromium process using the profile. Close the
/// fantoccini client first (`client.close().await`) for a clean session end.
pub struct Browser {
    driver: ChildProcess,
    profile: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port (binaries from `CHROMEDRIVER` and
    /// `CHROMIUM`, default `/usr/bin/chromedriver`, `/usr/bin/chromium`) and
    /// opens a session with a fresh profile.
    pub async fn start() -> (Browser, Client) {
        let driver_bin =
            crate::env::var("CHROMEDRIVER").unwrap_or_else(|| "/usr/bin/chromedriver".into());
        let chromium_bin =
            crate::env::var("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into());
        for bin in [&driver_bin, &chromium_bin] {
            assert!(
                Path::new(bin).is_file(),
                "{bin} not found: install it with `apt-get install chromium chromium-driver` \
                 (or set CHROMEDRIVER / CHROMIUM)"
            );
        }
        let port = free_port();
        let driver = ChildProcess::spawn_with_args(
            "chromedriver",
            &driver_bin,
            [format!("--port={port}")],
            std::iter::empty::<(&str, &str)>(),
        );
        let url = format!("http://127.0.0.1:{port}");
        crate::wait::wait_for_http_ok(&format!("{url}/status"), Duration::from_secs(20)).await;

        let profile = tempfile::Builder::new()
            .prefix("test-browser-")
            .tempdir()
            .expect("browser profile dir");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium_bin, "args": args }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot open a WebDriver session on {url}: {e}"));
        (Browser { driver, profile }, client)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.driver.kill_hard();
        kill_processes_mentioning(&self.profile.path().display().to_string());
    }
}

/// SIGKILLs every process whose command line contains `needle` (the
/// Chromium processes of one profile, which chromedriver leaves behind when
/// it is killed).
fn kill_processes_mentioning(needle: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            // SAFETY: kill(2) with a pid read from /proc; at worst it is gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

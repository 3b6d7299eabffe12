//! Port checks before anything starts, so a taken port ends with one clear
//! line instead of a half-started stack.

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

/// Fails naming the first taken port, its user and the fix. A port that no
/// server listens on may be the local end of some client's connection for a
/// moment (the stack's ports lie in Linux's ephemeral range): that one gets
/// a few seconds to become free.
pub fn ensure_free(ports: &[(u16, &str)]) -> anyhow::Result<()> {
    for &(port, what) in ports {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind(("127.0.0.1", port)).is_err() {
            let holder = holder(port);
            if holder.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let holder = holder
                .map(|h| format!("held by {h}"))
                .unwrap_or_else(|| "no server listens on it: a connection uses it".into());
            anyhow::bail!(
                "port {port} ({what}) is already in use ({holder}): stop that process \
                 (`ss -tanp 'sport = :{port}'` shows it) and run again"
            );
        }
    }
    Ok(())
}

/// The process listening on `port`, as `ss` reports it.
fn holder(port: u16) -> Option<String> {
    let output = std::process::Command::new("ss")
        .args(["-ltnpH", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let users = text.split("users:((").nth(1)?;
    let end = users.find("))")?;
    Some(users[..end].replace('"', ""))
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

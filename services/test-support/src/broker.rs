//! A Kafka-protocol broker for one test's whole stack: a private tansu (in
//! memory) when it is installed, because every consumer of a fresh stack
//! reads its topics from offset 0 and a shared broker's history would be
//! replayed into it; else the shared test broker, one such stack at a time.

use std::{
    path::PathBuf,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use crate::{ChildProcess, free_port, kafka_brokers, wait_until};

pub struct StackBroker {
    /// `host:port` for `APP__KAFKA__BROKERS`.
    pub brokers: String,
    _process: Option<ChildProcess>,
    /// Held while the stack uses the shared broker.
    _exclusive: Option<MutexGuard<'static, ()>>,
}

/// `TANSU_BIN`, else where `cargo xtask` installs tansu; `None` if that is
/// not a file (`TANSU_BIN=none` forces the shared broker).
fn tansu_bin() -> Option<PathBuf> {
    let bin = match std::env::var_os("TANSU_BIN").filter(|b| !b.is_empty()) {
        Some(bin) => PathBuf::from(bin),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
            .join("cdc-commerce/tansu-0.6.0/bin/tansu"),
    };
    bin.is_file().then_some(bin)
}

impl StackBroker {
    /// Starts the private broker and waits up to `timeout` until it listens
    /// (or takes the shared one).
    pub async fn start(timeout: Duration) -> StackBroker {
        static SHARED: Mutex<()> = Mutex::new(());
        let Some(bin) = tansu_bin() else {
            return StackBroker {
                brokers: kafka_brokers(),
                _process: None,
                _exclusive: Some(SHARED.lock().unwrap_or_else(|p| p.into_inner())),
            };
        };
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let args = [
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ];
        let process = ChildProcess::spawn_with_args("tansu", bin, args, [("NO_COLOR", "1")]);
        wait_until(timeout, "the private broker to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        })
        .await;
        StackBroker {
            brokers: format!("127.0.0.1:{port}"),
            _process: Some(process),
            _exclusive: None,
        }
    }
}

//! The outbox-relay binary streaming test databases' outboxes to Kafka,
//! each through a replication slot of its own; the slots are dropped again
//! afterwards (a forgotten slot pins WAL forever).

use std::time::Duration;

use uuid::Uuid;

use crate::{ChildProcess, TestDatabase, bin_path, free_port, wait_until};

pub struct Relay {
    process: ChildProcess,
    /// Dropped after the process is killed (`Drop` below runs first).
    _slots: ReplicationSlots,
}

/// `(database url, slot name)` of replication slots a test's relay uses;
/// dropping this drops the slots (once their walsender is gone). Kill the
/// relay first.
pub struct ReplicationSlots(pub Vec<(String, String)>);

impl Relay {
    /// Starts the relay on `brokers` with one source per `(name, database)`
    /// (`name` as in `APP__SOURCES__<NAME>__*`) and waits up to `timeout`
    /// until every source streams.
    pub async fn start(
        brokers: &str,
        sources: &[(&str, &TestDatabase)],
        timeout: Duration,
    ) -> Relay {
        let port = free_port();
        let mut env = vec![
            ("APP__HTTP__PORT".to_owned(), port.to_string()),
            ("APP__KAFKA__BROKERS".to_owned(), brokers.to_owned()),
            (
                "APP__REPLICATION__STATUS_INTERVAL".to_owned(),
                "200ms".to_owned(),
            ),
            ("RUST_LOG".to_owned(), "info,rskafka=error".to_owned()),
            ("LOG_FORMAT".to_owned(), "pretty".to_owned()),
        ];
        let mut slots = Vec::new();
        for (name, database) in sources {
            let slot = format!(
                "{}_test_{}",
                name.to_lowercase(),
                &Uuid::new_v4().simple().to_string()[..12]
            );
            let key = name.to_uppercase();
            env.push((format!("APP__SOURCES__{key}__URL"), database.url.clone()));
            env.push((format!("APP__SOURCES__{key}__SLOT"), slot.clone()));
            slots.push((database.url.clone(), slot));
        }
        let relay = Relay {
            process: ChildProcess::spawn("outbox-relay", bin_path("outbox-relay"), env),
            _slots: ReplicationSlots(slots),
        };
        let expected = sources.len();
        let http = reqwest::Client::new();
        let status_url = format!("http://127.0.0.1:{port}/api/status");
        wait_until(timeout, "every relay source to stream", || async {
            let status: serde_json::Value =
                http.get(&status_url).send().await.ok()?.json().await.ok()?;
            let sources = status["sources"].as_array()?;
            (sources.len() == expected && sources.iter().all(|s| s["state"] == "streaming"))
                .then_some(())
        })
        .await;
        relay
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.process.kill_hard();
    }
}

impl Drop for ReplicationSlots {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut self.0);
        // Drop cannot await: a runtime of its own on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                for (url, slot) in slots {
                    drop_slot(&url, &slot).await;
                }
            });
        })
        .join();
    }
}

async fn drop_slot(url: &str, slot: &str) {
    let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        return;
    };
    tokio::spawn(connection);
    // The walsender notices its client's death after a moment.
    for _ in 0..100 {
        let _ = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await;
        let gone = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map(|row| row.is_none())
            .unwrap_or(true);
        if gone {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

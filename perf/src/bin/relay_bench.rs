//! Benchmark of the outbox relay (issue 3), run on demand; prints Markdown
//! tables. Needs PostgreSQL (wal_level=logical), a Kafka-protocol broker and
//! release builds of `outbox-relay` and `polling_baseline`:
//!
//! ```sh
//! cargo build --release -p outbox-relay -p perf --bin outbox-relay --bin polling_baseline --bin relay_bench
//! target/release/relay_bench --database-url postgres://postgres@127.0.0.1:55432/postgres --brokers 127.0.0.1:9092
//! ```
//!
//! a. backlog drain rate of the relay vs. the bare decode rate of the same
//!    stream (a second slot at the same position, decoded and discarded);
//! b. commit-to-ack latency at steady rates (the relay's own measurement);
//! c. the polling baseline at 10 ms and 100 ms: latency, and the database's
//!    CPU (backends serving the publisher) and transactions/s idle and under load.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use outbox_relay::replication::pgoutput::{self, LogicalMessage};
use outbox_relay::replication::{ConnectParams, ReplicationConnection, StreamMessage};
use tokio_postgres::{Client, NoTls};

#[derive(Parser)]
struct Args {
    /// Superuser URL of the cluster; the bench creates its own database.
    #[arg(
        long,
        env = "TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:55999/postgres"
    )]
    database_url: String,
    #[arg(long, env = "TEST_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Directory with the release binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Events of each backlog workload.
    #[arg(long, default_value_t = 100_000)]
    backlog: i64,
    /// Seconds of each steady-rate run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

const OUTBOX: &str = include_str!("../../../db/migrations/order/2026-11-25-000001_outbox/up.sql");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bench = Bench::create(&args).await?;
    println!(
        "# Relay benchmark ({})\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let measured = async {
        drain_table(&bench, &args).await?;
        latency_table(&bench, &args).await
    }
    .await;
    bench.finish().await?;
    measured
}

struct Bench {
    /// Connection to the admin database: statistics reads there do not
    /// count as transactions of the bench database.
    admin: Client,
    url: String,
    client: Client,
    brokers: String,
    bin_dir: PathBuf,
    run: String,
}

impl Bench {
    async fn create(args: &Args) -> anyhow::Result<Bench> {
        let run = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let admin = connect(&args.database_url).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {run}"))
            .await?;
        let url = replace_database(&args.database_url, &run);
        let client = connect(&url).await?;
        client.batch_execute(OUTBOX).await?;
        client
            .batch_execute(
                "CREATE TABLE outbox_polled (LIKE outbox INCLUDING ALL);
                 CREATE INDEX ON outbox_polled (occurred_at);",
            )
            .await?;
        Ok(Bench {
            admin,
            url,
            client,
            brokers: args.brokers.clone(),
            bin_dir: args.bin_dir.clone(),
            run,
        })
    }

    /// Drops the bench database (its slots are gone by now).
    async fn finish(self) -> anyhow::Result<()> {
        let Bench {
            admin, client, run, ..
        } = self;
        drop(client);
        admin
            .batch_execute(&format!("DROP DATABASE {run} WITH (FORCE)"))
            .await?;
        Ok(())
    }

    fn slot(&self, name: &str) -> String {
        format!("{}_{name}", self.run)
    }

    async fn create_slot(&self, slot: &str) -> anyhow::Result<()> {
        self.client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await?;
        Ok(())
    }

    async fn drop_slot(&self, slot: &str) {
        for _ in 0..50 {
            let done = self
                .client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND NOT active",
                    &[&slot],
                )
                .await;
            if matches!(done, Ok(1)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Inserts `transactions` x `rows` outbox events as a backlog (commits
    /// not waiting for the disk: only the stream matters here).
    async fn load_backlog(&self, topic: &str, transactions: i64, rows: i64) -> anyhow::Result<()> {
        // A DO block that commits must be a statement of its own.
        self.client
            .batch_execute("SET synchronous_commit = off")
            .await?;
        self.client
            .batch_execute(&format!(
                "DO $$ BEGIN
                   FOR t IN 1..{transactions} LOOP
                     INSERT INTO outbox SELECT gen_random_uuid(), '{topic}', 'key-' || (t % 100),
                       'BenchEvent', 1, 'trace', now(), jsonb_build_object('t', t, 'i', i, 'pad', repeat('x', 200))
                     FROM generate_series(1, {rows}) i;
                     COMMIT;
                   END LOOP;
                 END $$"
            ))
            .await?;
        self.client
            .batch_execute("SET synchronous_commit = on")
            .await?;
        Ok(())
    }

    fn relay(&self, slot: &str, port: u16) -> anyhow::Result<Child> {
        let bin = self.bin_dir.join("outbox-relay");
        Command::new(&bin)
            .env("APP__HTTP__PORT", port.to_string())
            .env("APP__KAFKA__BROKERS", &self.brokers)
            .env("APP__KAFKA__TOPICS", "")
            .env("APP__SOURCES__BENCH__URL", &self.url)
            .env("APP__SOURCES__BENCH__SLOT", slot)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))
    }
}

/// Decodes the slot's stream and discards it until `events` inserts were
/// seen; returns the seconds it took.
async fn bare_decode(bench: &Bench, slot: &str, events: i64) -> anyhow::Result<f64> {
    let params = ConnectParams::from_url(&bench.url, "relay-bench/bare-decode")?;
    let connection = ReplicationConnection::connect(&params, Duration::from_secs(5)).await?;
    let started = Instant::now();
    let mut stream = connection.start_replication(slot, "outbox_relay").await?;
    let mut seen = 0;
    while seen < events {
        if let StreamMessage::XLogData { data, .. } = stream.next().await?
            && let LogicalMessage::Insert(_) = pgoutput::decode(data)?
        {
            seen += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    stream.close().await;
    Ok(seconds)
}

/// Starts the relay on `slot` and waits until it published `events`;
/// returns (seconds from the start of streaming, peak RSS in MB).
async fn relay_drain(bench: &Bench, slot: &str, events: i64) -> anyhow::Result<(f64, f64)> {
    let port = free_port()?;
    let mut relay = KillOnDrop(bench.relay(slot, port)?);
    // Timed from the start of streaming, like the bare decode.
    wait_streaming(port).await?;
    let started = Instant::now();
    wait_published(port, events).await?;
    let seconds = started.elapsed().as_secs_f64();
    let rss = peak_rss_mb(relay.0.id());
    relay.stop();
    Ok((seconds, rss))
}

async fn drain_table(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    println!("## a. Backlog drain\n");
    println!(
        "| workload | events | bare decode (events/s) | relay drain (events/s) | relay / bare | relay peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let workloads = [
        ("single-row transactions", args.backlog, 1),
        ("transactions of 5,000 rows", args.backlog / 5_000, 5_000),
    ];
    for (index, (name, transactions, rows)) in workloads.into_iter().enumerate() {
        let events = transactions * rows;
        let (relay_slot, bare_slot) = (
            bench.slot(&format!("drain{index}")),
            bench.slot(&format!("bare{index}")),
        );
        bench.create_slot(&relay_slot).await?;
        bench.create_slot(&bare_slot).await?;
        bench
            .load_backlog(&format!("{}_drain", bench.run), transactions, rows)
            .await?;
        let bare = bare_decode(bench, &bare_slot, events).await?;
        let (relay, rss) = relay_drain(bench, &relay_slot, events).await?;
        println!(
            "| {name} | {events} | {:.0} | {:.0} | {:.0}% | {rss:.1} MB |",
            events as f64 / bare,
            events as f64 / relay,
            100.0 * bare / relay
        );
        bench.drop_slot(&relay_slot).await;
        bench.drop_slot(&bare_slot).await;
    }
    println!();
    Ok(())
}

/// Publisher under test in the latency runs.
enum Publisher {
    Relay,
    Polling(u64),
}

impl Publisher {
    fn label(&self) -> String {
        match self {
            Publisher::Relay => "relay (CDC)".into(),
            Publisher::Polling(ms) => format!("polling every {ms} ms"),
        }
    }

    fn table(&self) -> &'static str {
        match self {
            Publisher::Relay => "outbox",
            Publisher::Polling(_) => "outbox_polled",
        }
    }
}

struct Running {
    child: KillOnDrop,
    port: Option<u16>,
    slot: Option<String>,
}

async fn latency_table(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    println!("## b/c. Steady load: commit-to-ack latency and database cost\n");
    println!(
        "| publisher | rate (events/s) | p50 | p99 | max | DB CPU idle | DB xacts/s idle | DB CPU load | DB xacts/s load | publisher RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for publisher in [
        Publisher::Relay,
        Publisher::Polling(10),
        Publisher::Polling(100),
    ] {
        for rate in [1_000u32, 5_000] {
            let running = start_publisher(bench, &publisher).await?;
            // Past the relay's "someone is watching" window (5 s after the
            // last status request), so idle means unobserved.
            tokio::time::sleep(Duration::from_secs(6)).await;
            let idle = measure_db(bench, Duration::from_secs(5), &publisher).await?;
            let topic = format!("{}_steady", bench.run);
            let before = transactions(bench).await?;
            let cpu_before = publisher_cpu(bench, &publisher).await?;
            let writes =
                steady_writes(bench, publisher.table(), &topic, rate, args.seconds).await?;
            let cpu_after = publisher_cpu(bench, &publisher).await?;
            let xacts = transactions(bench).await? - before - writes.transactions;
            let load_seconds = writes.seconds;
            let (p50, p99, max, rss) = finish_publisher(bench, running, writes.events).await?;
            println!(
                "| {} | {rate} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms | {:.1}% | {:.1} | {:.1}% | {:.1} | {rss:.1} MB |",
                publisher.label(),
                idle.cpu_percent,
                idle.xacts_per_second,
                100.0 * (cpu_after - cpu_before) / load_seconds,
                xacts as f64 / load_seconds,
            );
        }
    }
    println!(
        "\nLatency: relay = PostgreSQL commit timestamp to broker ack (its own histogram); \
         polling = `occurred_at` (statement time, just before commit) to broker ack.\n\
         DB CPU: CPU time of the backends serving the publisher (walsender + catalog \
         connection, or the polling connection) per wall-clock second. DB xacts/s: \
         the bench database's committed transactions not made by the writers."
    );
    Ok(())
}

async fn start_publisher(bench: &Bench, publisher: &Publisher) -> anyhow::Result<Running> {
    match publisher {
        Publisher::Relay => {
            let slot = bench.slot("steady");
            let port = free_port()?;
            let child = KillOnDrop(bench.relay(&slot, port)?);
            wait_streaming(port).await?;
            Ok(Running {
                child,
                port: Some(port),
                slot: Some(slot),
            })
        }
        Publisher::Polling(ms) => {
            let bin = bench.bin_dir.join("polling_baseline");
            let child = Command::new(&bin)
                .args(["--database-url", &bench.url, "--brokers", &bench.brokers])
                .args(["--topic", &format!("{}_polled", bench.run)])
                .args(["--interval-ms", &ms.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("start {}", bin.display()))?;
            Ok(Running {
                child: KillOnDrop(child),
                port: None,
                slot: None,
            })
        }
    }
}

/// Waits until everything was published, stops the publisher; returns
/// latency p50/p99/max (ms) and its peak RSS (MB).
async fn finish_publisher(
    bench: &Bench,
    mut running: Running,
    events: i64,
) -> anyhow::Result<(f64, f64, f64, f64)> {
    let rss = peak_rss_mb(running.child.0.id());
    if let Some(port) = running.port {
        let status = wait_published(port, events).await?;
        let ms = |k: &str| status[k].as_f64().unwrap_or(f64::NAN);
        let result = (
            ms("latency_p50_ms"),
            ms("latency_p99_ms"),
            ms("latency_max_ms"),
            rss,
        );
        running.child.stop();
        if let Some(slot) = &running.slot {
            bench.drop_slot(slot).await;
        }
        return Ok(result);
    }
    wait_table_empty(&bench.client).await?;
    running.child.stop();
    let output = running.child.take_output()?;
    let summary: serde_json::Value = serde_json::from_str(output.trim())
        .with_context(|| format!("polling_baseline summary: {output:?}"))?;
    let ms = |k: &str| summary[k].as_f64().unwrap_or(f64::NAN);
    Ok((ms("p50_ms"), ms("p99_ms"), ms("max_ms"), rss))
}

struct Writes {
    events: i64,
    transactions: i64,
    seconds: f64,
}

/// Inserts at `rate` events/s for `seconds` from 16 connections: single-row
/// transactions up to 1,000/s, else transactions of `rate / 1000` rows.
async fn steady_writes(
    bench: &Bench,
    table: &str,
    topic: &str,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<Writes> {
    const WRITERS: u32 = 16;
    let rows = i64::from((rate / 1_000).max(1));
    let txn_rate = f64::from(rate) / rows as f64;
    let per_writer = Duration::from_secs_f64(f64::from(WRITERS) / txn_rate);
    let sql = format!(
        "INSERT INTO {table} SELECT gen_random_uuid(), '{topic}', 'key-' || (random() * 100)::int, \
         'BenchEvent', 1, 'trace', statement_timestamp(), jsonb_build_object('i', i, 'pad', repeat('x', 200)) \
         FROM generate_series(1, $1::bigint) i"
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let client = connect(&bench.url).await?;
        // Prepared once: an unnamed prepare per insert would count as a
        // transaction of its own in pg_stat_database.
        let insert = client.prepare(&sql).await?;
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(per_writer);
            let mut done = 0i64;
            let deadline = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < deadline {
                ticker.tick().await;
                client.execute(&insert, &[&rows]).await?;
                done += 1;
            }
            Ok::<_, tokio_postgres::Error>(done)
        }));
    }
    let mut transactions = 0;
    for task in tasks {
        transactions += task.await??;
    }
    Ok(Writes {
        events: transactions * rows,
        transactions,
        seconds: started.elapsed().as_secs_f64(),
    })
}

struct DbCost {
    cpu_percent: f64,
    xacts_per_second: f64,
}

async fn measure_db(
    bench: &Bench,
    window: Duration,
    publisher: &Publisher,
) -> anyhow::Result<DbCost> {
    let xacts = transactions(bench).await?;
    let cpu = publisher_cpu(bench, publisher).await?;
    tokio::time::sleep(window).await;
    let cpu = publisher_cpu(bench, publisher).await? - cpu;
    let xacts = transactions(bench).await? - xacts;
    Ok(DbCost {
        cpu_percent: 100.0 * cpu / window.as_secs_f64(),
        xacts_per_second: xacts.max(0) as f64 / window.as_secs_f64(),
    })
}

/// CPU seconds so far of the backends serving the publisher.
async fn publisher_cpu(bench: &Bench, publisher: &Publisher) -> anyhow::Result<f64> {
    let pattern = match publisher {
        Publisher::Relay => "outbox-relay/%",
        Publisher::Polling(_) => "polling-baseline",
    };
    let rows = bench
        .admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1 AND datname = $2",
            &[&pattern, &bench.run],
        )
        .await?;
    Ok(rows.iter().map(|r| cpu_seconds(r.get::<_, i32>(0))).sum())
}

/// Committed and rolled back transactions of the bench database so far.
async fn transactions(bench: &Bench) -> anyhow::Result<i64> {
    // Statistics reach the shared view at most about once a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    bench
        .admin
        .execute("SELECT pg_stat_clear_snapshot()", &[])
        .await?;
    let row = bench
        .admin
        .query_one(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
            &[&bench.run],
        )
        .await?;
    Ok(row.get(0))
}

/// The relay's status of its (only) source.
async fn source_status(port: u16) -> Option<serde_json::Value> {
    let url = format!("http://127.0.0.1:{port}/api/status");
    let status: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
    Some(status["sources"][0].clone())
}

/// Polls the relay's status until `done` holds (at most ten minutes).
async fn wait_status(
    port: u16,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    for _ in 0..60_000 {
        if let Some(status) = source_status(port).await.filter(|s| done(s)) {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("relay: timed out waiting for {what}")
}

async fn wait_streaming(port: u16) -> anyhow::Result<()> {
    wait_status(port, "streaming", |s| s["state"] == "streaming")
        .await
        .map(drop)
}

async fn wait_published(port: u16, events: i64) -> anyhow::Result<serde_json::Value> {
    wait_status(port, "all events published", |s| {
        s["events_published"].as_i64() >= Some(events)
    })
    .await
}

async fn wait_table_empty(client: &Client) -> anyhow::Result<()> {
    for _ in 0..3_000 {
        let row = client
            .query_one("SELECT count(*) FROM outbox_polled", &[])
            .await?;
        if row.get::<_, i64>(0) == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the polling publisher did not drain its table")
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

fn replace_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap_or((url, ""));
    format!("{base}/{database}")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..250 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn take_output(&mut self) -> anyhow::Result<String> {
        use std::io::Read;
        let mut out = String::new();
        if let Some(mut stdout) = self.0.stdout.take() {
            stdout.read_to_string(&mut out)?;
        }
        Ok(out)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

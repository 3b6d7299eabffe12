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
//!    stream (slots created at the same position, decoded and discarded):
//!    a warm-up pass first (the WAL is then read from the page cache by
//!    every run), then bare decode and relay alternated, three rounds each,
//!    medians and spread;
//! b. commit-to-ack latency at steady rates (the relay's own measurement);
//! c. the polling publishers (every 10 ms, every 100 ms, woken by
//!    LISTEN/NOTIFY): latency, split into the wait for the poll and the
//!    publish, and the database's CPU (backends serving the publisher) and
//!    transactions/s idle and under load.

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

const OUTBOX: &str =
    include_str!("../../../db/migrations/runtime/outbox/2026-11-25-000001_outbox/up.sql");

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
/// seen; returns the seconds it took, from before the connection (as the
/// relay's are counted from its start: see [`relay_drain`]).
async fn bare_decode(bench: &Bench, slot: &str, events: i64) -> anyhow::Result<f64> {
    // On a worker thread of the runtime, as the relay's stream is: the
    // main task of `#[tokio::main]` runs on its own thread, so every read
    // that finds the socket empty waits for a wake-up from another thread,
    // and that made this loop the slower of the two (measured: half the
    // relay's rate).
    let (url, slot) = (bench.url.clone(), slot.to_owned());
    tokio::spawn(async move { decode_and_discard(&url, &slot, events).await }).await?
}

async fn decode_and_discard(url: &str, slot: &str, events: i64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let params = ConnectParams::from_url(url, "relay-bench/bare-decode")?;
    let connection = ReplicationConnection::connect(&params, Duration::from_secs(5)).await?;
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
/// returns (seconds from its start, peak RSS in MB). Timed from the start
/// of the process, its connections included: the moment it reports
/// `streaming` is seen only at the next status poll, by which time a
/// relay draining large transactions has published thousands of events
/// (timed from there, it drained "faster" than the bare decode). Its
/// start-up (tens of ms) counts against it: the ratio can err only low.
async fn relay_drain(bench: &Bench, slot: &str, events: i64) -> anyhow::Result<(f64, f64)> {
    let port = free_port()?;
    let started = Instant::now();
    let mut relay = KillOnDrop(bench.relay(slot, port)?);
    wait_published(port, events).await?;
    let seconds = started.elapsed().as_secs_f64();
    let rss = peak_rss_mb(relay.0.id());
    relay.stop();
    Ok((seconds, rss))
}

/// Rounds of each drain measurement (bare decode and relay alternated).
const DRAIN_ROUNDS: usize = 3;

/// `median (min-max)` of rates.
fn spread(rates: &mut [f64]) -> (f64, f64, f64) {
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], rates[0], rates[rates.len() - 1])
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
        // Every run reads the same backlog through a slot of its own, all
        // created at the same position before it was written.
        let warm_up = bench.slot(&format!("warm{index}"));
        let slots: Vec<(bool, String)> = (0..2 * DRAIN_ROUNDS)
            .map(|run| {
                // bare, relay, relay, bare, bare, relay: each kind as often
                // early as late.
                let relay = matches!(run % 4, 1 | 2);
                (relay, bench.slot(&format!("d{index}_{run}")))
            })
            .collect();
        bench.create_slot(&warm_up).await?;
        for (_, slot) in &slots {
            bench.create_slot(slot).await?;
        }
        bench
            .load_backlog(&format!("{}_drain", bench.run), transactions, rows)
            .await?;
        // The first pass reads the WAL from disk; the measured ones from
        // the page cache, all alike.
        bare_decode(bench, &warm_up, events).await?;
        bench.drop_slot(&warm_up).await;
        let (mut bare, mut relay, mut rss) = (Vec::new(), Vec::new(), 0f64);
        for (is_relay, slot) in &slots {
            if *is_relay {
                let (seconds, peak) = relay_drain(bench, slot, events).await?;
                relay.push(events as f64 / seconds);
                rss = rss.max(peak);
            } else {
                bare.push(events as f64 / bare_decode(bench, slot, events).await?);
            }
            bench.drop_slot(slot).await;
        }
        let (bare_median, bare_min, bare_max) = spread(&mut bare);
        let (relay_median, relay_min, relay_max) = spread(&mut relay);
        println!(
            "| {name} | {events} | {bare_median:.0} ({bare_min:.0}-{bare_max:.0}) | \
             {relay_median:.0} ({relay_min:.0}-{relay_max:.0}) | {:.0}% ({:.0}-{:.0}%) | {rss:.1} MB |",
            100.0 * relay_median / bare_median,
            100.0 * relay_min / bare_max,
            100.0 * relay_max / bare_min,
        );
    }
    println!(
        "\nMedian of {DRAIN_ROUNDS} runs each (min-max), after a warm-up pass; relay / bare: \
         ratio of the medians (the range pairs the extremes)."
    );
    println!();
    Ok(())
}

/// Publisher under test in the latency runs.
enum Publisher {
    Relay,
    Polling(u64),
    /// Polling woken by LISTEN/NOTIFY (a 1 s poll as a fallback).
    Notified,
}

impl Publisher {
    fn label(&self) -> String {
        match self {
            Publisher::Relay => "relay (CDC)".into(),
            Publisher::Polling(ms) => format!("polling every {ms} ms"),
            Publisher::Notified => "polling woken by LISTEN/NOTIFY".into(),
        }
    }

    fn table(&self) -> &'static str {
        match self {
            Publisher::Relay => "outbox",
            Publisher::Polling(_) | Publisher::Notified => "outbox_polled",
        }
    }
}

/// One notification per inserting statement into `outbox_polled`, only
/// while the notified poller runs (the other publishers do not pay for it).
const NOTIFY_TRIGGER: &str = "
CREATE FUNCTION outbox_polled_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_polled', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_polled_notify AFTER INSERT ON outbox_polled
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_polled_notify();";

struct Running {
    child: KillOnDrop,
    port: Option<u16>,
    slot: Option<String>,
}

async fn latency_table(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    println!("## b/c. Steady load: commit-to-ack latency and database cost\n");
    println!(
        "| publisher | rate (events/s) | p50 | p99 | max | poll wait p50 / p99 | publish p50 / p99 | DB CPU idle | DB xacts/s idle | DB CPU load | DB xacts/s load | publisher RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for publisher in [
        Publisher::Relay,
        Publisher::Polling(10),
        Publisher::Polling(100),
        Publisher::Notified,
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
            let done = finish_publisher(bench, running, writes.events).await?;
            let split = |p50: Option<f64>, p99: Option<f64>| match (p50, p99) {
                (Some(p50), Some(p99)) => format!("{p50:.1} / {p99:.1} ms"),
                _ => "-".to_owned(),
            };
            println!(
                "| {} | {rate} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {:.1}% | {:.1} | {:.1}% | {:.1} | {:.1} MB |",
                publisher.label(),
                done.p50,
                done.p99,
                done.max,
                split(done.wait_p50, done.wait_p99),
                split(done.publish_p50, done.publish_p99),
                idle.cpu_percent,
                idle.xacts_per_second,
                100.0 * (cpu_after - cpu_before) / load_seconds,
                xacts as f64 / load_seconds,
                done.rss,
            );
        }
    }
    println!(
        "\nLatency: relay = PostgreSQL commit timestamp to broker ack (its own histogram); \
         polling = `occurred_at` (statement time, just before commit) to broker ack, split \
         into the wait for the poll that took the row and the publish (that poll's \
         select, produce and ack).\n\
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
        Publisher::Polling(_) | Publisher::Notified => {
            let (interval, wake) = match publisher {
                Publisher::Polling(ms) => (*ms, "interval"),
                _ => {
                    bench.client.batch_execute(NOTIFY_TRIGGER).await?;
                    (1_000, "notify")
                }
            };
            let bin = bench.bin_dir.join("polling_baseline");
            let child = Command::new(&bin)
                .args(["--database-url", &bench.url, "--brokers", &bench.brokers])
                .args(["--topic", &format!("{}_polled", bench.run)])
                .args(["--interval-ms", &interval.to_string()])
                .args(["--wake", wake])
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

/// What a publisher's run measured: latency (ms; the polling ones split
/// into the wait for the poll and the publish) and peak RSS (MB).
struct Finished {
    p50: f64,
    p99: f64,
    max: f64,
    wait_p50: Option<f64>,
    wait_p99: Option<f64>,
    publish_p50: Option<f64>,
    publish_p99: Option<f64>,
    rss: f64,
}

/// Waits until everything was published, stops the publisher (and drops
/// the notification trigger); answers what it measured.
async fn finish_publisher(
    bench: &Bench,
    mut running: Running,
    events: i64,
) -> anyhow::Result<Finished> {
    let rss = peak_rss_mb(running.child.0.id());
    if let Some(port) = running.port {
        let status = wait_published(port, events).await?;
        let ms = |k: &str| status[k].as_f64().unwrap_or(f64::NAN);
        let result = Finished {
            p50: ms("latency_p50_ms"),
            p99: ms("latency_p99_ms"),
            max: ms("latency_max_ms"),
            wait_p50: None,
            wait_p99: None,
            publish_p50: None,
            publish_p99: None,
            rss,
        };
        running.child.stop();
        if let Some(slot) = &running.slot {
            bench.drop_slot(slot).await;
        }
        return Ok(result);
    }
    wait_table_empty(&bench.client).await?;
    running.child.stop();
    bench
        .client
        .batch_execute(
            "DROP TRIGGER IF EXISTS outbox_polled_notify ON outbox_polled;
             DROP FUNCTION IF EXISTS outbox_polled_notify();",
        )
        .await?;
    let output = running.child.take_output()?;
    let summary: serde_json::Value = serde_json::from_str(output.trim())
        .with_context(|| format!("polling_baseline summary: {output:?}"))?;
    let ms = |k: &str| summary[k].as_f64().unwrap_or(f64::NAN);
    Ok(Finished {
        p50: ms("p50_ms"),
        p99: ms("p99_ms"),
        max: ms("max_ms"),
        wait_p50: Some(ms("wait_p50_ms")),
        wait_p99: Some(ms("wait_p99_ms")),
        publish_p50: Some(ms("publish_p50_ms")),
        publish_p99: Some(ms("publish_p99_ms")),
        rss,
    })
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
        Publisher::Polling(_) | Publisher::Notified => "polling-baseline",
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

//! A polling outbox publisher, written as the best baseline of its kind
//! the relay is measured against (`relay_bench` starts it): it takes up to
//! `--batch` rows of `outbox_polled` with `FOR UPDATE SKIP LOCKED`, produces
//! them to Kafka in one request per partition (same key, headers and
//! envelope as the relay), deletes them and commits, and polls again at
//! once while it finds rows. When a poll finds nothing it waits
//! `--interval-ms` (`--wake interval`) or until PostgreSQL notifies it of an
//! insert (`--wake notify`: `LISTEN outbox_polled`, the bench's trigger sends
//! one notification per inserting statement; `--interval-ms` is then only a
//! fallback). Its broker sockets get `TCP_NODELAY` as the relay's do
//! (`commerce_base::nodelay`), so a produce is not held by Nagle's algorithm.
//! On SIGTERM/SIGINT it prints one JSON line: events published, failed
//! polls, and latency from `occurred_at` (set by the inserting statement) to
//! the broker's acknowledgement, whole and split into the wait for the poll
//! (`occurred_at` to the poll that took the row) and the publish (that poll
//! to the ack).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use tokio_postgres::{AsyncMessage, NoTls};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value = "127.0.0.1:19092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    #[arg(long, default_value_t = 500)]
    batch: i64,
    #[arg(long, value_enum, default_value_t = Wake::Interval)]
    wake: Wake,
}

/// What ends the wait after an empty poll.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Wake {
    /// `--interval-ms` passed.
    Interval,
    /// A notification on channel `outbox_polled` (or the interval passed).
    Notify,
}

/// Latency histograms, in microseconds.
struct Latency {
    total: Histogram<u64>,
    /// `occurred_at` to the start of the poll that took the row.
    wait: Histogram<u64>,
    /// The start of that poll to the broker's acknowledgement.
    publish: Histogram<u64>,
}

const SELECT: &str = "SELECT id::text, aggregate_id, event_type, trace_id, \
       (extract(epoch FROM occurred_at) * 1000000)::bigint, \
       jsonb_build_object('event_id', id, 'event_type', event_type, \
           'aggregate_type', aggregate_type, 'aggregate_id', aggregate_id, \
           'occurred_at', occurred_at, 'schema_version', schema_version, \
           'trace_id', trace_id, 'payload', payload)::text \
     FROM outbox_polled ORDER BY occurred_at LIMIT $1 FOR UPDATE SKIP LOCKED";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config: tokio_postgres::Config = args.database_url.parse()?;
    config.application_name("polling-baseline");
    let (mut client, mut connection) = config.connect(NoTls).await?;
    // The connection's messages: notifications go to the poll loop.
    let (notified, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    let _ = notified.send(());
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("connection: {e}");
                    break;
                }
            }
        }
    });
    if args.wake == Wake::Notify {
        client.batch_execute("LISTEN outbox_polled").await?;
    }
    let kafka = ClientBuilder::new(args.brokers.split(',').map(String::from).collect())
        .build()
        .await
        .context("kafka")?;
    // rskafka writes a request in two writes; without TCP_NODELAY the
    // second waits for the broker's delayed ACK (docs/perf.md). As the
    // relay does: set it on every TCP socket, again each second for the
    // connections opened since.
    tokio::spawn(async {
        loop {
            commerce_base::nodelay::set_on_tcp_sockets();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    // Created here when missing; an error means it exists already.
    if let Ok(controller) = kafka.controller_client() {
        let create = controller.create_topic(args.topic.clone(), args.partitions, 1, 5_000);
        let _ = tokio::time::timeout(Duration::from_secs(10), create).await;
    }
    let mut partitions = Vec::new();
    for p in 0..args.partitions {
        partitions.push(
            kafka
                .partition_client(args.topic.clone(), p, UnknownTopicHandling::Retry)
                .await?,
        );
    }
    let histogram = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3);
    let mut latency = Latency {
        total: histogram()?,
        wait: histogram()?,
        publish: histogram()?,
    };
    let mut published = 0u64;
    let mut stop = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut failures = 0u64;
    loop {
        // A failed poll rolls back; its rows are taken again by the next one.
        let moved = match poll_once(&mut client, &partitions, args.batch, &mut latency).await {
            Ok(moved) => moved,
            Err(e) => {
                eprintln!("poll failed: {e:#}");
                failures += 1;
                0
            }
        };
        published += moved as u64;
        if moved == 0 {
            // Notifications for rows this poll already took are stale.
            while notifications.try_recv().is_ok() {}
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
                Some(()) = notifications.recv() => {}
                _ = stop.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "published": published,
            "failed_polls": failures,
            "p50_ms": ms(&latency.total, 0.5),
            "p99_ms": ms(&latency.total, 0.99),
            "max_ms": latency.total.max() as f64 / 1000.0,
            "wait_p50_ms": ms(&latency.wait, 0.5),
            "wait_p99_ms": ms(&latency.wait, 0.99),
            "publish_p50_ms": ms(&latency.publish, 0.5),
            "publish_p99_ms": ms(&latency.publish, 0.99),
        })
    );
    Ok(())
}

/// One poll: lock a batch, publish it, delete it, commit. Returns the rows moved.
async fn poll_once(
    client: &mut tokio_postgres::Client,
    partitions: &[PartitionClient],
    batch: i64,
    latency: &mut Latency,
) -> anyhow::Result<usize> {
    let polled = chrono::Utc::now().timestamp_micros();
    let txn = client.transaction().await?;
    let rows = txn.query(SELECT, &[&batch]).await?;
    if rows.is_empty() {
        txn.commit().await?;
        return Ok(0);
    }
    let mut per_partition: Vec<Vec<Record>> = vec![Vec::new(); partitions.len()];
    let mut ids = Vec::with_capacity(rows.len());
    let mut occurred = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.get(0);
        let key: String = row.get(1);
        let headers = BTreeMap::from([
            ("event_id".to_owned(), id.clone().into_bytes()),
            (
                "event_type".to_owned(),
                row.get::<_, String>(2).into_bytes(),
            ),
            ("trace_id".to_owned(), row.get::<_, String>(3).into_bytes()),
        ]);
        let partition = outbox_relay::publisher::partition_for(key.as_bytes(), partitions.len());
        per_partition[partition].push(Record {
            key: Some(key.into_bytes()),
            value: Some(row.get::<_, String>(5).into_bytes()),
            headers,
            timestamp: chrono::Utc::now(),
        });
        ids.push(id);
        occurred.push(row.get::<_, i64>(4));
    }
    let produces = partitions
        .iter()
        .zip(per_partition)
        .filter(|(_, records)| !records.is_empty())
        .map(|(client, records)| client.produce(records, Compression::NoCompression));
    tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::try_join_all(produces),
    )
    .await
    .context("produce timed out")??;
    let acked = chrono::Utc::now().timestamp_micros();
    let micros = |from: i64, to: i64| u64::try_from(to - from).unwrap_or(0).max(1);
    for at in occurred {
        let _ = latency.total.record(micros(at, acked));
        let _ = latency.wait.record(micros(at, polled));
    }
    let _ = latency
        .publish
        .record_n(micros(polled, acked), rows.len() as u64);
    txn.execute(
        "DELETE FROM outbox_polled WHERE id::text = ANY($1)",
        &[&ids],
    )
    .await?;
    txn.commit().await?;
    Ok(rows.len())
}

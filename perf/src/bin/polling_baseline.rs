//! A polling outbox publisher, written only as the baseline the relay is
//! measured against (`relay_bench` starts it): every `--interval-ms` it
//! takes up to `--batch` rows of `outbox_polled` with
//! `FOR UPDATE SKIP LOCKED`, produces them to Kafka (same key, headers and
//! envelope as the relay), deletes them and commits. On SIGTERM/SIGINT it
//! prints one JSON line: events published, failed polls and latency from `occurred_at`
//! (set by the inserting statement) to the broker's acknowledgement.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use tokio_postgres::NoTls;

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
    let (mut client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    let kafka = ClientBuilder::new(args.brokers.split(',').map(String::from).collect())
        .build()
        .await
        .context("kafka")?;
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
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
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
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
                _ = stop.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "published": published,
            "failed_polls": failures,
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "max_ms": latency.max() as f64 / 1000.0,
        })
    );
    Ok(())
}

/// One poll: lock a batch, publish it, delete it, commit. Returns the rows moved.
async fn poll_once(
    client: &mut tokio_postgres::Client,
    partitions: &[PartitionClient],
    batch: i64,
    latency: &mut Histogram<u64>,
) -> anyhow::Result<usize> {
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
    for micros in occurred {
        let _ = latency.record(u64::try_from(acked - micros).unwrap_or(0).max(1));
    }
    txn.execute(
        "DELETE FROM outbox_polled WHERE id::text = ANY($1)",
        &[&ids],
    )
    .await?;
    txn.commit().await?;
    Ok(rows.len())
}

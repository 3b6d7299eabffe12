//! The fetch loop of one partition: fetch from the position, skip what
//! the handler does not want, apply the rest in one transaction (see
//! `apply`), and go on from after the last record. Failures back off; an
//! offset the broker no longer has is resolved by `out_of_range`.

use std::time::{Duration, Instant};

use commerce_base::backoff::{Backoff, Jitter};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Integer, Text},
};
use diesel_async::RunQueryDsl;
use rskafka::client::partition::PartitionClient;
use tokio_util::sync::CancellationToken;

use super::{
    Shared,
    apply::{ApplyError, Outcomes},
    broker,
    decode::Decoded,
    metrics::Metrics,
    out_of_range::Jump,
};

/// How long a position reached through unwanted events only may stay in
/// memory before it is stored.
const LAZY_STORE: Duration = Duration::from_secs(1);

/// Consumes one partition while this instance holds its lease.
pub(super) struct Worker {
    pub shared: Shared,
    pub topic: String,
    pub partition: i32,
    pub cancel: CancellationToken,
}

impl Worker {
    pub async fn run(self) {
        let labels = Metrics::partition(&self.shared.identity.group, &self.topic, self.partition);
        let metrics = self.shared.metrics.of_partition(&labels);
        tracing::info!(topic = %self.topic, partition = self.partition, "partition worker started");
        let mut backoff = Backoff::new(
            Duration::from_millis(50),
            self.shared.config.max_backoff,
            Jitter::Added,
        );
        let mut next = loop {
            match self.stored_offset().await {
                Ok(offset) => break offset,
                Err(error) => {
                    tracing::warn!(error = %error, "reading the stored offset failed");
                    if !self.pause(backoff.next_delay()).await {
                        return;
                    }
                }
            }
        };
        backoff.reset();
        // `next` is where the next fetch starts; `stored` what the database
        // holds. They differ while fetches held only unwanted events (see
        // `EventHandler::wants`): those are stored with the next fetch that
        // has work, or after `LAZY_STORE` at the latest.
        let mut stored = next;
        let mut stored_at = Instant::now();
        let mut client: Option<PartitionClient> = None;
        // When the last fetch brought records, more are likely on their way:
        // the next fetch asks for what is there at once, no sooner than this
        // after the last one started (`ConsumerConfig::busy_fetch_interval`,
        // or `skipped_fetch_interval` when the service wanted none of them).
        // `None`: the partition was quiet, the next fetch waits at the broker.
        let mut spacing: Option<Duration> = None;
        let mut fetch_started = Instant::now();
        while !self.cancel.is_cancelled() {
            if client.is_none() {
                match broker::partition_client(
                    &self.shared.identity,
                    &self.shared.config,
                    &self.topic,
                    self.partition,
                )
                .await
                {
                    Ok(c) => client = Some(c),
                    Err(error) => {
                        metrics.fetch_errors.inc();
                        tracing::warn!(topic = %self.topic, partition = self.partition,
                            error = %error, "connecting the partition client failed");
                        if !self.pause(backoff.next_delay()).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let max_wait = match spacing.take() {
                Some(spacing) => {
                    let since = fetch_started.elapsed();
                    if since < spacing && !self.pause(spacing - since).await {
                        return;
                    }
                    Duration::ZERO
                }
                None => self.shared.config.fetch_max_wait,
            };
            fetch_started = Instant::now();
            metrics.fetches.inc();
            let fetch = client.as_ref().expect("set above").fetch_records(
                next,
                1..self.shared.config.fetch_max_bytes,
                max_wait.as_millis() as i32,
            );
            let deadline = self.shared.config.broker_timeout + max_wait;
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = tokio::time::timeout(deadline, fetch) => r,
            };
            let (records, high_watermark) = match result {
                Ok(Ok(fetched)) => fetched,
                Ok(Err(error)) if broker::is_out_of_range(&error) => {
                    // The broker no longer has `next`: its log start and end
                    // say why. Whatever happens, the next fetch comes after
                    // a pause or from a new position, never at once from
                    // the same one.
                    let client_ref = client.as_ref().expect("set above");
                    let range = match broker::log_range(
                        client_ref,
                        self.shared.config.broker_timeout,
                    )
                    .await
                    {
                        Ok(range) => range,
                        Err(error) => {
                            metrics.fetch_errors.inc();
                            tracing::warn!(topic = %self.topic, partition = self.partition,
                                error = %format!("{error:#}"), "listing the partition's offsets failed");
                            client = None;
                            if !self.pause(backoff.next_delay()).await {
                                return;
                            }
                            continue;
                        }
                    };
                    let Some(jump) = Jump::decide(next, range) else {
                        // In range again: the log moved between the fetch
                        // and the listing (records produced meanwhile, a
                        // new leader catching up). Fetch again, after a
                        // pause.
                        tracing::warn!(topic = %self.topic, partition = self.partition,
                            offset = next, log_start = range.0, log_end = range.1,
                            "fetch out of range, but the offset is within the log now");
                        if !self.pause(backoff.next_delay()).await {
                            return;
                        }
                        continue;
                    };
                    match self.apply(&[], stored, jump.to()).await {
                        Ok(_) => {
                            jump.log(&self.topic, self.partition, next, range);
                            (next, stored, stored_at) = (jump.to(), jump.to(), Instant::now());
                            if let Jump::Deleted { skipped, .. } = jump {
                                self.shared
                                    .metrics
                                    .skipped
                                    .get_or_create(&labels)
                                    .inc_by(skipped);
                            }
                            metrics.lag.set((range.1 - next).max(0));
                        }
                        Err(ApplyError::Fenced) => return,
                        Err(ApplyError::Transient(error)) => {
                            tracing::warn!(topic = %self.topic, partition = self.partition,
                                error = %format!("{error:#}"), "moving the offset failed");
                            if !self.pause(backoff.next_delay()).await {
                                return;
                            }
                        }
                    }
                    continue;
                }
                Ok(Err(error)) => {
                    metrics.fetch_errors.inc();
                    tracing::warn!(topic = %self.topic, partition = self.partition, offset = next,
                        error = %error, "fetch failed");
                    client = None;
                    if !self.pause(backoff.next_delay()).await {
                        return;
                    }
                    continue;
                }
                Err(_) => {
                    metrics.fetch_errors.inc();
                    tracing::warn!(topic = %self.topic, partition = self.partition, "fetch timed out");
                    client = None;
                    continue;
                }
            };
            backoff.reset();
            let decoded: Vec<Decoded> = records.iter().map(Decoded::of).collect();
            let wanted: Vec<&Decoded> = decoded.iter().filter(|d| self.wanted(d)).collect();
            let ignored = (records.len() - wanted.len()) as u64;
            let new_next = records.last().map_or(next, |last| last.offset + 1);
            let busy = !records.is_empty();
            spacing = match (busy, wanted.is_empty()) {
                (false, _) => None,
                (true, true) => Some(self.shared.config.skipped_fetch_interval),
                (true, false) => Some(self.shared.config.busy_fetch_interval),
            };
            if wanted.is_empty() {
                // Nothing new (the high watermark may be below `next` for a
                // moment, a new leader that has not caught up yet; a
                // position past the end of the log is answered with
                // OFFSET_OUT_OF_RANGE instead, above), or nothing wanted:
                // the offset moves on and is stored lazily.
                if busy {
                    self.count(&Outcomes {
                        ignored,
                        ..Outcomes::default()
                    });
                }
                next = new_next;
                metrics.lag.set((high_watermark - next).max(0));
                if !self.store_lazily(next, &mut stored, &mut stored_at).await {
                    return;
                }
                continue;
            }
            loop {
                match self.apply(&wanted, stored, new_next).await {
                    Ok(mut outcomes) => {
                        outcomes.ignored = ignored;
                        self.count(&outcomes);
                        (next, stored, stored_at) = (new_next, new_next, Instant::now());
                        metrics.lag.set((high_watermark - next).max(0));
                        backoff.reset();
                        break;
                    }
                    Err(ApplyError::Fenced) => {
                        tracing::warn!(topic = %self.topic, partition = self.partition,
                            "fenced: another instance owns this partition now");
                        return;
                    }
                    Err(ApplyError::Transient(error)) => {
                        metrics.retries.inc();
                        tracing::warn!(topic = %self.topic, partition = self.partition,
                            offset = next, error = %format!("{error:#}"),
                            "handling failed, retrying");
                        if !self.pause(backoff.next_delay()).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Stores `next` when the database lags behind it (unwanted events only)
    /// for `LAZY_STORE` or longer; false when fenced (the worker must stop).
    async fn store_lazily(&self, next: i64, stored: &mut i64, stored_at: &mut Instant) -> bool {
        if *stored == next || stored_at.elapsed() < LAZY_STORE {
            return true;
        }
        match self.apply(&[], *stored, next).await {
            Ok(_) => {
                (*stored, *stored_at) = (next, Instant::now());
                true
            }
            Err(ApplyError::Fenced) => false,
            // Stored with a later fetch; nothing depends on it.
            Err(ApplyError::Transient(_)) => true,
        }
    }

    /// Sleeps unless cancelled first; false when cancelled.
    async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(duration) => true,
        }
    }

    fn count(&self, outcomes: &Outcomes) {
        self.shared.metrics.count(
            &self.shared.identity.group,
            &self.topic,
            self.partition,
            outcomes,
        );
    }

    async fn stored_offset(&self) -> anyhow::Result<i64> {
        let mut conn = self.shared.pool.get().await?;
        let rows: Vec<OffsetRow> = diesel::sql_query(
            "SELECT next_offset FROM consumer_offsets \
             WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
        )
        .bind::<Text, _>(&self.shared.identity.group)
        .bind::<Text, _>(&self.topic)
        .bind::<Integer, _>(self.partition)
        .load(&mut conn)
        .await?;
        Ok(<[_]>::first(&rows).map_or(0, |r| r.next_offset))
    }

    /// Whether the handler wants the record's event. Records that do not
    /// decode are wanted: the transaction dead-letters them.
    fn wanted(&self, decoded: &Decoded) -> bool {
        match &decoded.envelope {
            Ok((_, Ok(event))) => self.shared.handler.wants(event),
            _ => true,
        }
    }
}

#[derive(QueryableByName)]
struct OffsetRow {
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
}

//! Which partitions this instance works on: it heartbeats in
//! `consumer_members`, takes its fair share of `partition_leases`
//! (`ceil(partitions / live instances)`), renews them every `lease_ttl / 3`,
//! takes over the leases of dead instances, gives back what exceeds its
//! share, and runs one [`Worker`] per partition it holds. On shutdown it
//! releases its leases.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Integer, Text},
};
use diesel_async::RunQueryDsl;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{
    Shared,
    broker::discover,
    config::{ConsumerConfig, Identity},
    inbox,
    metrics::Metrics,
    worker::Worker,
};
use crate::db::DbPool;

pub(super) type PartitionKey = (String, i32);

pub(super) struct WorkerHandle {
    cancel: CancellationToken,
    abort: AbortHandle,
}

pub(super) struct Coordinator {
    pub shared: Shared,
    pub shutdown: CancellationToken,
    pub workers: HashMap<PartitionKey, WorkerHandle>,
    /// Owns the worker tasks: dropping the coordinator aborts them all.
    pub tasks: JoinSet<()>,
}

impl Coordinator {
    pub async fn run(mut self) {
        let config = self.shared.config.clone();
        let identity = self.shared.identity.clone();
        tracing::info!(
            group = %identity.group, instance = %config.instance_id, topics = ?identity.topics,
            "consumer starting"
        );
        let mut client = None;
        let mut partitions: BTreeSet<PartitionKey> = BTreeSet::new();
        let mut last_renewal: Option<Instant> = None;
        let mut last_purge = Instant::now();
        loop {
            while self.tasks.try_join_next().is_some() {}
            self.workers.retain(|_, w| !w.abort.is_finished());

            // Bounded well below the lease TTL: a hanging broker must not
            // delay the lease renewal below.
            let discovery = tokio::time::timeout(
                config.renew_interval() / 2,
                discover(&mut client, &identity, &config),
            );
            match discovery
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
            {
                Ok(found) => partitions = found,
                Err(error) => {
                    tracing::warn!(group = %identity.group, error = %error, "listing topics failed");
                    client = None;
                }
            }

            match self.rebalance(&partitions).await {
                Ok(held) => {
                    last_renewal = Some(Instant::now());
                    for key in held {
                        if !self.workers.contains_key(&key) {
                            self.start_worker(key);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(group = %identity.group, error = %error, "lease renewal failed");
                    // Our leases may have lapsed: stop working on them.
                    if last_renewal.is_none_or(|t| t.elapsed() > config.lease_ttl) {
                        let keys: Vec<_> = self.workers.keys().cloned().collect();
                        self.stop_workers(&keys).await;
                    }
                }
            }
            let owned = self.workers.len() as i64;
            self.shared
                .metrics
                .owned
                .get_or_create(&vec![("group".to_string(), identity.group.clone())])
                .set(owned);

            if last_purge.elapsed() > Duration::from_secs(600) {
                last_purge = Instant::now();
                if let Err(error) =
                    inbox::purge(&self.shared.pool, &identity.group, config.inbox_retention).await
                {
                    tracing::warn!(error = %error, "inbox purge failed");
                }
            }

            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(config.renew_interval()) => {}
            }
        }
        let keys: Vec<_> = self.workers.keys().cloned().collect();
        self.stop_workers(&keys).await;
        if let Err(error) = leave(&self.shared.pool, &identity, &config).await {
            tracing::warn!(error = %error, "releasing leases failed");
        }
        tracing::info!(group = %identity.group, instance = %config.instance_id, "consumer stopped");
    }

    /// Heartbeats, renews this instance's leases, gives back what exceeds its
    /// fair share and takes free ones up to it. Returns the leases held.
    async fn rebalance(
        &mut self,
        partitions: &BTreeSet<PartitionKey>,
    ) -> anyhow::Result<BTreeSet<PartitionKey>> {
        let (config, identity) = (self.shared.config.clone(), self.shared.identity.clone());
        let mut conn = self.shared.pool.get().await?;
        let ttl_ms = config.lease_ttl.as_millis() as i64;
        let group = identity.group.as_str();
        let me = config.instance_id.as_str();

        diesel::sql_query(
            "INSERT INTO consumer_members (consumer_group, instance_id, expires_at) \
             VALUES ($1, $2, now() + $3 * interval '1 millisecond') \
             ON CONFLICT (consumer_group, instance_id) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind::<Text, _>(group)
        .bind::<Text, _>(me)
        .bind::<BigInt, _>(ttl_ms)
        .execute(&mut conn)
        .await?;
        diesel::sql_query(
            "DELETE FROM consumer_members WHERE consumer_group = $1 AND expires_at < now()",
        )
        .bind::<Text, _>(group)
        .execute(&mut conn)
        .await?;

        if !partitions.is_empty() {
            let (topics, numbers): (Vec<String>, Vec<i32>) = partitions.iter().cloned().unzip();
            for table in ["partition_leases", "consumer_offsets"] {
                diesel::sql_query(format!(
                    "INSERT INTO {table} (consumer_group, topic, partition) \
                     SELECT $1, t, p FROM unnest($2::text[], $3::int[]) AS x(t, p) \
                     ON CONFLICT DO NOTHING"
                ))
                .bind::<Text, _>(group)
                .bind::<Array<Text>, _>(&topics)
                .bind::<Array<Integer>, _>(&numbers)
                .execute(&mut conn)
                .await?;
            }
            // A topic recreated with fewer partitions (deleted and created
            // again, or a broker that lost its data): leases of partitions
            // that no longer exist would count towards the fair share and
            // could crowd out real ones. Their workers stop below.
            diesel::sql_query(
                "DELETE FROM partition_leases l \
                 WHERE consumer_group = $1 AND topic = ANY($2) AND NOT EXISTS \
                   (SELECT 1 FROM unnest($2::text[], $3::int[]) AS x(t, p) \
                    WHERE x.t = l.topic AND x.p = l.partition)",
            )
            .bind::<Text, _>(group)
            .bind::<Array<Text>, _>(&topics)
            .bind::<Array<Integer>, _>(&numbers)
            .execute(&mut conn)
            .await?;
        }

        let members: Vec<CountRow> = diesel::sql_query(
            "SELECT count(*) AS n FROM consumer_members \
             WHERE consumer_group = $1 AND expires_at > now()",
        )
        .bind::<Text, _>(group)
        .load(&mut conn)
        .await?;
        let members = <[_]>::first(&members).map_or(1, |r| r.n.max(1)) as usize;

        let topics = identity.topics.clone();
        let renewed: Vec<LeaseRow> = diesel::sql_query(
            "UPDATE partition_leases SET expires_at = now() + $3 * interval '1 millisecond' \
             WHERE consumer_group = $1 AND owner = $2 AND topic = ANY($4) \
             RETURNING topic, partition",
        )
        .bind::<Text, _>(group)
        .bind::<Text, _>(me)
        .bind::<BigInt, _>(ttl_ms)
        .bind::<Array<Text>, _>(&topics)
        .load(&mut conn)
        .await?;
        let mut held: BTreeSet<PartitionKey> = renewed
            .into_iter()
            .map(|r| (r.topic, r.partition))
            .collect();

        // Workers whose lease is gone (expired and taken) stop now.
        let lost: Vec<_> = self
            .workers
            .keys()
            .filter(|k| !held.contains(*k))
            .cloned()
            .collect();
        if !lost.is_empty() {
            tracing::warn!(?lost, "leases lost");
            self.stop_workers(&lost).await;
        }

        let total = partitions.len().max(held.len());
        let (release, wanted) = plan(&held, fair_share(total, members));
        if !release.is_empty() {
            tracing::info!(?release, "giving partitions back for rebalancing");
            self.stop_workers(&release).await;
            let (topics, numbers): (Vec<String>, Vec<i32>) = release.iter().cloned().unzip();
            diesel::sql_query(
                "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity' \
                 FROM unnest($3::text[], $4::int[]) AS x(t, p) \
                 WHERE consumer_group = $1 AND owner = $2 AND topic = x.t AND partition = x.p",
            )
            .bind::<Text, _>(group)
            .bind::<Text, _>(me)
            .bind::<Array<Text>, _>(&topics)
            .bind::<Array<Integer>, _>(&numbers)
            .execute(&mut conn)
            .await?;
            for key in &release {
                held.remove(key);
            }
        }
        if wanted > 0 {
            let taken: Vec<LeaseRow> = diesel::sql_query(
                "UPDATE partition_leases l SET owner = $2, \
                     expires_at = now() + $3 * interval '1 millisecond' \
                 FROM (SELECT topic, partition FROM partition_leases \
                       WHERE consumer_group = $1 AND topic = ANY($4) \
                         AND (owner IS NULL OR expires_at < now()) \
                       ORDER BY topic, partition LIMIT $5 \
                       FOR UPDATE SKIP LOCKED) c \
                 WHERE l.consumer_group = $1 AND l.topic = c.topic AND l.partition = c.partition \
                 RETURNING l.topic, l.partition",
            )
            .bind::<Text, _>(group)
            .bind::<Text, _>(me)
            .bind::<BigInt, _>(ttl_ms)
            .bind::<Array<Text>, _>(&topics)
            .bind::<BigInt, _>(wanted as i64)
            .load(&mut conn)
            .await?;
            if !taken.is_empty() {
                tracing::info!(
                    taken = ?taken.iter().map(|r| (&r.topic, r.partition)).collect::<Vec<_>>(),
                    "partitions acquired"
                );
            }
            held.extend(taken.into_iter().map(|r| (r.topic, r.partition)));
        }
        Ok(held)
    }

    fn start_worker(&mut self, key: PartitionKey) {
        let cancel = self.shutdown.child_token();
        let worker = Worker {
            shared: self.shared.clone(),
            topic: key.0.clone(),
            partition: key.1,
            cancel: cancel.clone(),
        };
        let abort = self.tasks.spawn(worker.run());
        self.workers.insert(key, WorkerHandle { cancel, abort });
    }

    /// Cancels the workers and waits (bounded) until they are gone, so no
    /// lease is given back while its worker still runs.
    async fn stop_workers(&mut self, keys: &[PartitionKey]) {
        let handles: Vec<_> = keys.iter().filter_map(|k| self.workers.remove(k)).collect();
        for handle in &handles {
            handle.cancel.cancel();
        }
        let deadline = Instant::now() + self.shared.config.broker_timeout + Duration::from_secs(5);
        while handles.iter().any(|h| !h.abort.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for handle in &handles {
            handle.abort.abort();
        }
        for key in keys {
            self.shared.metrics.lag.remove(&Metrics::partition(
                &self.shared.identity.group,
                &key.0,
                key.1,
            ));
        }
    }
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct LeaseRow {
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Integer)]
    partition: i32,
}

/// Each instance's share of `total` partitions among `members` instances.
fn fair_share(total: usize, members: usize) -> usize {
    total.div_ceil(members.max(1))
}

/// Which held partitions to give back (the last ones beyond `target`) and
/// how many more to take.
fn plan(held: &BTreeSet<PartitionKey>, target: usize) -> (Vec<PartitionKey>, usize) {
    if held.len() > target {
        (held.iter().skip(target).cloned().collect(), 0)
    } else {
        (Vec::new(), target - held.len())
    }
}

/// Gives this instance's leases back and leaves the group's members.
async fn leave(pool: &DbPool, identity: &Identity, config: &ConsumerConfig) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    diesel::sql_query(
        "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity' \
         WHERE consumer_group = $1 AND owner = $2",
    )
    .bind::<Text, _>(&identity.group)
    .bind::<Text, _>(&config.instance_id)
    .execute(&mut conn)
    .await?;
    diesel::sql_query(
        "DELETE FROM consumer_members WHERE consumer_group = $1 AND instance_id = $2",
    )
    .bind::<Text, _>(&identity.group)
    .bind::<Text, _>(&config.instance_id)
    .execute(&mut conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str, partition: i32) -> PartitionKey {
        (topic.into(), partition)
    }

    #[test]
    fn fair_share_rounds_up() {
        assert_eq!(fair_share(6, 1), 6);
        assert_eq!(fair_share(6, 2), 3);
        assert_eq!(fair_share(6, 4), 2);
        assert_eq!(fair_share(3, 0), 3);
        assert_eq!(fair_share(0, 3), 0);
    }

    #[test]
    fn plan_releases_the_excess_and_takes_the_missing() {
        let held: BTreeSet<_> = [key("a", 0), key("a", 1), key("b", 0)].into();
        assert_eq!(plan(&held, 2), (vec![key("b", 0)], 0));
        assert_eq!(plan(&held, 3), (vec![], 0));
        assert_eq!(plan(&held, 5), (vec![], 2));
    }
}

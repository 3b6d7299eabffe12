//! The Kafka consumer runtime: effectively-once event handling on rskafka,
//! without consumer groups.
//!
//! - Position: `consumer_offsets` holds `(group, topic, partition) -> next
//!   offset` in the service's own database. A fetch is handled in ONE
//!   transaction that applies the handler's effects, records each event id in
//!   `inbox` and advances the offset, so effects happen once per offset.
//! - Out of range: when the broker no longer has the stored offset, its log
//!   start and end (ListOffsets) decide. Past the end (the topic was
//!   recreated, the broker lost its data): the partition starts over from
//!   its log start; the inbox skips what was handled before. Before the log
//!   start (retention or DeleteRecords removed records not handled yet): the
//!   partition jumps to the log start; that is data loss, logged at error
//!   level and counted in `consumer_offsets_skipped_total`.
//! - Repeats: the relay is at-least-once, so the same event can sit at two
//!   offsets; an event id already in `inbox` is skipped (the offset still
//!   advances).
//! - Fencing: the transaction locks the offset row and checks that it still
//!   holds the offset the fetch started at and that this instance owns the
//!   lease; otherwise nothing is applied and the partition worker stops. Two
//!   instances can therefore never both apply the same offset.
//! - Serialized effects: a fetch's transaction then takes the group's
//!   advisory lock, so fetches of different partitions apply one at a time
//!   and can never deadlock on rows they share (measured: with 20 customers
//!   at 200 orders/s, payment fetches deadlocked every second without it).
//! - Ownership: `partition_leases` (owner + expiry), renewed every
//!   `lease_ttl / 3`; instances heartbeat in `consumer_members` and each takes
//!   its fair share (`ceil(partitions / live instances)`); leases of a dead
//!   instance expire and are taken over. On shutdown leases are released.
//! - Poison: a record whose value is not an [`Envelope`], whose type or
//!   payload is unknown, whose envelope holds a NUL character (which no
//!   PostgreSQL text can store), whose handler returns
//!   [`HandleError::Permanent`] or fails on a data exception (SQLSTATE class
//!   22: the record's values do not fit the database) is written to
//!   `dead_letters` with the reason and its raw bytes; the partition moves
//!   on. Other errors ([`HandleError::Transient`]: connection, serialization,
//!   deadlock, constraint races) roll the fetch back and retry it with
//!   exponential backoff.
//! - Broker calls all carry deadlines (rskafka's own retries would otherwise
//!   go on as long as the broker is unreachable); after a failed or
//!   timed-out call the partition client is rebuilt, with a new connection
//!   and fresh metadata; after a failed one the partition first waits out
//!   the backoff (a timed-out one has waited already).
//! - Metrics: `consumer_lag` (high watermark - next offset) per partition,
//!   `consumer_event_age_seconds` (occurred_at to handled) per topic,
//!   records by outcome, retries, fetch errors, offsets skipped (records
//!   deleted before they were handled), partitions owned.
//!
//! Usage (in a service's startup):
//! ```ignore
//! let handle = consumer::spawn(pool, config.consumer.clone().for_service(
//!     kafka.broker_list(), "payment", [topics::ORDERS, topics::USERS]),
//!     Arc::new(MyHandler), &mut registry, shutdown.clone());
//! ```

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap},
    fmt,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Bytea, Integer, Jsonb, Nullable, Text, Uuid as SqlUuid},
};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, TransactionManager};
use futures::FutureExt;
pub use futures::future::BoxFuture;
use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use rskafka::{
    BackoffConfig,
    client::{
        ClientBuilder,
        partition::{OffsetAt, PartitionClient, UnknownTopicHandling},
    },
    record::RecordAndOffset,
};
use serde::{Deserialize, Serialize};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    db::{DbPool, Reuse},
    events::{Envelope, Event, headers},
};

/// Tuning and identity of one consumer. In a service's config as section
/// `consumer`; the service fills `brokers`, `group` and `topics` itself
/// (see [`ConsumerConfig::for_service`]). Durations accept `"250ms"`, `"5s"`,
/// `"2m"`, `"1h"`, `"7d"` or a number of milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    pub brokers: Vec<String>,
    /// The consuming service's name; offsets, leases and the inbox are per group.
    pub group: String,
    pub topics: Vec<String>,
    /// Unique per running process (default: host, pid and a random suffix).
    pub instance_id: String,
    /// How long a partition lease lives without renewal (renewed every third).
    #[serde(with = "duration_serde")]
    pub lease_ttl: Duration,
    /// Fetch `max_wait` while a partition is idle (the last fetch brought
    /// nothing): how long the broker may hold a fetch open waiting for new
    /// records. Kafka answers a held fetch as soon as a record arrives, so
    /// this adds no latency; it only bounds how long an idle fetch waits
    /// (and so how often an idle partition is asked).
    #[serde(with = "duration_serde")]
    pub fetch_max_wait: Duration,
    /// While fetches bring records, the next one is sent no sooner than this
    /// after the previous one started and asks for what is there now
    /// (`max_wait` 0): the records of a busy partition that arrive in the
    /// meantime are fetched and applied together, in one transaction,
    /// instead of one fetch and one transaction per record.
    #[serde(with = "duration_serde")]
    pub busy_fetch_interval: Duration,
    pub fetch_max_bytes: i32,
    /// Deadline of every broker call (on top of `fetch_max_wait` for fetches).
    #[serde(with = "duration_serde")]
    pub broker_timeout: Duration,
    /// Cap of the exponential backoff between retries.
    #[serde(with = "duration_serde")]
    pub max_backoff: Duration,
    /// Handled event ids are remembered this long.
    #[serde(with = "duration_serde")]
    pub inbox_retention: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".into()],
            group: String::new(),
            topics: Vec::new(),
            instance_id: default_instance_id(),
            lease_ttl: Duration::from_secs(10),
            fetch_max_wait: Duration::from_millis(500),
            busy_fetch_interval: Duration::from_millis(5),
            fetch_max_bytes: 1024 * 1024,
            broker_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl ConsumerConfig {
    /// Fills in what the service decides: brokers (from its `kafka` section),
    /// its group name and the topics it consumes.
    pub fn for_service<T: Into<String>>(
        mut self,
        brokers: Vec<String>,
        group: &str,
        topics: impl IntoIterator<Item = T>,
    ) -> Self {
        self.brokers = brokers;
        self.group = group.into();
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    fn renew_interval(&self) -> Duration {
        (self.lease_ttl / 3).max(Duration::from_millis(50))
    }
}

fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "instance".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Why a handler could not apply an event.
#[derive(Debug)]
pub enum HandleError {
    /// Can never succeed (invalid content, broken invariant): the record goes
    /// to `dead_letters` with this reason, its effects are rolled back and the
    /// partition moves on.
    Permanent(String),
    /// May succeed later (database trouble, deadlock): the whole fetch is
    /// rolled back and retried with backoff.
    Transient(anyhow::Error),
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandleError::Permanent(reason) => write!(f, "permanent: {reason}"),
            HandleError::Transient(error) => write!(f, "transient: {error:#}"),
        }
    }
}

impl std::error::Error for HandleError {}

/// What `?` on a diesel error gives a handler: a data exception (the
/// event's values do not fit the database) is permanent, anything else
/// transient.
impl From<diesel::result::Error> for HandleError {
    fn from(error: diesel::result::Error) -> Self {
        match data_exception(&error) {
            Some(reason) => HandleError::Permanent(reason),
            None => HandleError::Transient(error.into()),
        }
    }
}

/// Messages of PostgreSQL's data exceptions (SQLSTATE class 22) that values
/// taken from a record can cause. diesel-async passes on only eight
/// SQLSTATEs (as `DatabaseErrorKind`) and keeps the rest, class 22
/// included, in a type that cannot be inspected, so the (English) server
/// message is what is left to go by. A server with translated messages
/// (`lc_messages`) retries these like any transient error; NUL characters,
/// the likeliest cause, are refused before the handler runs either way
/// (see [`decode_value`]).
const DATA_EXCEPTIONS: [&str; 10] = [
    "invalid byte sequence for encoding", // 22021 character_not_in_repertoire
    "unsupported Unicode escape sequence", // 22P05 untranslatable_character
    "has no equivalent in encoding",      // 22P05
    "invalid input syntax for",           // 22P02 invalid_text_representation, 22007
    "invalid input value for enum",       // 22P02
    "malformed array literal",            // 22P02
    "value too long for type",            // 22001 string_data_right_truncation
    "out of range",                       // 22003 numeric_value_out_of_range, 22008
    "numeric field overflow",             // 22003
    "division by zero",                   // 22012
];

/// The dead-letter reason when `error` is a data exception: the database
/// refused the record's values, and would refuse them again. Connection,
/// serialization, deadlock and constraint errors are not (a constraint
/// violation can be a race with a concurrent writer: retried).
fn data_exception(error: &diesel::result::Error) -> Option<String> {
    match error {
        diesel::result::Error::DatabaseError(_, info)
            if DATA_EXCEPTIONS.iter().any(|m| info.message().contains(m)) =>
        {
            Some(format!(
                "the database refused the event's data: {}",
                info.message()
            ))
        }
        _ => None,
    }
}

/// A transient handler error that is a data exception after all (a diesel
/// error wrapped by the handler): the dead-letter reason.
fn permanent_cause(error: &anyhow::Error) -> Option<String> {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<diesel::result::Error>())
        .find_map(data_exception)
}

/// What a service does with the events of its topics.
pub trait EventHandler: Send + Sync + 'static {
    /// Runs inside the diesel transaction that also advances the partition
    /// offset and records `envelope.event_id` in the inbox (each record in
    /// its own savepoint when one of the fetch must be dead-lettered); write
    /// effects and outbox rows on `conn`. Events the service does not care
    /// about: return `Ok(())`. It may run more than once for one record
    /// (rolled back each time but the last).
    fn handle<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        envelope: &'a Envelope,
        event: Event,
    ) -> BoxFuture<'a, Result<(), HandleError>>;

    /// Whether [`handle`](Self::handle) acts on `event` at all. Events it
    /// does not want are skipped without touching the database: no inbox
    /// row, no savepoint, and a fetch holding only such events moves the
    /// offset in memory only (stored with the next fetch that has work, so a
    /// restart may read them again and skip them again). Default: all.
    fn wants(&self, event: &Event) -> bool {
        let _ = event;
        true
    }

    /// Called instead of [`handle`](Self::handle) for a record whose event
    /// id is already in the inbox (a repeat, in the same transaction and
    /// savepoint rules). A saga participant writes again, with their
    /// original event ids, the events it answered that event with the first
    /// time: the requester may have lost them. Default: nothing.
    /// `Permanent` here only means "nothing to announce": logged, not
    /// dead-lettered.
    fn repeated<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        envelope: &'a Envelope,
        event: Event,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        let _ = (conn, envelope, event);
        Box::pin(async { Ok(()) })
    }

    /// How fetches of different partitions may run at the same time.
    fn concurrency(&self) -> Concurrency {
        Concurrency::Serialized
    }
}

/// How the runtime keeps a group's fetches (one transaction each, one per
/// partition at a time) from deadlocking on rows they share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// One fetch of the group applies at a time (a group advisory lock).
    /// Safe for any handler; the default.
    Serialized,
    /// Fetches apply concurrently, each in ascending order of the records'
    /// keys (a stable sort: one key's events keep their order). Every
    /// transaction then locks rows in the same order, so none can deadlock,
    /// PROVIDED that a handler locks only rows of the record's own key (its
    /// aggregate, e.g. the order row for an event keyed by order id).
    ByKey,
}

/// Starts the consumer: a coordinator task that holds leases and runs one
/// worker per owned partition. It stops (releasing its leases) when
/// `shutdown` is cancelled; aborting the returned handle stops everything
/// without releasing (as a crash would).
pub fn spawn(
    pool: DbPool,
    config: ConsumerConfig,
    handler: Arc<dyn EventHandler>,
    metrics: &mut Registry,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let metrics = Metrics::register(metrics);
    let coordinator = Coordinator {
        pool,
        config: Arc::new(config),
        handler,
        metrics,
        shutdown,
        workers: HashMap::new(),
        tasks: JoinSet::new(),
    };
    tokio::spawn(coordinator.run())
}

/// How long a position reached through unwanted events only may stay in
/// memory before it is stored.
const LAZY_STORE: Duration = Duration::from_secs(1);

type Labels = Vec<(String, String)>;
type PartitionKey = (String, i32);

#[derive(Clone)]
struct Metrics {
    lag: Family<Labels, Gauge>,
    records: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    fetch_errors: Family<Labels, Counter>,
    skipped: Family<Labels, Counter>,
    owned: Family<Labels, Gauge>,
    age: Family<Labels, Histogram>,
}

impl Metrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            lag: Family::default(),
            records: Family::default(),
            retries: Family::default(),
            fetch_errors: Family::default(),
            skipped: Family::default(),
            owned: Family::default(),
            age: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
            }),
        };
        registry.register(
            "consumer_lag",
            "Records not yet handled: high watermark minus next offset",
            metrics.lag.clone(),
        );
        registry.register(
            "consumer_records",
            "Records consumed, by outcome (handled, duplicate, dead_lettered)",
            metrics.records.clone(),
        );
        registry.register(
            "consumer_retries",
            "Fetches rolled back after a transient error and retried",
            metrics.retries.clone(),
        );
        registry.register(
            "consumer_fetch_errors",
            "Failed or timed-out broker calls",
            metrics.fetch_errors.clone(),
        );
        registry.register(
            "consumer_offsets_skipped",
            "Offsets jumped over because the broker deleted their records (retention, \
             DeleteRecords) before they were handled: lost events",
            metrics.skipped.clone(),
        );
        registry.register(
            "consumer_partitions_owned",
            "Partitions this instance holds a lease on",
            metrics.owned.clone(),
        );
        registry.register(
            "consumer_event_age_seconds",
            "From the event's occurred_at (its producer's transaction) to the commit of the \
             transaction that handled it: relay, broker and fetch together",
            metrics.age.clone(),
        );
        metrics
    }

    fn partition(group: &str, topic: &str, partition: i32) -> Labels {
        vec![
            ("group".into(), group.into()),
            ("topic".into(), topic.into()),
            ("partition".into(), partition.to_string()),
        ]
    }

    fn outcome(group: &str, topic: &str, partition: i32, outcome: &str) -> Labels {
        let mut labels = Self::partition(group, topic, partition);
        labels.push(("outcome".into(), outcome.into()));
        labels
    }
}

struct WorkerHandle {
    cancel: CancellationToken,
    abort: AbortHandle,
}

struct Coordinator {
    pool: DbPool,
    config: Arc<ConsumerConfig>,
    handler: Arc<dyn EventHandler>,
    metrics: Metrics,
    shutdown: CancellationToken,
    workers: HashMap<PartitionKey, WorkerHandle>,
    /// Owns the worker tasks: dropping the coordinator aborts them all.
    tasks: JoinSet<()>,
}

impl Coordinator {
    async fn run(mut self) {
        let config = self.config.clone();
        tracing::info!(
            group = %config.group, instance = %config.instance_id, topics = ?config.topics,
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
            let discovery =
                tokio::time::timeout(config.renew_interval() / 2, discover(&mut client, &config));
            match discovery
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
            {
                Ok(found) => partitions = found,
                Err(error) => {
                    tracing::warn!(group = %config.group, error = %error, "listing topics failed");
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
                    tracing::warn!(group = %config.group, error = %error, "lease renewal failed");
                    // Our leases may have lapsed: stop working on them.
                    if last_renewal.is_none_or(|t| t.elapsed() > config.lease_ttl) {
                        let keys: Vec<_> = self.workers.keys().cloned().collect();
                        self.stop_workers(&keys).await;
                    }
                }
            }
            let owned = self.workers.len() as i64;
            self.metrics
                .owned
                .get_or_create(&vec![("group".to_string(), config.group.clone())])
                .set(owned);

            if last_purge.elapsed() > Duration::from_secs(600) {
                last_purge = Instant::now();
                if let Err(error) = purge_inbox(&self.pool, &config).await {
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
        if let Err(error) = leave(&self.pool, &config).await {
            tracing::warn!(error = %error, "releasing leases failed");
        }
        tracing::info!(group = %config.group, instance = %config.instance_id, "consumer stopped");
    }

    /// Heartbeats, renews this instance's leases, gives back what exceeds its
    /// fair share and takes free ones up to it. Returns the leases held.
    async fn rebalance(
        &mut self,
        partitions: &BTreeSet<PartitionKey>,
    ) -> anyhow::Result<BTreeSet<PartitionKey>> {
        let config = self.config.clone();
        let mut conn = self.pool.get().await?;
        let ttl_ms = config.lease_ttl.as_millis() as i64;
        let group = config.group.as_str();
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

        let topics = config.topics.clone();
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
            pool: self.pool.clone(),
            config: self.config.clone(),
            handler: self.handler.clone(),
            metrics: self.metrics.clone(),
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
        let deadline = Instant::now() + self.config.broker_timeout + Duration::from_secs(5);
        while handles.iter().any(|h| !h.abort.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for handle in &handles {
            handle.abort.abort();
        }
        for key in keys {
            self.metrics
                .lag
                .remove(&Metrics::partition(&self.config.group, &key.0, key.1));
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

#[derive(QueryableByName)]
struct OffsetRow {
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
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

async fn discover(
    client: &mut Option<rskafka::client::Client>,
    config: &ConsumerConfig,
) -> anyhow::Result<BTreeSet<PartitionKey>> {
    if client.is_none() {
        *client = Some(build_client(config).await?);
    }
    let topics = tokio::time::timeout(
        config.broker_timeout,
        client.as_ref().expect("built above").list_topics(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("list_topics timed out"))??;
    let mut found = BTreeSet::new();
    for topic in topics {
        if config.topics.contains(&topic.name) {
            for partition in topic.partitions {
                found.insert((topic.name.clone(), partition));
            }
        }
    }
    Ok(found)
}

async fn build_client(config: &ConsumerConfig) -> anyhow::Result<rskafka::client::Client> {
    let builder = ClientBuilder::new(config.brokers.clone())
        .client_id(format!("{}-{}", config.group, config.instance_id))
        .backoff_config(BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
            deadline: Some(config.broker_timeout),
        });
    Ok(tokio::time::timeout(config.broker_timeout, builder.build())
        .await
        .map_err(|_| anyhow::anyhow!("connecting to the broker timed out"))??)
}

/// Records in the inbox that `group` handled `event_id` (read at `topic`,
/// `partition`, `offset`); 0 rows when it was there already (a repeat).
pub(crate) async fn remember_event(
    conn: &mut AsyncPgConnection,
    group: &str,
    event_id: uuid::Uuid,
    topic: &str,
    partition: i32,
    offset: i64,
) -> diesel::QueryResult<usize> {
    remember_events(conn, group, topic, partition, &[event_id], &[offset])
        .await
        .map(|new| new.len())
}

/// Records the events of a fetch in the inbox in one statement; answers
/// the offsets whose event was new (of one event at two offsets, the first).
async fn remember_events(
    conn: &mut AsyncPgConnection,
    group: &str,
    topic: &str,
    partition: i32,
    event_ids: &[uuid::Uuid],
    offsets: &[i64],
) -> diesel::QueryResult<std::collections::HashSet<i64>> {
    #[derive(QueryableByName)]
    struct Remembered {
        #[diesel(sql_type = BigInt)]
        record_offset: i64,
    }
    if event_ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<Remembered> = diesel::sql_query(
        "INSERT INTO inbox (consumer_group, event_id, topic, partition, record_offset) \
         SELECT $1, e.id, $2, $3, e.record_offset \
         FROM unnest($4::uuid[], $5::bigint[]) WITH ORDINALITY AS e(id, record_offset, n) \
         ORDER BY e.n \
         ON CONFLICT DO NOTHING RETURNING record_offset",
    )
    .bind::<Text, _>(group)
    .bind::<Text, _>(topic)
    .bind::<Integer, _>(partition)
    .bind::<Array<SqlUuid>, _>(event_ids)
    .bind::<Array<BigInt>, _>(offsets)
    .prepared()
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.record_offset).collect())
}

async fn purge_inbox(pool: &DbPool, config: &ConsumerConfig) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    let purged = diesel::sql_query(
        "DELETE FROM inbox WHERE consumer_group = $1 \
         AND handled_at < now() - $2 * interval '1 millisecond'",
    )
    .bind::<Text, _>(&config.group)
    .bind::<BigInt, _>(config.inbox_retention.as_millis() as i64)
    .execute(&mut conn)
    .await?;
    tracing::debug!(purged, "inbox purged");
    Ok(())
}

async fn leave(pool: &DbPool, config: &ConsumerConfig) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    diesel::sql_query(
        "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity' \
         WHERE consumer_group = $1 AND owner = $2",
    )
    .bind::<Text, _>(&config.group)
    .bind::<Text, _>(&config.instance_id)
    .execute(&mut conn)
    .await?;
    diesel::sql_query(
        "DELETE FROM consumer_members WHERE consumer_group = $1 AND instance_id = $2",
    )
    .bind::<Text, _>(&config.group)
    .bind::<Text, _>(&config.instance_id)
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Consumes one partition while this instance holds its lease.
struct Worker {
    pool: DbPool,
    config: Arc<ConsumerConfig>,
    handler: Arc<dyn EventHandler>,
    metrics: Metrics,
    topic: String,
    partition: i32,
    cancel: CancellationToken,
}

enum ApplyError {
    /// Another instance moved the offset or owns the lease now.
    Fenced,
    Transient(anyhow::Error),
}

/// How a transaction over a fetch ended (when it did not fail).
enum Applied {
    Done(Outcomes),
    /// A record must be dead-lettered: roll back, apply with savepoints.
    RetryWithSavepoints,
}

impl From<diesel::result::Error> for ApplyError {
    fn from(error: diesel::result::Error) -> Self {
        ApplyError::Transient(error.into())
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for ApplyError {
    fn from(error: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        ApplyError::Transient(error.into())
    }
}

#[derive(Default)]
struct Outcomes {
    handled: u64,
    duplicate: u64,
    dead_lettered: u64,
    ignored: u64,
    /// `occurred_at` of each handled event, for the age histogram.
    occurred: Vec<chrono::DateTime<chrono::Utc>>,
}

impl Worker {
    async fn run(self) {
        let labels = Metrics::partition(&self.config.group, &self.topic, self.partition);
        tracing::info!(topic = %self.topic, partition = self.partition, "partition worker started");
        let mut backoff = Backoff::new(Duration::from_millis(50), self.config.max_backoff);
        let mut next = loop {
            match self.stored_offset().await {
                Ok(offset) => break offset,
                Err(error) => {
                    tracing::warn!(error = %error, "reading the stored offset failed");
                    if !self.pause(backoff.next()).await {
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
        // Whether the last fetch brought records: then more are likely on
        // their way and the next fetch asks for what is there at once (see
        // `ConsumerConfig::busy_fetch_interval`).
        let mut busy = false;
        let mut fetch_started = Instant::now();
        while !self.cancel.is_cancelled() {
            if client.is_none() {
                match self.partition_client().await {
                    Ok(c) => client = Some(c),
                    Err(error) => {
                        self.metrics.fetch_errors.get_or_create(&labels).inc();
                        tracing::warn!(topic = %self.topic, partition = self.partition,
                            error = %error, "connecting the partition client failed");
                        if !self.pause(backoff.next()).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let max_wait = if busy {
                let since = fetch_started.elapsed();
                if since < self.config.busy_fetch_interval
                    && !self.pause(self.config.busy_fetch_interval - since).await
                {
                    return;
                }
                Duration::ZERO
            } else {
                self.config.fetch_max_wait
            };
            fetch_started = Instant::now();
            busy = false;
            let fetch = client.as_ref().expect("set above").fetch_records(
                next,
                1..self.config.fetch_max_bytes,
                max_wait.as_millis() as i32,
            );
            let deadline = self.config.broker_timeout + max_wait;
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = tokio::time::timeout(deadline, fetch) => r,
            };
            let (records, high_watermark) = match result {
                Ok(Ok(fetched)) => fetched,
                Ok(Err(error)) if is_out_of_range(&error) => {
                    // The broker no longer has `next`: its log start and end
                    // say why. Whatever happens, the next fetch comes after
                    // a pause or from a new position, never at once from
                    // the same one.
                    let client_ref = client.as_ref().expect("set above");
                    let range = match self.log_range(client_ref).await {
                        Ok(range) => range,
                        Err(error) => {
                            self.metrics.fetch_errors.get_or_create(&labels).inc();
                            tracing::warn!(topic = %self.topic, partition = self.partition,
                                error = %format!("{error:#}"), "listing the partition's offsets failed");
                            client = None;
                            if !self.pause(backoff.next()).await {
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
                        if !self.pause(backoff.next()).await {
                            return;
                        }
                        continue;
                    };
                    match self.apply(&[], stored, jump.to()).await {
                        Ok(_) => {
                            self.log_jump(next, range, jump);
                            (next, stored, stored_at) = (jump.to(), jump.to(), Instant::now());
                            if let Jump::Deleted { skipped, .. } = jump {
                                self.metrics.skipped.get_or_create(&labels).inc_by(skipped);
                            }
                            self.metrics
                                .lag
                                .get_or_create(&labels)
                                .set((range.1 - next).max(0));
                        }
                        Err(ApplyError::Fenced) => return,
                        Err(ApplyError::Transient(error)) => {
                            tracing::warn!(topic = %self.topic, partition = self.partition,
                                error = %format!("{error:#}"), "moving the offset failed");
                            if !self.pause(backoff.next()).await {
                                return;
                            }
                        }
                    }
                    continue;
                }
                Ok(Err(error)) => {
                    self.metrics.fetch_errors.get_or_create(&labels).inc();
                    tracing::warn!(topic = %self.topic, partition = self.partition, offset = next,
                        error = %error, "fetch failed");
                    client = None;
                    if !self.pause(backoff.next()).await {
                        return;
                    }
                    continue;
                }
                Err(_) => {
                    self.metrics.fetch_errors.get_or_create(&labels).inc();
                    tracing::warn!(topic = %self.topic, partition = self.partition, "fetch timed out");
                    client = None;
                    continue;
                }
            };
            backoff.reset();
            let Some(last) = records.last() else {
                // Nothing new. The high watermark may be below `next` for a
                // moment (a new leader that has not caught up yet); a
                // position past the end of the log is answered with
                // OFFSET_OUT_OF_RANGE instead (above).
                self.metrics
                    .lag
                    .get_or_create(&labels)
                    .set((high_watermark - next).max(0));
                if !self.store_lazily(next, &mut stored, &mut stored_at).await {
                    return;
                }
                continue;
            };
            busy = true;
            let new_next = last.offset + 1;
            let decoded: Vec<Decoded> = records.iter().map(Decoded::of).collect();
            let wanted: Vec<&Decoded> = decoded.iter().filter(|d| self.wanted(d)).collect();
            let ignored = (records.len() - wanted.len()) as u64;
            if wanted.is_empty() {
                self.count(&Outcomes {
                    ignored,
                    ..Outcomes::default()
                });
                next = new_next;
                self.metrics
                    .lag
                    .get_or_create(&labels)
                    .set((high_watermark - next).max(0));
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
                        self.metrics
                            .lag
                            .get_or_create(&labels)
                            .set((high_watermark - next).max(0));
                        backoff.reset();
                        break;
                    }
                    Err(ApplyError::Fenced) => {
                        tracing::warn!(topic = %self.topic, partition = self.partition,
                            "fenced: another instance owns this partition now");
                        return;
                    }
                    Err(ApplyError::Transient(error)) => {
                        self.metrics.retries.get_or_create(&labels).inc();
                        tracing::warn!(topic = %self.topic, partition = self.partition,
                            offset = next, error = %format!("{error:#}"),
                            "handling failed, retrying");
                        if !self.pause(backoff.next()).await {
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
        let (group, topic, partition) = (&self.config.group, &self.topic, self.partition);
        if !outcomes.occurred.is_empty() {
            let now = chrono::Utc::now();
            let age = self.metrics.age.get_or_create(&vec![
                ("group".into(), group.clone()),
                ("topic".into(), topic.clone()),
            ]);
            for occurred in &outcomes.occurred {
                let seconds = (now - *occurred).num_microseconds().unwrap_or(0) as f64 / 1e6;
                age.observe(seconds.max(0.0));
            }
        }
        for (name, n) in [
            ("handled", outcomes.handled),
            ("duplicate", outcomes.duplicate),
            ("dead_lettered", outcomes.dead_lettered),
            ("ignored", outcomes.ignored),
        ] {
            if n > 0 {
                self.metrics
                    .records
                    .get_or_create(&Metrics::outcome(group, topic, partition, name))
                    .inc_by(n);
            }
        }
    }

    async fn partition_client(&self) -> anyhow::Result<PartitionClient> {
        let client = build_client(&self.config).await?;
        Ok(tokio::time::timeout(
            self.config.broker_timeout,
            client.partition_client(
                self.topic.clone(),
                self.partition,
                UnknownTopicHandling::Error,
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("partition client timed out"))??)
    }

    /// The partition's log start and end (ListOffsets earliest and latest):
    /// the offsets a fetch may start at.
    async fn log_range(&self, client: &PartitionClient) -> anyhow::Result<(i64, i64)> {
        let deadline = self.config.broker_timeout;
        let offset = |at| async move {
            tokio::time::timeout(deadline, client.get_offset(at))
                .await
                .map_err(|_| anyhow::anyhow!("ListOffsets ({at:?}) timed out"))?
                .map_err(anyhow::Error::from)
        };
        tokio::try_join!(offset(OffsetAt::Earliest), offset(OffsetAt::Latest))
    }

    /// Logs a jump of the position that was just stored.
    fn log_jump(&self, from: i64, (log_start, log_end): (i64, i64), jump: Jump) {
        match jump {
            Jump::PastTheEnd { to } => tracing::error!(
                topic = %self.topic, partition = self.partition, stored = from, log_start, log_end,
                "the partition ends before the stored offset (topic recreated or broker data \
                 lost); starting it over from its log start {to}"
            ),
            Jump::Deleted { to, skipped } => tracing::error!(
                topic = %self.topic, partition = self.partition, stored = from, log_start, log_end,
                skipped,
                "records were deleted before they were handled (retention or DeleteRecords); \
                 {skipped} offsets skipped, going on from the log start {to}: their events are lost"
            ),
        }
    }

    async fn stored_offset(&self) -> anyhow::Result<i64> {
        let mut conn = self.pool.get().await?;
        let rows: Vec<OffsetRow> = diesel::sql_query(
            "SELECT next_offset FROM consumer_offsets \
             WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
        )
        .bind::<Text, _>(&self.config.group)
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
            Ok((_, Ok(event))) => self.handler.wants(event),
            _ => true,
        }
    }

    /// Handles the wanted records of a fetch in one transaction and moves
    /// the offset from `expected` to `new_next`.
    ///
    /// Optimistic first: records are applied without a savepoint each (two
    /// round trips fewer per record). Only when a record must be
    /// dead-lettered (a permanent failure or a panic, whose partial effects
    /// must go) is that transaction rolled back and the fetch applied again
    /// with a savepoint per record.
    async fn apply(
        &self,
        records: &[&Decoded<'_>],
        expected: i64,
        new_next: i64,
    ) -> Result<Outcomes, ApplyError> {
        match self.apply_once(records, expected, new_next, false).await? {
            Applied::Done(outcomes) => Ok(outcomes),
            Applied::RetryWithSavepoints => {
                match self.apply_once(records, expected, new_next, true).await? {
                    Applied::Done(outcomes) => Ok(outcomes),
                    Applied::RetryWithSavepoints => {
                        unreachable!("with savepoints every failure is dead-lettered")
                    }
                }
            }
        }
    }

    async fn apply_once(
        &self,
        records: &[&Decoded<'_>],
        expected: i64,
        new_next: i64,
        savepoints: bool,
    ) -> Result<Applied, ApplyError> {
        let mut conn = self.pool.get().await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        AnsiTransactionManager::begin_transaction(conn).await?;
        let result = self
            .apply_in_transaction(conn, records, expected, new_next, savepoints)
            .await;
        match result {
            Ok(Applied::Done(outcomes)) => {
                AnsiTransactionManager::commit_transaction(conn).await?;
                Ok(Applied::Done(outcomes))
            }
            Ok(Applied::RetryWithSavepoints) | Err(_) => {
                if let Err(rollback) = AnsiTransactionManager::rollback_transaction(conn).await {
                    tracing::warn!(error = %rollback, "rollback failed");
                }
                result
            }
        }
    }

    async fn apply_in_transaction(
        &self,
        conn: &mut AsyncPgConnection,
        records: &[&Decoded<'_>],
        expected: i64,
        new_next: i64,
        savepoints: bool,
    ) -> Result<Applied, ApplyError> {
        let group = self.config.group.as_str();
        // Serialized: one fetch of the group at a time applies its effects
        // (the advisory lock, taken in the same statement): two fetches
        // touching the same rows in different orders (one customer's orders
        // on two partitions) would otherwise deadlock, and PostgreSQL only
        // notices after `deadlock_timeout` (1 s), stalling both partitions.
        let concurrency = self.handler.concurrency();
        let lock = match concurrency {
            Concurrency::Serialized => {
                ", (SELECT pg_advisory_xact_lock(hashtext('consumer:' || $1))) AS serialized"
            }
            Concurrency::ByKey => "",
        };
        // The offset moves first, in the statement that checks it: the row
        // lock it takes keeps another instance (or a fenced worker of this
        // one) out until commit, and no rows means the partition is no
        // longer ours to apply. Effects that follow and fail roll it back.
        let claimed = diesel::sql_query(format!(
            "UPDATE consumer_offsets o SET next_offset = $5, updated_at = now() \
             FROM partition_leases l{lock} \
             WHERE o.consumer_group = $1 AND o.topic = $2 AND o.partition = $3 \
               AND o.next_offset = $6 AND l.owner = $4 \
               AND (l.consumer_group, l.topic, l.partition) = (o.consumer_group, o.topic, o.partition)"
        ))
        .bind::<Text, _>(group)
        .bind::<Text, _>(&self.topic)
        .bind::<Integer, _>(self.partition)
        .bind::<Text, _>(&self.config.instance_id)
        .bind::<BigInt, _>(new_next)
        .bind::<BigInt, _>(expected)
        .prepared()
        .execute(conn)
        .await?;
        if claimed != 1 {
            return Err(ApplyError::Fenced);
        }

        let mut ordered = records.to_vec();
        if concurrency == Concurrency::ByKey {
            ordered.sort_by(|a, b| a.record.record.key.cmp(&b.record.record.key));
        }
        // Without savepoints the inbox takes every event of the fetch in one
        // statement; with them each record's entry lives in its savepoint
        // (a dead-lettered record must not stay in the inbox).
        let first_offsets = if savepoints {
            None
        } else {
            let (ids, offsets): (Vec<uuid::Uuid>, Vec<i64>) = ordered
                .iter()
                .filter_map(|d| match &d.envelope {
                    Ok((envelope, _)) => Some((envelope.event_id, d.record.offset)),
                    Err(_) => None,
                })
                .unzip();
            Some(remember_events(conn, group, &self.topic, self.partition, &ids, &offsets).await?)
        };
        let mut outcomes = Outcomes::default();
        for decoded in ordered {
            let record = decoded.record;
            let (envelope, event) = match &decoded.envelope {
                Ok(parts) => parts,
                Err(reason) => {
                    self.dead_letter(conn, record, None, reason).await?;
                    outcomes.dead_lettered += 1;
                    continue;
                }
            };
            let span = tracing::info_span!("event",
                event_id = %envelope.event_id, event_type = %envelope.event_type,
                aggregate_id = %envelope.aggregate_id, trace_id = %envelope.trace_id);
            let applied = self
                .apply_record(
                    conn,
                    record,
                    envelope,
                    event.clone(),
                    &mut outcomes,
                    first_offsets
                        .as_ref()
                        .map(|first| first.contains(&record.offset)),
                )
                .instrument(span)
                .await?;
            if !applied {
                return Ok(Applied::RetryWithSavepoints);
            }
        }

        Ok(Applied::Done(outcomes))
    }

    /// One record: inbox entry, then the handler. `first_time` is what the
    /// fetch's inbox insert found (without savepoints); `None`: the record
    /// runs in its own savepoint with its own inbox entry. Without
    /// savepoints, a record that must be dead-lettered answers `false`: the
    /// caller rolls back and applies the fetch with savepoints.
    async fn apply_record(
        &self,
        conn: &mut AsyncPgConnection,
        record: &RecordAndOffset,
        envelope: &Envelope,
        event: Result<Event, String>,
        outcomes: &mut Outcomes,
        first_time: Option<bool>,
    ) -> Result<bool, ApplyError> {
        let savepoints = first_time.is_none();
        let first_time = match first_time {
            Some(first) => Ok(usize::from(first)),
            None => {
                AnsiTransactionManager::begin_transaction(conn).await?;
                remember_event(
                    conn,
                    &self.config.group,
                    envelope.event_id,
                    &self.topic,
                    self.partition,
                    record.offset,
                )
                .await
            }
        };
        match first_time {
            Ok(0) => {
                // Handled before: the handler is not run again, but it may
                // announce again what it answered the first time (a saga
                // re-drive repeats a request whose answer was lost).
                let repeated = match event {
                    Ok(event) => self.handler.repeated(conn, envelope, event).await,
                    Err(_) => Ok(()),
                };
                match repeated {
                    Ok(()) => {}
                    Err(HandleError::Permanent(_)) if !savepoints => return Ok(false),
                    Err(HandleError::Permanent(reason)) => {
                        // Not a reason to dead-letter a record that was
                        // handled: its repeat just answers nothing.
                        AnsiTransactionManager::rollback_transaction(conn).await?;
                        tracing::warn!(%reason, "repeated event not answered again");
                        outcomes.duplicate += 1;
                        return Ok(true);
                    }
                    Err(HandleError::Transient(error)) => {
                        if savepoints {
                            AnsiTransactionManager::rollback_transaction(conn).await?;
                        }
                        return Err(ApplyError::Transient(error));
                    }
                }
                if savepoints {
                    AnsiTransactionManager::commit_transaction(conn).await?;
                }
                tracing::debug!("duplicate event skipped");
                outcomes.duplicate += 1;
                return Ok(true);
            }
            Ok(_) => {}
            Err(error) => {
                if savepoints {
                    AnsiTransactionManager::rollback_transaction(conn).await?;
                }
                return Err(error.into());
            }
        }
        let outcome = match event {
            // A panicking handler would fail the same record forever: its
            // record is dead-lettered like any permanent failure.
            Ok(event) => AssertUnwindSafe(self.handler.handle(conn, envelope, event))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(HandleError::Permanent(format!(
                        "handler panicked: {message}"
                    )))
                }),
            Err(reason) => Err(HandleError::Permanent(reason)),
        };
        let outcome = outcome.map_err(|error| match error {
            HandleError::Transient(error) => match permanent_cause(&error) {
                Some(reason) => HandleError::Permanent(reason),
                None => HandleError::Transient(error),
            },
            permanent => permanent,
        });
        match outcome {
            Ok(()) => {
                if savepoints {
                    AnsiTransactionManager::commit_transaction(conn).await?;
                }
                outcomes.handled += 1;
                outcomes.occurred.push(envelope.occurred_at);
            }
            Err(HandleError::Permanent(_)) if !savepoints => return Ok(false),
            Err(HandleError::Permanent(reason)) => {
                AnsiTransactionManager::rollback_transaction(conn).await?;
                self.dead_letter(conn, record, Some(envelope), &reason)
                    .await?;
                outcomes.dead_lettered += 1;
            }
            Err(HandleError::Transient(error)) => {
                if savepoints {
                    AnsiTransactionManager::rollback_transaction(conn).await?;
                }
                return Err(ApplyError::Transient(error));
            }
        }
        Ok(true)
    }

    /// Writes `record` to `dead_letters`. Its key, value and headers are
    /// kept byte for byte (`bytea`); the readable columns (event type,
    /// headers as JSON, reason) are text, which cannot hold NUL: there a NUL
    /// is written as the escape `\u0000`.
    async fn dead_letter(
        &self,
        conn: &mut AsyncPgConnection,
        record: &RecordAndOffset,
        envelope: Option<&Envelope>,
        reason: &str,
    ) -> Result<(), ApplyError> {
        let headers = &record.record.headers;
        let header = |name: &str| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let event_id = envelope
            .map(|e| e.event_id)
            .or_else(|| header(headers::EVENT_ID).and_then(|v| v.parse().ok()));
        let event_type = envelope
            .map(|e| e.event_type.clone())
            .or_else(|| header(headers::EVENT_TYPE))
            .map(|t| storable(&t).into_owned());
        let headers_json: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| {
                let value = storable(&String::from_utf8_lossy(v)).into_owned();
                (storable(k).into_owned(), value.into())
            })
            .collect();
        let (header_names, header_values): (Vec<&[u8]>, Vec<&[u8]>) = headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_slice()))
            .unzip();
        diesel::sql_query(
            "INSERT INTO dead_letters (consumer_group, topic, partition, record_offset, \
                 record_key, record_value, headers, header_names, header_values, event_id, \
                 event_type, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind::<Text, _>(&self.config.group)
        .bind::<Text, _>(&self.topic)
        .bind::<Integer, _>(self.partition)
        .bind::<BigInt, _>(record.offset)
        .bind::<Nullable<Bytea>, _>(record.record.key.as_deref())
        .bind::<Nullable<Bytea>, _>(record.record.value.as_deref())
        .bind::<Jsonb, _>(serde_json::Value::Object(headers_json))
        .bind::<Array<Bytea>, _>(header_names)
        .bind::<Array<Bytea>, _>(header_values)
        .bind::<Nullable<SqlUuid>, _>(event_id)
        .bind::<Nullable<Text>, _>(event_type)
        .bind::<Text, _>(storable(reason))
        .execute(conn)
        .await?;
        tracing::warn!(topic = %self.topic, partition = self.partition, offset = record.offset,
            reason, "record dead-lettered");
        Ok(())
    }
}

/// `text` as PostgreSQL `text` and `jsonb` can hold it: a NUL character
/// (which both refuse) written as the escape `\u0000`.
fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\\u0000"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Where a partition goes when the broker answered a fetch at the stored
/// offset with OFFSET_OUT_OF_RANGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Jump {
    /// The log ends before the offset: the topic was recreated or the broker
    /// lost its data. Everything in the log may be new to us: start over
    /// from its start (the inbox skips events handled before).
    PastTheEnd { to: i64 },
    /// The log starts after the offset: `skipped` offsets were deleted
    /// (retention, DeleteRecords) before they were handled. Nothing can
    /// bring them back: go on from the log start.
    Deleted { to: i64, skipped: u64 },
}

impl Jump {
    /// For a fetch at `next` out of range of the log `[start, end]` (ListOffsets
    /// earliest and latest); `None` when `next` is in range after all.
    fn decide(next: i64, (start, end): (i64, i64)) -> Option<Jump> {
        if next < start {
            Some(Jump::Deleted {
                to: start,
                skipped: (start - next) as u64,
            })
        } else if next > end {
            Some(Jump::PastTheEnd { to: start })
        } else {
            None
        }
    }

    fn to(self) -> i64 {
        match self {
            Jump::PastTheEnd { to } | Jump::Deleted { to, .. } => to,
        }
    }
}

fn is_out_of_range(error: &rskafka::client::error::Error) -> bool {
    matches!(
        error,
        rskafka::client::error::Error::ServerError {
            protocol_error: rskafka::client::error::ProtocolError::OffsetOutOfRange,
            ..
        }
    )
}

/// A fetched record with its envelope and event, decoded once (to decide
/// whether it is wanted, then to apply it).
struct Decoded<'a> {
    record: &'a RecordAndOffset,
    /// The envelope and its event (or why the event is unknown), or why the
    /// value is no envelope.
    envelope: Result<(Envelope, Result<Event, String>), String>,
}

impl<'a> Decoded<'a> {
    fn of(record: &'a RecordAndOffset) -> Self {
        let envelope = decode_value(record.record.value.as_deref());
        Self { record, envelope }
    }
}

/// The envelope in a record's value, or why there is none.
fn envelope_of(value: Option<&[u8]>) -> Result<Envelope, String> {
    let value = value.ok_or_else(|| "record has no value".to_string())?;
    serde_json::from_slice(value).map_err(|e| format!("invalid envelope: {e}"))
}

/// A record's value as the runtime (and the dead-letter replay) sees it: its
/// envelope and event, or why it cannot be handled (the dead letter's
/// reason). An envelope holding a NUL character (`\u0000` in its JSON) is
/// refused: no PostgreSQL text or jsonb can store it, so a handler writing
/// any of it would fail on every attempt. The outbox (jsonb) cannot even
/// hold one, so such a record was not written by a service.
pub(crate) fn decode_value(
    value: Option<&[u8]>,
) -> Result<(Envelope, Result<Event, String>), String> {
    envelope_of(value).map(|envelope| {
        let event = match field_with_nul(&envelope) {
            Some(field) => Err(format!(
                "the envelope's {field} holds a NUL character (U+0000), which PostgreSQL \
                 cannot store"
            )),
            None => envelope
                .event()
                .map_err(|e| format!("unknown event type or invalid payload: {e}")),
        };
        (envelope, event)
    })
}

/// The first field of `envelope` that holds a NUL character, if any.
fn field_with_nul(envelope: &Envelope) -> Option<&'static str> {
    fn json_has_nul(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(json_has_nul),
            serde_json::Value::Object(fields) => fields
                .iter()
                .any(|(k, v)| k.contains('\0') || json_has_nul(v)),
            _ => false,
        }
    }
    [
        ("event_type", envelope.event_type.contains('\0')),
        ("aggregate_type", envelope.aggregate_type.contains('\0')),
        ("aggregate_id", envelope.aggregate_id.contains('\0')),
        ("trace_id", envelope.trace_id.contains('\0')),
        ("payload", json_has_nul(&envelope.payload)),
    ]
    .into_iter()
    .find_map(|(field, nul)| nul.then_some(field))
}

/// Exponential backoff with jitter, from `initial` up to `max`.
struct Backoff {
    initial: Duration,
    current: Duration,
    max: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            current: initial,
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = rand::random::<f64>() * 0.25;
        base.mul_f64(1.0 + jitter).min(self.max)
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Durations in config: `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"7d"` or a
/// number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let millis = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("invalid duration unit {other:?} in {text:?}")),
    };
    Ok(Duration::from_millis(number.saturating_mul(millis)))
}

/// Serde for `Duration` settings: written `"<n>ms"`, read as [`parse_duration`]
/// text or a number of milliseconds.
pub mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", duration.as_millis()))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
            Raw::Text(text) => super::parse_duration(&text).map_err(D::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rskafka::record::Record;
    use uuid::Uuid;

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

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("40"), Ok(Duration::from_millis(40)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }

    #[test]
    fn config_round_trips_through_serde() {
        let config = ConsumerConfig::default();
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["fetch_max_wait"], "500ms");
        assert_eq!(json["busy_fetch_interval"], "5ms");
        let back: ConsumerConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, config);
        let partial: ConsumerConfig =
            serde_json::from_value(serde_json::json!({"lease_ttl": 2000})).unwrap();
        assert_eq!(partial.lease_ttl, Duration::from_secs(2));
    }

    #[test]
    fn the_removed_quiet_settings_are_rejected() {
        // `deny_unknown_fields`: a config file still setting them fails loudly.
        for key in ["quiet_after", "quiet_fetch_max_wait"] {
            let old = serde_json::json!({ key: "2s" });
            assert!(
                serde_json::from_value::<ConsumerConfig>(old).is_err(),
                "{key}"
            );
        }
    }

    #[test]
    fn an_offset_out_of_range_jumps_to_the_log_start() {
        // Past the end (recreated topic, lost data): start over, skip nothing.
        assert_eq!(
            Jump::decide(1_000, (0, 3)),
            Some(Jump::PastTheEnd { to: 0 })
        );
        assert_eq!(
            Jump::decide(1_000, (40, 43)),
            Some(Jump::PastTheEnd { to: 40 })
        );
        // Before the log start (retention, DeleteRecords): the records in
        // between are lost and counted.
        assert_eq!(
            Jump::decide(2, (4, 7)),
            Some(Jump::Deleted { to: 4, skipped: 2 })
        );
        assert_eq!(
            Jump::decide(0, (5, 5)),
            Some(Jump::Deleted { to: 5, skipped: 5 })
        );
        // Within the log (its ends moved between fetch and listing): no jump.
        assert_eq!(Jump::decide(4, (4, 7)), None);
        assert_eq!(Jump::decide(7, (4, 7)), None);
        assert_eq!(Jump::decide(0, (0, 0)), None);
    }

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = backoff.next();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(125));
        for _ in 0..10 {
            assert!(backoff.next() <= Duration::from_secs(1));
        }
        assert_eq!(backoff.next(), Duration::from_secs(1));
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(125));
    }

    fn record(value: Option<&[u8]>) -> RecordAndOffset {
        RecordAndOffset {
            record: Record {
                key: None,
                value: value.map(<[u8]>::to_vec),
                headers: BTreeMap::new(),
                timestamp: chrono::Utc::now(),
            },
            offset: 7,
        }
    }

    #[test]
    fn decode_rejects_what_is_not_an_envelope() {
        let decode = |value| Decoded::of(&record(value)).envelope;
        assert!(decode(None).unwrap_err().contains("no value"));
        assert!(
            decode(Some(b"{oops"))
                .unwrap_err()
                .contains("invalid envelope")
        );
        let envelope = Envelope {
            event_id: Uuid::new_v4(),
            event_type: "Whatever".into(),
            aggregate_type: "orders".into(),
            aggregate_id: "x".into(),
            occurred_at: chrono::Utc::now(),
            schema_version: 1,
            trace_id: "t".into(),
            payload: serde_json::json!({}),
        };
        let bytes = serde_json::to_vec(&envelope).unwrap();
        let (decoded, event) = decode(Some(&bytes)).unwrap();
        assert_eq!(decoded, envelope);
        assert!(event.is_err(), "unknown type is left to the caller");
    }

    #[test]
    fn an_envelope_holding_a_nul_is_refused_and_dead_letter_text_escapes_it() {
        let envelope = Envelope {
            event_id: Uuid::new_v4(),
            event_type: "PaymentFailed".into(),
            aggregate_type: "payments".into(),
            aggregate_id: "x".into(),
            occurred_at: chrono::Utc::now(),
            schema_version: 1,
            trace_id: "t".into(),
            payload: serde_json::json!({"reasons": [{"code": "a\u{0}b"}]}),
        };
        let bytes = serde_json::to_vec(&envelope).unwrap();
        let (_, event) = decode_value(Some(&bytes)).unwrap();
        let reason = event.unwrap_err();
        assert!(reason.contains("payload holds a NUL"), "{reason}");
        assert_eq!(storable("a\0b\0"), "a\\u0000b\\u0000");
        assert!(matches!(storable("plain"), Cow::Borrowed("plain")));
    }
}

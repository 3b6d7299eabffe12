//! The consumer's Prometheus metrics: lag, records by outcome, retries,
//! fetches, fetch errors, offsets skipped, partitions owned and event age.

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::apply::Outcomes;

pub(super) type Labels = Vec<(String, String)>;

#[derive(Clone)]
pub(super) struct Metrics {
    pub lag: Family<Labels, Gauge>,
    pub records: Family<Labels, Counter>,
    pub retries: Family<Labels, Counter>,
    pub fetches: Family<Labels, Counter>,
    pub fetch_errors: Family<Labels, Counter>,
    pub skipped: Family<Labels, Counter>,
    pub owned: Family<Labels, Gauge>,
    age: Family<Labels, Histogram>,
}

/// The series of one partition's fetch loop.
pub(super) struct PartitionMetrics {
    pub lag: Gauge,
    pub retries: Counter,
    pub fetches: Counter,
    pub fetch_errors: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            lag: Family::default(),
            records: Family::default(),
            retries: Family::default(),
            fetches: Family::default(),
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
            "consumer_fetches",
            "Fetch requests sent to the broker",
            metrics.fetches.clone(),
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

    /// One partition's series of every fetch, looked up once by its worker
    /// (`skipped` is not: it appears only once offsets are lost).
    pub fn of_partition(&self, labels: &Labels) -> PartitionMetrics {
        PartitionMetrics {
            lag: self.lag.get_or_create(labels).clone(),
            retries: self.retries.get_or_create(labels).clone(),
            fetches: self.fetches.get_or_create(labels).clone(),
            fetch_errors: self.fetch_errors.get_or_create(labels).clone(),
        }
    }

    pub fn partition(group: &str, topic: &str, partition: i32) -> Labels {
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

    /// Counts what became of a fetch's records, and the age of the events
    /// it handled.
    pub fn count(&self, group: &str, topic: &str, partition: i32, outcomes: &Outcomes) {
        if !outcomes.occurred.is_empty() {
            let now = chrono::Utc::now();
            let age = self.age.get_or_create(&vec![
                ("group".into(), group.to_owned()),
                ("topic".into(), topic.to_owned()),
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
                self.records
                    .get_or_create(&Self::outcome(group, topic, partition, name))
                    .inc_by(n);
            }
        }
    }
}

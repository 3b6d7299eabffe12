//! What operators see: per source state, slot lag, throughput and
//! commit-to-ack latency, as Prometheus metrics and as a JSON snapshot for
//! the dashboard. State changes are logged here, once each.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram as Hdr;
use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::catalog::SlotReading;
use crate::replication::Lsn;

/// Percentiles are computed over the last one or two windows of this length.
const LATENCY_WINDOW: Duration = Duration::from_secs(10);
/// A viewer counts as watching for this long after a request.
const WATCH_TIMEOUT_MS: i64 = 5_000;
/// Reconnects are also counted over this sliding window (flapping).
const RECONNECT_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    Connecting,
    Streaming,
    Reconnecting,
    /// Needs an operator (lost slot, missing publication, bad config); retried slowly.
    Error,
    Stopped,
}

impl SourceState {
    const ALL: [SourceState; 5] = [
        SourceState::Connecting,
        SourceState::Streaming,
        SourceState::Reconnecting,
        SourceState::Error,
        SourceState::Stopped,
    ];

    fn as_str(self) -> &'static str {
        match self {
            SourceState::Connecting => "connecting",
            SourceState::Streaming => "streaming",
            SourceState::Reconnecting => "reconnecting",
            SourceState::Error => "error",
            SourceState::Stopped => "stopped",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    source: String,
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WalStatusLabel {
    source: String,
    wal_status: &'static str,
}

/// `pg_replication_slots.wal_status` values, and `missing` (no slot).
const WAL_STATUSES: [&str; 5] = ["reserved", "extended", "unreserved", "lost", "missing"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    source: String,
    state: &'static str,
}

/// The registry and every source's metrics.
pub struct Metrics {
    registry: Registry,
    families: Families,
    sources: Mutex<BTreeMap<String, Arc<SourceMetrics>>>,
    last_watched_ms: AtomicI64,
}

#[derive(Clone)]
struct Families {
    state: Family<StateLabel, Gauge>,
    lag_bytes: Family<SourceLabel, Gauge>,
    wal_status: Family<WalStatusLabel, Gauge>,
    safe_wal_size: Family<SourceLabel, Gauge>,
    slot_missing: Family<SourceLabel, Gauge>,
    lag_seconds: Family<SourceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    confirmed_lsn: Family<SourceLabel, Gauge>,
    events: Family<SourceLabel, Counter>,
    transactions: Family<SourceLabel, Counter>,
    dead_letters: Family<SourceLabel, Counter>,
    reconnects: Family<SourceLabel, Counter>,
    reconnects_per_minute: Family<SourceLabel, Gauge>,
    errors: Family<SourceLabel, Counter>,
    in_flight_bytes: Family<SourceLabel, Gauge>,
    latency: Family<SourceLabel, Histogram>,
    produce: Family<TopicLabel, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("relay");
        let families = Families {
            state: Family::default(),
            lag_bytes: Family::default(),
            wal_status: Family::default(),
            safe_wal_size: Family::default(),
            slot_missing: Family::default(),
            lag_seconds: Family::default(),
            confirmed_lsn: Family::default(),
            events: Family::default(),
            transactions: Family::default(),
            dead_letters: Family::default(),
            reconnects: Family::default(),
            reconnects_per_minute: Family::default(),
            errors: Family::default(),
            in_flight_bytes: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
            }),
            produce: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            }),
        };
        let f = families.clone();
        registry.register("source_state", "1 for the source's current state", f.state);
        registry.register(
            "slot_lag_bytes",
            "WAL bytes between the server's position and the slot's confirmed LSN \
             (pg_current_wal_lsn() - confirmed_flush_lsn), probed whatever the source's state",
            f.lag_bytes,
        );
        registry.register(
            "slot_wal_status",
            "1 for the slot's wal_status: reserved, extended (beyond max_wal_size, still kept), \
             unreserved (will be lost at the next checkpoint unless it catches up), lost, or \
             missing (no slot)",
            f.wal_status,
        );
        registry.register(
            "slot_safe_wal_size_bytes",
            "WAL that can still be written before the slot is in danger of being lost \
             (pg_replication_slots.safe_wal_size); absent with an unlimited \
             max_slot_wal_keep_size",
            f.safe_wal_size,
        );
        registry.register(
            "slot_missing",
            "1 when the slot of a source that had one is gone (dropped) or lost: the source \
             publishes nothing until an operator runs outbox-relay create-slots --recreate <source>",
            f.slot_missing,
        );
        registry.register(
            "lag_seconds",
            "Age of the oldest transaction received but not yet confirmed, else 0",
            f.lag_seconds,
        );
        registry.register(
            "confirmed_lsn",
            "LSN confirmed to PostgreSQL",
            f.confirmed_lsn,
        );
        registry.register(
            "events_published",
            "Outbox events acknowledged by the broker",
            f.events,
        );
        registry.register(
            "transactions_confirmed",
            "Transactions confirmed to PostgreSQL",
            f.transactions,
        );
        registry.register(
            "dead_letters",
            "Rows that could not be published and went to a dead-letter topic",
            f.dead_letters,
        );
        registry.register(
            "reconnects",
            "Replication sessions restarted after a failure",
            f.reconnects,
        );
        registry.register(
            "reconnects_per_minute",
            "Replication sessions restarted in the last 60 s; above 2 or so the source is \
             flapping (failing again soon after it started streaming)",
            f.reconnects_per_minute,
        );
        registry.register(
            "errors",
            "Errors that ended a replication session",
            f.errors,
        );
        registry.register(
            "in_flight_bytes",
            "Bytes of records sent to the broker and not yet acknowledged (at most \
             kafka.max_in_flight_bytes, or one larger record alone)",
            f.in_flight_bytes,
        );
        registry.register(
            "commit_to_ack_seconds",
            "Time from the PostgreSQL commit to the broker's acknowledgement",
            f.latency,
        );
        registry.register(
            "produce_seconds",
            "Time of one produce request, from sending it to the broker's answer, per topic",
            f.produce,
        );
        Self {
            registry,
            families,
            sources: Mutex::new(BTreeMap::new()),
            last_watched_ms: AtomicI64::new(i64::MIN / 2),
        }
    }

    /// The metrics handle of `source`, created on first use.
    pub fn source(&self, source: &str) -> Arc<SourceMetrics> {
        let mut sources = lock(&self.sources);
        sources
            .entry(source.to_owned())
            .or_insert_with(|| Arc::new(SourceMetrics::new(source, &self.families)))
            .clone()
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        self.mark_watched();
        // The sliding window moves with time, not only with reconnects.
        for source in lock(&self.sources).values() {
            source.reconnects_last_minute();
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn snapshot(&self) -> Vec<SourceSnapshot> {
        self.mark_watched();
        lock(&self.sources).values().map(|s| s.snapshot()).collect()
    }

    /// Someone looked at metrics or the dashboard recently, so exact slot lag
    /// (which costs a query) is worth measuring.
    pub fn is_watched(&self) -> bool {
        now_ms() - self.last_watched_ms.load(Ordering::Relaxed) < WATCH_TIMEOUT_MS
    }

    fn mark_watched(&self) {
        self.last_watched_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// JSON view of one source, served at `/api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceSnapshot {
    pub name: String,
    pub state: SourceState,
    pub state_since: chrono::DateTime<chrono::Utc>,
    pub last_error: Option<String>,
    pub confirmed_lsn: String,
    /// From the lag probe (`pg_replication_slots`), whatever the state.
    pub slot_lag_bytes: u64,
    /// The slot's `wal_status`, `missing` when there is no slot, `None`
    /// until the first probe (and while the slot is being created).
    pub wal_status: Option<String>,
    /// `safe_wal_size`: `None` with an unlimited `max_slot_wal_keep_size`.
    pub safe_wal_size_bytes: Option<i64>,
    /// When the lag probe last read the slot, and why its last attempt
    /// failed (if it did).
    pub slot_probed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub slot_probe_error: Option<String>,
    /// The slot of a source that had one is gone or lost: nothing is
    /// published until an operator re-creates it.
    pub slot_missing: bool,
    pub lag_seconds: f64,
    pub events_published: u64,
    pub transactions_confirmed: u64,
    pub dead_letters: u64,
    pub reconnects: u64,
    /// Reconnects in the last 60 s: a source that fails again soon after it
    /// starts streaming shows `streaming` most of the time, but not here.
    pub reconnects_per_minute: u64,
    /// Bytes of records sent and not yet acknowledged, now and at most
    /// since the relay started.
    pub in_flight_bytes: u64,
    pub in_flight_bytes_peak: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
}

struct Status {
    state: SourceState,
    state_since: chrono::DateTime<chrono::Utc>,
    last_error: Option<String>,
    confirmed: Lsn,
    lag_bytes: u64,
    lag_seconds: f64,
    /// The lag probe's last reading (see [`SourceSnapshot`]).
    wal_status: Option<String>,
    safe_wal_size: Option<i64>,
    slot_probed_at: Option<chrono::DateTime<chrono::Utc>>,
    slot_probe_error: Option<String>,
    slot_missing: bool,
    latency: LatencyWindow,
    /// When the reconnects of the last [`RECONNECT_WINDOW`] happened.
    recent_reconnects: VecDeque<Instant>,
}

/// One source's metrics; cheap to update from the replication loop.
pub struct SourceMetrics {
    name: String,
    status: Mutex<Status>,
    state: Vec<(SourceState, Gauge)>,
    lag_bytes: Gauge,
    wal_status: Vec<(&'static str, Gauge)>,
    /// Per source; the label is removed while the size is unlimited.
    safe_wal_size: Family<SourceLabel, Gauge>,
    slot_missing: Gauge,
    lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    confirmed_lsn: Gauge,
    events: Counter,
    transactions: Counter,
    dead_letters: Counter,
    reconnects: Counter,
    reconnects_per_minute: Gauge,
    errors: Counter,
    in_flight_bytes: Gauge,
    in_flight_bytes_peak: AtomicU64,
    latency: Histogram,
    /// Per topic, created when the publisher first produces to it.
    produce: Family<TopicLabel, Histogram>,
}

impl SourceMetrics {
    fn new(name: &str, f: &Families) -> Self {
        let label = SourceLabel {
            source: name.to_owned(),
        };
        let state = SourceState::ALL
            .iter()
            .map(|s| {
                let gauge = f
                    .state
                    .get_or_create(&StateLabel {
                        source: name.to_owned(),
                        state: s.as_str(),
                    })
                    .clone();
                (*s, gauge)
            })
            .collect();
        let metrics = Self {
            name: name.to_owned(),
            status: Mutex::new(Status {
                state: SourceState::Connecting,
                state_since: chrono::Utc::now(),
                last_error: None,
                confirmed: Lsn(0),
                lag_bytes: 0,
                lag_seconds: 0.0,
                wal_status: None,
                safe_wal_size: None,
                slot_probed_at: None,
                slot_probe_error: None,
                slot_missing: false,
                latency: LatencyWindow::new(),
                recent_reconnects: VecDeque::new(),
            }),
            state,
            lag_bytes: f.lag_bytes.get_or_create(&label).clone(),
            wal_status: WAL_STATUSES
                .iter()
                .map(|status| {
                    let gauge = f
                        .wal_status
                        .get_or_create(&WalStatusLabel {
                            source: name.to_owned(),
                            wal_status: status,
                        })
                        .clone();
                    (*status, gauge)
                })
                .collect(),
            safe_wal_size: f.safe_wal_size.clone(),
            slot_missing: f.slot_missing.get_or_create(&label).clone(),
            lag_seconds: f.lag_seconds.get_or_create(&label).clone(),
            confirmed_lsn: f.confirmed_lsn.get_or_create(&label).clone(),
            events: f.events.get_or_create(&label).clone(),
            transactions: f.transactions.get_or_create(&label).clone(),
            dead_letters: f.dead_letters.get_or_create(&label).clone(),
            reconnects: f.reconnects.get_or_create(&label).clone(),
            reconnects_per_minute: f.reconnects_per_minute.get_or_create(&label).clone(),
            errors: f.errors.get_or_create(&label).clone(),
            in_flight_bytes: f.in_flight_bytes.get_or_create(&label).clone(),
            in_flight_bytes_peak: AtomicU64::new(0),
            latency: f.latency.get_or_create(&label).clone(),
            produce: f.produce.clone(),
        };
        metrics.show_state(SourceState::Connecting);
        metrics
    }

    /// Moves to `state`; logs once per change. `error` becomes the last error.
    pub fn set_state(&self, state: SourceState, error: Option<String>) {
        let mut status = lock(&self.status);
        let changed = status.state != state;
        if let Some(message) = &error {
            self.errors.inc();
            if changed || status.last_error.as_ref() != Some(message) {
                tracing::error!(source = %self.name, state = state.as_str(), error = %message, "source failed");
            }
            status.last_error = error;
        } else if changed {
            tracing::info!(source = %self.name, state = state.as_str(), "source state changed");
        }
        if changed {
            status.state = state;
            status.state_since = chrono::Utc::now();
            self.show_state(state);
        }
    }

    fn show_state(&self, current: SourceState) {
        for (state, gauge) in &self.state {
            gauge.set(i64::from(*state == current));
        }
    }

    /// The histogram of this source's produce requests to `topic`: with the
    /// commit-to-ack time it tells the broker's share of a hop from the
    /// relay's (decoding, batching, waiting for the previous request).
    pub fn produce_histogram(&self, topic: &str) -> Histogram {
        self.produce
            .get_or_create(&TopicLabel {
                source: self.name.clone(),
                topic: topic.to_owned(),
            })
            .clone()
    }

    pub fn reconnecting(&self) {
        self.reconnects.inc();
        let mut status = lock(&self.status);
        status.recent_reconnects.push_back(Instant::now());
        self.count_recent_reconnects(&mut status);
    }

    /// Reconnects in the last 60 s (also refreshes the gauge).
    pub fn reconnects_last_minute(&self) -> u64 {
        self.count_recent_reconnects(&mut lock(&self.status))
    }

    fn count_recent_reconnects(&self, status: &mut Status) -> u64 {
        let now = Instant::now();
        while status
            .recent_reconnects
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RECONNECT_WINDOW)
        {
            status.recent_reconnects.pop_front();
        }
        let count = status.recent_reconnects.len() as u64;
        self.reconnects_per_minute
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        count
    }

    pub fn dead_lettered(&self) {
        self.dead_letters.inc();
    }

    /// A transaction of `events` records was acknowledged and confirmed.
    pub fn confirmed(&self, lsn: Lsn, events: usize, commit_to_ack: Option<Duration>) {
        self.transactions.inc();
        self.events.inc_by(events as u64);
        let lsn_gauge = i64::try_from(lsn.0).unwrap_or(i64::MAX);
        self.confirmed_lsn.set(lsn_gauge);
        let mut status = lock(&self.status);
        status.confirmed = lsn;
        if let Some(latency) = commit_to_ack {
            self.latency.observe(latency.as_secs_f64());
            status.latency.record(latency);
        }
    }

    /// The position confirmed without events (idle keepalive).
    pub fn confirmed_idle(&self, lsn: Lsn) {
        self.confirmed_lsn
            .set(i64::try_from(lsn.0).unwrap_or(i64::MAX));
        lock(&self.status).confirmed = lsn;
    }

    /// Bytes of records sent and not yet acknowledged.
    pub fn set_in_flight_bytes(&self, bytes: usize) {
        self.in_flight_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.in_flight_bytes_peak
            .fetch_max(bytes as u64, Ordering::Relaxed);
    }

    /// The streaming session's lag: `seconds` is the age of its oldest
    /// unconfirmed transaction. The byte lag is the lag probe's alone
    /// ([`SourceMetrics::slot_read`]), measured on the slot itself whatever
    /// the session does; the session's own estimate is not used.
    pub fn set_lag(&self, seconds: f64) {
        self.lag_seconds.set(seconds);
        lock(&self.status).lag_seconds = seconds;
    }

    /// A lag probe's reading of the slot; `None`: there is no slot.
    pub fn slot_read(&self, reading: Option<SlotReading>) {
        // `missing` without a slot; NULL while one is being created (no
        // WAL reserved yet).
        let (wal_status, safe_wal_size, lag) = match reading {
            None => (Some("missing".to_owned()), None, 0),
            Some(r) => (r.wal_status, r.safe_wal_size, r.lag_bytes.unwrap_or(0)),
        };
        for (name, gauge) in &self.wal_status {
            gauge.set(i64::from(wal_status.as_deref() == Some(*name)));
        }
        let label = SourceLabel {
            source: self.name.clone(),
        };
        match safe_wal_size {
            Some(size) => {
                self.safe_wal_size.get_or_create(&label).set(size);
            }
            None => {
                self.safe_wal_size.remove(&label);
            }
        }
        self.lag_bytes.set(i64::try_from(lag).unwrap_or(i64::MAX));
        let mut status = lock(&self.status);
        if status.slot_probed_at.is_none() || status.wal_status != wal_status {
            let shown = wal_status.as_deref().unwrap_or("being created");
            match shown {
                "reserved" | "extended" | "being created" => {
                    tracing::info!(source = %self.name, wal_status = shown, "slot WAL status")
                }
                _ => tracing::warn!(
                    source = %self.name,
                    wal_status = shown,
                    ?safe_wal_size,
                    "slot WAL status: the slot is missing, lost or about to be lost"
                ),
            }
        }
        status.lag_bytes = lag;
        status.wal_status = wal_status;
        status.safe_wal_size = safe_wal_size;
        status.slot_probed_at = Some(chrono::Utc::now());
        status.slot_probe_error = None;
    }

    /// The lag probe could not read the slot (the last reading stays).
    pub fn slot_probe_failed(&self, error: String) {
        let mut status = lock(&self.status);
        if status.slot_probe_error.as_ref() != Some(&error) {
            tracing::warn!(source = %self.name, error = %error, "lag probe failed");
        }
        status.slot_probe_error = Some(error);
    }

    /// The source stopped because its slot is missing or lost (or no
    /// longer is).
    pub fn set_slot_missing(&self, missing: bool) {
        self.slot_missing.set(i64::from(missing));
        lock(&self.status).slot_missing = missing;
    }

    pub fn snapshot(&self) -> SourceSnapshot {
        let mut status = lock(&self.status);
        let reconnects_per_minute = self.count_recent_reconnects(&mut status);
        let (p50, p99, max) = status.latency.percentiles();
        SourceSnapshot {
            name: self.name.clone(),
            state: status.state,
            state_since: status.state_since,
            last_error: status.last_error.clone(),
            confirmed_lsn: status.confirmed.to_string(),
            slot_lag_bytes: status.lag_bytes,
            wal_status: status.wal_status.clone(),
            safe_wal_size_bytes: status.safe_wal_size,
            slot_probed_at: status.slot_probed_at,
            slot_probe_error: status.slot_probe_error.clone(),
            slot_missing: status.slot_missing,
            lag_seconds: status.lag_seconds,
            events_published: self.events.get(),
            transactions_confirmed: self.transactions.get(),
            dead_letters: self.dead_letters.get(),
            reconnects: self.reconnects.get(),
            reconnects_per_minute,
            in_flight_bytes: u64::try_from(self.in_flight_bytes.get()).unwrap_or(0),
            in_flight_bytes_peak: self.in_flight_bytes_peak.load(Ordering::Relaxed),
            latency_p50_ms: p50,
            latency_p99_ms: p99,
            latency_max_ms: max,
        }
    }
}

/// Commit-to-ack latencies of the current and the previous window.
struct LatencyWindow {
    current: Hdr<u64>,
    previous: Hdr<u64>,
    started: Instant,
}

impl LatencyWindow {
    fn new() -> Self {
        let new = || {
            Hdr::new_with_bounds(1, 3_600_000_000, 2)
                .unwrap_or_else(|_| Hdr::new(2).expect("2 significant digits is valid"))
        };
        Self {
            current: new(),
            previous: new(),
            started: Instant::now(),
        }
    }

    fn rotate(&mut self) {
        let elapsed = self.started.elapsed();
        if elapsed < LATENCY_WINDOW {
            return;
        }
        if elapsed < 2 * LATENCY_WINDOW {
            std::mem::swap(&mut self.current, &mut self.previous);
        } else {
            self.previous.reset();
        }
        self.current.reset();
        self.started = Instant::now();
    }

    fn record(&mut self, latency: Duration) {
        self.rotate();
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.current.saturating_record(micros);
    }

    /// p50, p99 and max in milliseconds, `None` without samples.
    fn percentiles(&mut self) -> (Option<f64>, Option<f64>, Option<f64>) {
        self.rotate();
        let mut merged = self.previous.clone();
        if merged.add(&self.current).is_err() || merged.is_empty() {
            return (None, None, None);
        }
        let ms = |micros: u64| Some(micros as f64 / 1000.0);
        (
            ms(merged.value_at_quantile(0.5)),
            ms(merged.value_at_quantile(0.99)),
            ms(merged.max()),
        )
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain numbers; keep serving them.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_per_source_metrics() {
        let metrics = Metrics::new();
        let order = metrics.source("order");
        order.set_state(SourceState::Streaming, None);
        order.confirmed(Lsn(42), 3, Some(Duration::from_millis(4)));
        order.set_lag(0.5);
        order.slot_read(Some(SlotReading {
            wal_status: Some("unreserved".into()),
            safe_wal_size: Some(4096),
            lag_bytes: Some(1024),
        }));
        let text = metrics.encode();
        assert!(
            text.contains(r#"relay_events_published_total{source="order"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"relay_source_state{source="order",state="streaming"} 1"#));
        assert!(text.contains(r#"relay_slot_lag_bytes{source="order"} 1024"#));
        assert!(
            text.contains(r#"relay_slot_wal_status{source="order",wal_status="unreserved"} 1"#)
        );
        assert!(text.contains(r#"relay_slot_wal_status{source="order",wal_status="reserved"} 0"#));
        assert!(text.contains(r#"relay_slot_safe_wal_size_bytes{source="order"} 4096"#));
        order.slot_read(None);
        let text = metrics.encode();
        assert!(text.contains(r#"relay_slot_wal_status{source="order",wal_status="missing"} 1"#));
        assert!(!text.contains("relay_slot_safe_wal_size_bytes{"), "{text}");
        let snapshot = order.snapshot();
        assert_eq!(snapshot.wal_status.as_deref(), Some("missing"));
        assert_eq!(snapshot.safe_wal_size_bytes, None);
        assert_eq!(snapshot.slot_lag_bytes, 0);
        let snapshot = &metrics.snapshot()[0];
        assert_eq!(snapshot.confirmed_lsn, "0/2A");
        assert_eq!(snapshot.events_published, 3);
        let p50 = snapshot.latency_p50_ms.unwrap();
        assert!((3.9..4.1).contains(&p50), "{p50}");
        assert!(metrics.is_watched());
    }

    #[test]
    fn counts_the_reconnects_of_the_last_minute() {
        let metrics = Metrics::new();
        let source = metrics.source("flap");
        for _ in 0..3 {
            source.reconnecting();
        }
        assert_eq!(source.snapshot().reconnects_per_minute, 3);
        assert_eq!(source.snapshot().reconnects, 3);
        let text = metrics.encode();
        assert!(
            text.contains(r#"relay_reconnects_per_minute{source="flap"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn keeps_the_last_error() {
        let metrics = Metrics::new();
        let source = metrics.source("pay");
        source.set_state(SourceState::Error, Some("replication slot is lost".into()));
        source.set_state(SourceState::Connecting, None);
        let snapshot = source.snapshot();
        assert_eq!(snapshot.state, SourceState::Connecting);
        assert_eq!(
            snapshot.last_error.as_deref(),
            Some("replication slot is lost")
        );
    }
}

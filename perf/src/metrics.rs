//! The recorder every request reports to: a latency histogram and error
//! counts per request type, per-second series for the charts, per-step
//! figures for the saturation scenario, and saga completion times.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stats::{LatencySummary, micros, new_coarse_histogram, new_histogram};

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A non-2xx answer, with the API's error code when the body had one.
    Status(u16, Option<String>),
    Timeout,
    Connect,
    /// The answer arrived but could not be read or did not have the expected shape.
    Body(String),
    /// The load tool had too many requests in flight and skipped this one.
    ClientBacklog,
    Other(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// The error kind as reported: `http 503 UPSTREAM_UNAVAILABLE`, `timeout`, `connect`, ...
    pub fn error_kind(&self) -> Option<String> {
        match self {
            Outcome::Ok => None,
            Outcome::Status(code, Some(api_code)) => Some(format!("http {code} {api_code}")),
            Outcome::Status(code, None) => Some(format!("http {code}")),
            Outcome::Timeout => Some("timeout".into()),
            Outcome::Connect => Some("connect".into()),
            Outcome::Body(what) => Some(format!("body: {what}")),
            Outcome::ClientBacklog => Some("client backlog (not sent)".into()),
            Outcome::Other(what) => Some(format!("other: {what}")),
        }
    }
}

#[derive(Debug)]
struct KindStats {
    latency: Histogram<u64>,
    ok: u64,
    errors: u64,
}

impl KindStats {
    fn new() -> Self {
        Self {
            latency: new_histogram(),
            ok: 0,
            errors: 0,
        }
    }

    fn add(&mut self, latency: Duration, ok: bool) {
        self.latency.saturating_record(micros(latency));
        if ok {
            self.ok += 1;
        } else {
            self.errors += 1;
        }
    }

    fn summary(&self, kind: &str, seconds: f64) -> KindSummary {
        let count = self.ok + self.errors;
        KindSummary {
            kind: kind.to_string(),
            count,
            ok: self.ok,
            errors: self.errors,
            per_second: if seconds > 0.0 {
                count as f64 / seconds
            } else {
                0.0
            },
            latency: LatencySummary::from_histogram(&self.latency),
        }
    }
}

#[derive(Debug, Default)]
struct SecondBucket {
    per_kind: BTreeMap<&'static str, (u64, u64, Option<Histogram<u32>>)>,
    sagas_finished: u64,
    max_in_flight: i64,
    max_generator_lag: Duration,
    /// Requests that ended in this second, and how many of them failed (for the progress line).
    completed: u64,
    completed_errors: u64,
}

#[derive(Debug)]
struct Inner {
    kinds: BTreeMap<&'static str, KindStats>,
    errors: BTreeMap<(&'static str, String), u64>,
    seconds: Vec<SecondBucket>,
    steps: BTreeMap<usize, BTreeMap<&'static str, KindStats>>,
    generator_lag: Histogram<u64>,
    saga_all: Histogram<u64>,
    saga_by_status: BTreeMap<String, Histogram<u64>>,
    saga_server_side: Histogram<u64>,
}

/// Shared by all request tasks; a mutex is plenty at a few thousand requests a second.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    in_flight: AtomicI64,
    inner: Mutex<Inner>,
}

/// Latency and counts of one request type.
#[derive(Debug, Clone, Serialize)]
pub struct KindSummary {
    pub kind: String,
    pub count: u64,
    pub ok: u64,
    pub errors: u64,
    pub per_second: f64,
    pub latency: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    pub request: String,
    pub error: String,
    pub count: u64,
}

/// One second of the run, by the second in which requests started.
#[derive(Debug, Clone, Serialize)]
pub struct SecondPoint {
    pub second: u64,
    pub requests: BTreeMap<String, u64>,
    pub errors: u64,
    pub p50_ms: BTreeMap<String, f64>,
    pub p99_ms: BTreeMap<String, f64>,
    pub sagas_finished: u64,
    pub max_in_flight: i64,
    pub max_generator_lag_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SagaFigures {
    pub finished: u64,
    pub completion: LatencySummary,
    pub by_status: BTreeMap<String, LatencySummary>,
    /// `updated_at - created_at` of the final order, when the API returns both.
    pub server_side: Option<LatencySummary>,
    pub cdf: Vec<(f64, f64)>,
}

/// Everything the recorder knows, ready for a report.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub elapsed_s: f64,
    pub total: KindSummary,
    pub kinds: Vec<KindSummary>,
    pub errors: Vec<ErrorCount>,
    pub seconds: Vec<SecondPoint>,
    pub steps: BTreeMap<usize, Vec<KindSummary>>,
    pub generator_lag: LatencySummary,
    pub saga: SagaFigures,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicI64::new(0),
            inner: Mutex::new(Inner {
                kinds: BTreeMap::new(),
                errors: BTreeMap::new(),
                seconds: Vec::new(),
                steps: BTreeMap::new(),
                generator_lag: new_histogram(),
                saga_all: new_histogram(),
                saga_by_status: BTreeMap::new(),
                saga_server_side: new_histogram(),
            }),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn begin(&self) -> InFlightGuard<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let second = self.second_of(Instant::now());
        let mut inner = self.lock();
        let bucket = bucket(&mut inner.seconds, second);
        bucket.max_in_flight = bucket.max_in_flight.max(now);
        InFlightGuard { recorder: self }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn second_of(&self, at: Instant) -> usize {
        bucket_index(self.start, at)
    }

    /// Records one request of type `kind` that started at `started`.
    /// A request of `kind` (no step) started now that took `ms`: the tests'
    /// sample data.
    #[cfg(test)]
    pub(crate) fn record_ms(&self, kind: &'static str, ms: u64, outcome: &Outcome) {
        self.record(
            kind,
            None,
            Instant::now(),
            Duration::from_millis(ms),
            outcome,
        );
    }

    pub fn record(
        &self,
        kind: &'static str,
        step: Option<usize>,
        started: Instant,
        latency: Duration,
        outcome: &Outcome,
    ) {
        let ok = outcome.is_ok();
        let second = self.second_of(started);
        let done = bucket_index(self.start, Instant::now());
        let mut inner = self.lock();
        let done = bucket(&mut inner.seconds, done);
        done.completed += 1;
        done.completed_errors += u64::from(!ok);
        inner
            .kinds
            .entry(kind)
            .or_insert_with(KindStats::new)
            .add(latency, ok);
        if let Some(step) = step {
            inner
                .steps
                .entry(step)
                .or_default()
                .entry(kind)
                .or_insert_with(KindStats::new)
                .add(latency, ok);
        }
        if let Some(error) = outcome.error_kind() {
            *inner.errors.entry((kind, error)).or_default() += 1;
        }
        let entry = bucket(&mut inner.seconds, second)
            .per_kind
            .entry(kind)
            .or_insert((0, 0, None));
        entry.0 += 1;
        if !ok {
            entry.1 += 1;
        }
        entry
            .2
            .get_or_insert_with(new_coarse_histogram)
            .saturating_record(micros(latency));
    }

    /// How late the open-loop scheduler fired a request.
    pub fn record_generator_lag(&self, lag: Duration) {
        let second = self.second_of(Instant::now());
        let mut inner = self.lock();
        inner.generator_lag.saturating_record(micros(lag));
        let bucket = bucket(&mut inner.seconds, second);
        bucket.max_generator_lag = bucket.max_generator_lag.max(lag);
    }

    /// A saga reached `final_status` after `completion`, or was given up on
    /// (`UNFINISHED(PAID)`): that one counts by status but not in the completion percentiles.
    pub fn record_saga(
        &self,
        final_status: &str,
        completion: Duration,
        server_side: Option<Duration>,
    ) {
        let second = self.second_of(Instant::now());
        let mut inner = self.lock();
        if crate::api::is_final(final_status) {
            inner.saga_all.saturating_record(micros(completion));
        }
        inner
            .saga_by_status
            .entry(final_status.to_string())
            .or_insert_with(new_histogram)
            .saturating_record(micros(completion));
        if let Some(server_side) = server_side {
            inner
                .saga_server_side
                .saturating_record(micros(server_side));
        }
        bucket(&mut inner.seconds, second).sagas_finished += 1;
    }

    /// The current second's index, and the requests that ended in the second before it
    /// (with how many failed).
    pub fn current_second(&self) -> (u64, u64, u64) {
        let second = self.second_of(Instant::now());
        let inner = self.lock();
        let (completed, errors) = inner
            .seconds
            .get(second.wrapping_sub(1))
            .map_or((0, 0), |b| (b.completed, b.completed_errors));
        (second as u64, completed, errors)
    }

    /// Summary of one saturation step: each request type that step recorded.
    pub fn step_summary(&self, step: usize, seconds: f64) -> Vec<KindSummary> {
        let inner = self.lock();
        inner
            .steps
            .get(&step)
            .map(|kinds| {
                kinds
                    .iter()
                    .map(|(kind, stats)| stats.summary(kind, seconds))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn snapshot(&self) -> Snapshot {
        let elapsed = self.elapsed().as_secs_f64();
        let inner = self.lock();
        let mut total = KindStats::new();
        for stats in inner.kinds.values() {
            total.latency.add(&stats.latency).expect("same bounds");
            total.ok += stats.ok;
            total.errors += stats.errors;
        }
        let kinds = inner
            .kinds
            .iter()
            .map(|(kind, stats)| stats.summary(kind, elapsed))
            .collect();
        let errors = inner
            .errors
            .iter()
            .map(|((request, error), count)| ErrorCount {
                request: request.to_string(),
                error: error.clone(),
                count: *count,
            })
            .collect();
        let seconds = inner
            .seconds
            .iter()
            .enumerate()
            .map(|(second, b)| {
                let quantile = |q: f64| {
                    b.per_kind
                        .iter()
                        .filter_map(|(kind, (_, _, h))| {
                            h.as_ref()
                                .map(|h| (kind.to_string(), h.value_at_quantile(q) as f64 / 1000.0))
                        })
                        .collect()
                };
                SecondPoint {
                    second: second as u64,
                    requests: b
                        .per_kind
                        .iter()
                        .map(|(kind, (count, _, _))| (kind.to_string(), *count))
                        .collect(),
                    errors: b.per_kind.values().map(|(_, errors, _)| errors).sum(),
                    p50_ms: quantile(0.5),
                    p99_ms: quantile(0.99),
                    sagas_finished: b.sagas_finished,
                    max_in_flight: b.max_in_flight,
                    max_generator_lag_ms: b.max_generator_lag.as_secs_f64() * 1000.0,
                }
            })
            .collect();
        let steps = inner
            .steps
            .iter()
            .map(|(step, kinds)| {
                (
                    *step,
                    kinds
                        .iter()
                        .map(|(kind, stats)| stats.summary(kind, 0.0))
                        .collect(),
                )
            })
            .collect();
        let server_side = (!inner.saga_server_side.is_empty())
            .then(|| LatencySummary::from_histogram(&inner.saga_server_side));
        Snapshot {
            elapsed_s: elapsed,
            total: total.summary("all", elapsed),
            kinds,
            errors,
            seconds,
            steps,
            generator_lag: LatencySummary::from_histogram(&inner.generator_lag),
            saga: SagaFigures {
                finished: inner.saga_all.len(),
                completion: LatencySummary::from_histogram(&inner.saga_all),
                by_status: inner
                    .saga_by_status
                    .iter()
                    .map(|(status, h)| (status.clone(), LatencySummary::from_histogram(h)))
                    .collect(),
                server_side,
                cdf: crate::stats::cdf_points(&inner.saga_all),
            },
        }
    }
}

fn bucket_index(start: Instant, at: Instant) -> usize {
    at.saturating_duration_since(start).as_secs() as usize
}

fn bucket(seconds: &mut Vec<SecondBucket>, second: usize) -> &mut SecondBucket {
    if seconds.len() <= second {
        seconds.resize_with(second + 1, SecondBucket::default);
    }
    &mut seconds[second]
}

/// Decrements the in-flight gauge when a request ends, however it ends.
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    recorder: &'a Recorder,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.recorder.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_latencies_and_errors_per_kind() {
        let rec = Recorder::new();
        for ms in 1..=100 {
            rec.record_ms("place_order", ms, &Outcome::Ok);
        }
        let unavailable = Outcome::Status(503, Some("UPSTREAM_UNAVAILABLE".into()));
        rec.record_ms("place_order", 5, &unavailable);
        let now = Instant::now();
        rec.record(
            "get_order",
            Some(2),
            now,
            Duration::from_secs(10),
            &Outcome::Timeout,
        );
        let snap = rec.snapshot();
        assert_eq!(snap.total.count, 102);
        assert_eq!(snap.total.errors, 2);
        let place = snap.kinds.iter().find(|k| k.kind == "place_order").unwrap();
        assert_eq!((place.ok, place.errors), (100, 1));
        assert!((place.latency.p50_ms - 50.0).abs() < 0.1);
        let errors: Vec<_> = snap
            .errors
            .iter()
            .map(|e| (e.request.as_str(), e.error.as_str(), e.count))
            .collect();
        assert_eq!(
            errors,
            vec![
                ("get_order", "timeout", 1),
                ("place_order", "http 503 UPSTREAM_UNAVAILABLE", 1)
            ]
        );
        assert_eq!(snap.steps[&2][0].errors, 1);
        assert_eq!(snap.seconds[0].requests["place_order"], 101);
        assert_eq!(snap.seconds[0].errors, 2);
    }

    #[test]
    fn in_flight_gauge_follows_guards() {
        let rec = Recorder::new();
        let a = rec.begin();
        let b = rec.begin();
        assert_eq!(rec.in_flight(), 2);
        drop(a);
        assert_eq!(rec.in_flight(), 1);
        drop(b);
        assert_eq!(rec.in_flight(), 0);
        assert_eq!(rec.snapshot().seconds[0].max_in_flight, 2);
    }

    #[test]
    fn saga_figures_by_final_status() {
        let rec = Recorder::new();
        for ms in [100, 120, 140] {
            rec.record_saga("DELIVERY_SCHEDULED", Duration::from_millis(ms), None);
        }
        rec.record_saga(
            "REJECTED",
            Duration::from_millis(80),
            Some(Duration::from_millis(70)),
        );
        rec.record_saga("UNFINISHED(PAID)", Duration::from_secs(30), None);
        let saga = rec.snapshot().saga;
        assert_eq!(saga.finished, 4);
        assert_eq!(saga.by_status["UNFINISHED(PAID)"].count, 1);
        assert_eq!(saga.by_status["DELIVERY_SCHEDULED"].count, 3);
        assert_eq!(saga.by_status["REJECTED"].count, 1);
        assert!((saga.completion.max_ms - 140.0).abs() < 0.2);
        assert_eq!(saga.server_side.unwrap().count, 1);
    }

    #[test]
    fn error_kinds_are_readable() {
        assert_eq!(Outcome::Ok.error_kind(), None);
        assert_eq!(Outcome::Status(409, None).error_kind().unwrap(), "http 409");
        assert_eq!(Outcome::Connect.error_kind().unwrap(), "connect");
    }
}

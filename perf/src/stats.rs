//! Latency summaries from HDR histograms. Values are recorded in microseconds.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest value a histogram holds: 10 minutes in microseconds; larger values saturate.
pub const MAX_MICROS: u64 = 600_000_000;

/// A histogram for whole-run latencies: 1 µs to 10 min at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// A small histogram for per-second series: 2 significant digits are enough for a chart.
pub fn new_coarse_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("valid histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(MAX_MICROS)
        .clamp(1, MAX_MICROS)
}

/// Percentiles of one latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn from_histogram<T: hdrhistogram::Counter>(h: &Histogram<T>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Points of the cumulative distribution (latency ms, fraction <= latency) for a chart.
pub fn cdf_points<T: hdrhistogram::Counter>(h: &Histogram<T>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let quantiles = [
        0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995,
        0.999, 1.0,
    ];
    quantiles
        .iter()
        .map(|&q| (h.value_at_quantile(q) as f64 / 1000.0, q))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(actual: f64, expected: f64, rel: f64) -> bool {
        (actual - expected).abs() <= expected * rel
    }

    #[test]
    fn uniform_distribution_percentiles() {
        let mut h = new_histogram();
        for ms in 1..=1000u64 {
            h.record(ms * 1000).unwrap();
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 1000);
        assert!(within(s.p50_ms, 500.0, 0.002), "p50 {}", s.p50_ms);
        assert!(within(s.p90_ms, 900.0, 0.002), "p90 {}", s.p90_ms);
        assert!(within(s.p99_ms, 990.0, 0.002), "p99 {}", s.p99_ms);
        assert!(within(s.max_ms, 1000.0, 0.002), "max {}", s.max_ms);
        assert!(within(s.min_ms, 1.0, 0.002), "min {}", s.min_ms);
        assert!(within(s.mean_ms, 500.5, 0.002), "mean {}", s.mean_ms);
    }

    #[test]
    fn tail_is_visible_in_p99_but_not_p50() {
        let mut h = new_histogram();
        for _ in 0..985 {
            h.record(micros(Duration::from_millis(10))).unwrap();
        }
        for _ in 0..15 {
            h.record(micros(Duration::from_secs(2))).unwrap();
        }
        let s = LatencySummary::from_histogram(&h);
        assert!(within(s.p50_ms, 10.0, 0.002));
        assert!(within(s.p99_ms, 2000.0, 0.002));
    }

    #[test]
    fn empty_histogram_gives_zeros() {
        assert_eq!(
            LatencySummary::from_histogram(&new_histogram()),
            LatencySummary::default()
        );
        assert!(cdf_points(&new_histogram()).is_empty());
    }

    #[test]
    fn micros_clamps_into_range() {
        assert_eq!(micros(Duration::ZERO), 1);
        assert_eq!(micros(Duration::from_secs(3600)), MAX_MICROS);
        assert_eq!(micros(Duration::from_millis(5)), 5000);
    }

    #[test]
    fn coarse_histogram_is_within_one_percent() {
        let mut h = new_coarse_histogram();
        for ms in 1..=100u64 {
            h.record(ms * 1000).unwrap();
        }
        let s = LatencySummary::from_histogram(&h);
        assert!(within(s.p99_ms, 99.0, 0.01), "p99 {}", s.p99_ms);
    }

    #[test]
    fn cdf_is_monotonic_and_ends_at_one() {
        let mut h = new_histogram();
        for v in [5u64, 7, 100, 2000, 30_000] {
            h.record(v).unwrap();
        }
        let points = cdf_points(&h);
        assert_eq!(points.last().unwrap().1, 1.0);
        assert!(
            points
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
        );
    }
}

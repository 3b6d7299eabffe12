//! When things happen: the open-loop rate schedule (the i-th request is due at
//! `start + i / rate`, whatever earlier requests are doing), user ramps and the
//! rate steps of the saturation scenario.

use std::time::Duration;

use tokio::time::Instant;

/// A fixed-rate, open-loop schedule. It never drifts: due times are offsets
/// from the start, not from the previous tick, so a late tick is followed by
/// immediate catch-up ticks instead of a lower rate.
#[derive(Debug, Clone, Copy)]
pub struct RateSchedule {
    rate_per_s: f64,
}

impl RateSchedule {
    pub fn new(rate_per_s: f64) -> Self {
        assert!(rate_per_s > 0.0, "rate must be positive");
        Self { rate_per_s }
    }

    /// Offset of the i-th event from the start.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate_per_s)
    }

    /// Number of events due strictly before `elapsed` since the start.
    pub fn count_within(&self, elapsed: Duration) -> u64 {
        let exact = elapsed.as_secs_f64() * self.rate_per_s;
        let nearest = exact.round();
        // Float noise must not turn "exactly 6000" into 6001.
        if (exact - nearest).abs() < 1e-6 {
            nearest as u64
        } else {
            exact.ceil() as u64
        }
    }
}

/// Drives `on_tick(i, lag)` at the schedule's rate for `duration`, where `lag`
/// is how late the tick fired (the generator's own delay, reported separately
/// so a busy load tool is not mistaken for a slow server).
pub async fn run_open_loop(
    rate_per_s: f64,
    duration: Duration,
    mut on_tick: impl FnMut(u64, Duration),
) -> u64 {
    let schedule = RateSchedule::new(rate_per_s);
    let start = Instant::now();
    let total = schedule.count_within(duration);
    for i in 0..total {
        let due = start + schedule.offset(i);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        on_tick(i, Instant::now().saturating_duration_since(due));
    }
    total
}

/// Start offsets of `users` users ramped evenly over `ramp` (the first starts at 0),
/// as Gatling's `rampUsers(n).during(ramp)` does.
pub fn ramp_offsets(users: usize, ramp: Duration) -> Vec<Duration> {
    (0..users)
        .map(|i| ramp.mul_f64(i as f64 / users as f64))
        .collect()
}

/// Target rates of the saturation scenario: `start`, `start + step`, ... up to `max` inclusive.
pub fn rate_steps(start: f64, step: f64, max: f64) -> Vec<f64> {
    assert!(start > 0.0 && step > 0.0, "start and step must be positive");
    let mut rates = Vec::new();
    let mut rate = start;
    while rate <= max + 1e-9 {
        rates.push(rate);
        rate += step;
    }
    rates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_do_not_drift() {
        let s = RateSchedule::new(200.0);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(5));
        assert_eq!(s.offset(200), Duration::from_secs(1));
        assert_eq!(s.offset(12_000), Duration::from_secs(60));
    }

    #[test]
    fn count_within_a_window() {
        let s = RateSchedule::new(200.0);
        assert_eq!(s.count_within(Duration::from_secs(30)), 6000);
        assert_eq!(s.count_within(Duration::from_millis(2)), 1);
        let s = RateSchedule::new(3.0);
        // due at 0, 1/3, 2/3 within one second; 1.0 belongs to the next second.
        assert_eq!(s.count_within(Duration::from_secs(1)), 3);
        assert_eq!(s.count_within(Duration::from_millis(1100)), 4);
    }

    #[test]
    fn ramp_spreads_users_evenly() {
        let offsets = ramp_offsets(10, Duration::from_secs(30));
        assert_eq!(offsets.len(), 10);
        assert_eq!(offsets[0], Duration::ZERO);
        assert_eq!(offsets[1], Duration::from_secs(3));
        assert_eq!(offsets[9], Duration::from_secs(27));
    }

    #[test]
    fn steps_include_the_maximum() {
        assert_eq!(
            rate_steps(100.0, 100.0, 500.0),
            vec![100.0, 200.0, 300.0, 400.0, 500.0]
        );
        assert_eq!(rate_steps(50.0, 100.0, 200.0), vec![50.0, 150.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_fires_at_the_rate() {
        let started = Instant::now();
        let mut ticks = Vec::new();
        let n = run_open_loop(100.0, Duration::from_secs(2), |i, _lag| {
            ticks.push((i, Instant::now() - started));
        })
        .await;
        assert_eq!(n, 200);
        assert_eq!(ticks.len(), 200);
        assert_eq!(ticks[0].0, 0);
        let last = ticks.last().unwrap().1;
        assert!(
            last >= Duration::from_millis(1980) && last < Duration::from_secs(2),
            "{last:?}"
        );
    }
}

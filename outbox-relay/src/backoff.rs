//! Exponential backoff with equal jitter for reconnect attempts: each pause
//! is random in [cap/2, cap], the cap doubling from the initial pause up to
//! the longest. The source starts it over only after a healthy session (see
//! `replication.healthy_session_ms`), so a failure that recurs right after
//! streaming starts keeps backing off instead of retrying at the initial pace.

use std::time::Duration;

use rand::Rng;

#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The next pause: random in [cap/2, cap], cap doubling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = backoff.next_delay();
        assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
        for _ in 0..10 {
            assert!(backoff.next_delay() <= Duration::from_secs(1));
        }
        assert!(backoff.next_delay() >= Duration::from_millis(500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}

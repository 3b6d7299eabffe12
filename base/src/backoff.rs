//! Exponential backoff with jitter. The cap of the n-th pause is
//! `initial * 2^n`, at most `max`; the jitter decides where in relation to
//! the cap the pause falls. [`Backoff::reset`] starts over.

use std::time::Duration;

use rand::Rng;

/// Where a pause falls in relation to its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Random in `[cap/2, cap]` ("equal jitter"): reconnecting processes
    /// spread out, and no pause is shorter than half the cap.
    Equal,
    /// The cap plus up to a quarter of it, never above `max`: retries of one
    /// process, for which the cap itself is the pace wanted.
    Added,
}

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: Jitter,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, jitter: Jitter) -> Self {
        Self {
            initial,
            max,
            jitter,
            attempt: 0,
        }
    }

    /// The next pause; the following cap is twice this one's, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        match self.jitter {
            Jitter::Equal => {
                let half = cap / 2;
                half + rand::thread_rng().gen_range(Duration::ZERO..=half)
            }
            Jitter::Added => cap
                .mul_f64(1.0 + rand::thread_rng().gen_range(0.0..0.25))
                .min(self.max),
        }
    }

    /// Back to the initial pause.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_jitter_grows_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Jitter::Equal,
        );
        let first = backoff.next_delay();
        assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
        for _ in 0..10 {
            assert!(backoff.next_delay() <= Duration::from_secs(1));
        }
        assert!(backoff.next_delay() >= Duration::from_millis(500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn added_jitter_grows_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Jitter::Added,
        );
        let first = backoff.next_delay();
        assert!((Duration::from_millis(100)..=Duration::from_millis(125)).contains(&first));
        for _ in 0..10 {
            assert!(backoff.next_delay() <= Duration::from_secs(1));
        }
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(125));
    }

    #[test]
    fn a_max_below_the_initial_pause_caps_every_pause() {
        let mut backoff = Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(10),
            Jitter::Added,
        );
        assert_eq!(backoff.next_delay(), Duration::from_millis(10));
    }
}

//! Failed-login throttling: a sliding window of failure times per email and
//! per client address, in memory. Per process, so with N gateway replicas an
//! attacker gets N times the budget; a shared store (the database, Redis)
//! would be the next step. Memory stays bounded: each key keeps at most its
//! limit of timestamps, and keys whose window has passed are swept.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::config::ThrottleConfig;

pub struct LoginThrottle {
    window: Duration,
    max_per_email: usize,
    max_per_address: usize,
    state: Mutex<State>,
}

struct State {
    by_email: HashMap<String, VecDeque<Instant>>,
    by_address: HashMap<IpAddr, VecDeque<Instant>>,
    last_sweep: Instant,
}

impl LoginThrottle {
    pub fn new(config: &ThrottleConfig) -> Self {
        Self {
            window: Duration::from_secs(config.window_seconds),
            max_per_email: config.max_failures_per_email.max(1),
            max_per_address: config.max_failures_per_address.max(1),
            state: Mutex::new(State {
                by_email: HashMap::new(),
                by_address: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// `Err(retry_after)` when either the email or the address has used up
    /// its failures within the window.
    pub fn check(&self, email: &str, address: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut state = self.state.lock().expect("throttle lock");
        self.sweep(&mut state, now);
        let email_wait = blocked_for(
            state.by_email.get_mut(email),
            self.max_per_email,
            self.window,
            now,
        );
        let address_wait = address.and_then(|address| {
            blocked_for(
                state.by_address.get_mut(&address),
                self.max_per_address,
                self.window,
                now,
            )
        });
        match email_wait.max(address_wait) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    pub fn record_failure(&self, email: &str, address: Option<IpAddr>) {
        let now = Instant::now();
        let mut state = self.state.lock().expect("throttle lock");
        push(
            &mut state.by_email,
            email.to_owned(),
            self.max_per_email,
            now,
        );
        if let Some(address) = address {
            push(&mut state.by_address, address, self.max_per_address, now);
        }
    }

    /// A successful login forgives the email's earlier failures (not the
    /// address's: one address trying many accounts stays throttled).
    pub fn record_success(&self, email: &str) {
        self.state
            .lock()
            .expect("throttle lock")
            .by_email
            .remove(email);
    }

    fn sweep(&self, state: &mut State, now: Instant) {
        if now.duration_since(state.last_sweep) < self.window {
            return;
        }
        let window = self.window;
        let fresh = |times: &mut VecDeque<Instant>| {
            times
                .back()
                .is_some_and(|last| now.duration_since(*last) < window)
        };
        state.by_email.retain(|_, times| fresh(times));
        state.by_address.retain(|_, times| fresh(times));
        state.last_sweep = now;
    }
}

fn blocked_for(
    times: Option<&mut VecDeque<Instant>>,
    max: usize,
    window: Duration,
    now: Instant,
) -> Option<Duration> {
    let times = times?;
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        times.pop_front();
    }
    if times.len() < max {
        return None;
    }
    let oldest = *times.front()?;
    Some(window.saturating_sub(now.duration_since(oldest)))
}

fn push<K: Eq + Hash>(map: &mut HashMap<K, VecDeque<Instant>>, key: K, max: usize, now: Instant) {
    let times = map.entry(key).or_default();
    times.push_back(now);
    while times.len() > max {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(per_email: usize, per_address: usize) -> LoginThrottle {
        LoginThrottle::new(&ThrottleConfig {
            window_seconds: 60,
            max_failures_per_email: per_email,
            max_failures_per_address: per_address,
        })
    }

    #[test]
    fn blocks_an_email_after_its_limit() {
        let t = throttle(2, 100);
        let ip = Some("10.0.0.1".parse().unwrap());
        assert!(t.check("a@x.io", ip).is_ok());
        t.record_failure("a@x.io", ip);
        t.record_failure("a@x.io", ip);
        let wait = t.check("a@x.io", ip).unwrap_err();
        assert!(wait > Duration::from_secs(55) && wait <= Duration::from_secs(60));
        assert!(t.check("b@x.io", ip).is_ok());
        t.record_success("a@x.io");
        assert!(t.check("a@x.io", ip).is_ok());
    }

    #[test]
    fn blocks_an_address_across_emails() {
        let t = throttle(100, 3);
        let ip = Some("10.0.0.2".parse().unwrap());
        for i in 0..3 {
            t.record_failure(&format!("u{i}@x.io"), ip);
        }
        assert!(t.check("new@x.io", ip).is_err());
        assert!(
            t.check("new@x.io", Some("10.0.0.3".parse().unwrap()))
                .is_ok()
        );
    }
}

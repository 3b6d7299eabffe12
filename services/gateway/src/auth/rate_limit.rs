//! Request rate limits of the credential endpoints, successes included:
//! every login and registration costs a bcrypt. Token buckets (GCRA: one
//! instant per key) per client address and one for all clients; in memory,
//! per process, at most `rate_limit.max_tracked_addresses` addresses per
//! limit (idle ones are forgotten first).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::config::{Rate, RateLimitConfig};

/// One token bucket: at most `requests` at once, refilled over `per`.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// Time one request "costs".
    emission: Duration,
    /// How far ahead of now the theoretical arrival time may run.
    tolerance: Duration,
}

impl Gcra {
    fn new(rate: Rate) -> Self {
        let per = rate.per;
        let emission = per / rate.requests.max(1);
        Self {
            emission,
            tolerance: per.saturating_sub(emission),
        }
    }

    /// Takes one token from the bucket whose state is `tat`.
    fn take(&self, tat: &mut Option<Instant>, now: Instant) -> Result<(), Duration> {
        let current = tat.map_or(now, |t| t.max(now));
        let ahead = current - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        *tat = Some(current + self.emission);
        Ok(())
    }
}

struct PerAddress {
    gcra: Gcra,
    max_keys: usize,
    buckets: Mutex<HashMap<IpAddr, Instant>>,
}

impl PerAddress {
    fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            gcra: Gcra::new(rate),
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if buckets.len() >= self.max_keys && !buckets.contains_key(&address) {
            // A bucket whose time has passed is full again: nothing to keep.
            buckets.retain(|_, tat| *tat > now);
            if buckets.len() >= self.max_keys {
                tracing::warn!(
                    max_keys = self.max_keys,
                    "rate limit full: forgetting the stalest address"
                );
                let stalest = buckets.iter().min_by_key(|(_, tat)| **tat).map(|(k, _)| *k);
                if let Some(stalest) = stalest {
                    buckets.remove(&stalest);
                }
            }
        }
        let mut tat = buckets.get(&address).copied();
        let taken = self.gcra.take(&mut tat, now);
        if let Some(tat) = tat {
            buckets.insert(address, tat);
        }
        taken
    }
}

/// Which endpoint is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Register,
}

pub struct RateLimits {
    login: PerAddress,
    register: PerAddress,
    global: Gcra,
    global_tat: Mutex<Option<Instant>>,
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            login: PerAddress::new(config.login_per_address, config.max_tracked_addresses),
            register: PerAddress::new(config.register_per_address, config.max_tracked_addresses),
            global: Gcra::new(config.global),
            global_tat: Mutex::new(None),
        }
    }

    /// Takes a request of `endpoint` from `address`, or `Err(retry_after)`.
    pub fn take(&self, endpoint: Endpoint, address: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        match endpoint {
            Endpoint::Login => self.login.take(address, now)?,
            Endpoint::Register => self.register.take(address, now)?,
        }
        self.global
            .take(&mut self.global_tat.lock().expect("rate limit lock"), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_says_when() {
        let gcra = Gcra::new(Rate {
            requests: 3,
            per: Duration::from_secs(60),
        });
        let now = Instant::now();
        let mut tat = None;
        for _ in 0..3 {
            gcra.take(&mut tat, now).unwrap();
        }
        let wait = gcra.take(&mut tat, now).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        gcra.take(&mut tat, now + wait).unwrap();
    }

    #[test]
    fn addresses_are_bounded() {
        let limit = PerAddress::new(
            Rate {
                requests: 1,
                per: Duration::from_secs(60),
            },
            2,
        );
        let now = Instant::now();
        for i in 0..10u8 {
            limit.take(IpAddr::from([10, 0, 0, i]), now).unwrap();
        }
        assert!(limit.buckets.lock().unwrap().len() <= 2);
    }
}

//! Failed-login throttling, in memory, over one sliding window:
//!
//! - per (email, client address) pair: `max_failures_per_email_and_address`
//!   failures, then 429 for that pair only (an attacker locks out himself,
//!   not the owner on another address);
//! - per client address, any email: `max_failures_per_address`, then 429;
//! - per email, any address: past `slow_down_after_failures_per_email`
//!   failures, attempts on the account get slots `slow_down_interval`
//!   apart and wait for theirs: a correct password is delayed, not refused
//!   (unless the queue is longer than `max_delay`).
//!
//! An attempt is reserved atomically before the password is checked (it
//! counts as a failure from that moment), so concurrent guesses cannot all
//! pass the check. A success takes the reservation back and clears its own
//! (email, address) pair; an attempt dropped unresolved (database error,
//! client gone) is taken back too.
//!
//! Per process: N gateway replicas give N times the budget. Memory is bounded:
//! each key keeps at most its limit of timestamps, each kind of key at most
//! `max_tracked_keys` (expired keys are swept first, then the stalest goes).

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::config::ThrottleConfig;

/// Longest throttle key kept: real emails are at most 254 bytes.
const MAX_KEY_BYTES: usize = 256;

pub struct LoginThrottle {
    window: Duration,
    max_per_pair: usize,
    max_per_address: usize,
    slow_after: usize,
    interval: Duration,
    max_delay: Duration,
    max_keys: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct Account {
    failures: VecDeque<Instant>,
    /// The slot after the last reserved one.
    next_slot: Option<Instant>,
}

struct State {
    pairs: HashMap<(String, IpAddr), VecDeque<Instant>>,
    addresses: HashMap<IpAddr, VecDeque<Instant>>,
    accounts: HashMap<String, Account>,
    last_sweep: Instant,
}

/// A reserved attempt: counted as a failure until [`LoginThrottle::succeeded`]
/// or dropped unresolved.
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    email: String,
    address: IpAddr,
    at: Instant,
    /// How long to wait for this attempt's slot before checking the password.
    pub delay: Duration,
    resolved: bool,
}

impl Attempt<'_> {
    /// The password was wrong: the reservation stays a failure.
    pub fn failed(mut self) {
        self.resolved = true;
    }

    /// The password was right: the reservation is taken back and the
    /// (email, address) pair starts over.
    pub fn succeeded(mut self) {
        self.resolved = true;
        self.throttle
            .release(&self.email, self.address, self.at, true);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.resolved {
            self.throttle
                .release(&self.email, self.address, self.at, false);
        }
    }
}

/// The normalized throttle key of a typed email (also when it is invalid, so
/// spelling variants share one budget), bounded in length.
pub fn email_key(raw: &str) -> String {
    let mut key = raw.trim().to_lowercase();
    if key.len() > MAX_KEY_BYTES {
        let mut end = MAX_KEY_BYTES;
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        key.truncate(end);
    }
    key
}

impl LoginThrottle {
    pub fn new(config: &ThrottleConfig) -> Self {
        Self {
            window: config.window,
            max_per_pair: config.max_failures_per_email_and_address.max(1),
            max_per_address: config.max_failures_per_address.max(1),
            slow_after: config.slow_down_after_failures_per_email.max(1),
            interval: config.slow_down_interval,
            max_delay: config.max_delay,
            max_keys: config.max_tracked_keys.max(1),
            state: Mutex::new(State {
                pairs: HashMap::new(),
                addresses: HashMap::new(),
                accounts: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Reserves an attempt for `email` (an [`email_key`]) from `address`, or
    /// `Err(retry_after)` when the pair or the address used up its failures,
    /// or the account's queue is longer than the longest delay.
    pub fn reserve(&self, email: &str, address: IpAddr) -> Result<Attempt<'_>, Duration> {
        let now = Instant::now();
        let mut state = self.state.lock().expect("throttle lock");
        let state = &mut *state;
        if now.duration_since(state.last_sweep) >= self.window {
            self.sweep(state, now);
        }
        let pair_key = (email.to_owned(), address);
        let pair_wait = blocked_for(
            state.pairs.get_mut(&pair_key),
            self.max_per_pair,
            self.window,
            now,
        );
        let address_wait = blocked_for(
            state.addresses.get_mut(&address),
            self.max_per_address,
            self.window,
            now,
        );
        if let Some(wait) = pair_wait.max(address_wait) {
            return Err(wait);
        }
        let mut delay = Duration::ZERO;
        let mut slot = now;
        if let Some(account) = state.accounts.get_mut(email) {
            expire(&mut account.failures, self.window, now);
            if account.failures.len() >= self.slow_after {
                slot = account.next_slot.map_or(now, |next| next.max(now));
                delay = slot - now;
                if delay > self.max_delay {
                    return Err(delay - self.max_delay);
                }
            }
        }

        let full = state.pairs.len() >= self.max_keys
            || state.addresses.len() >= self.max_keys
            || state.accounts.len() >= self.max_keys;
        if full {
            self.sweep(state, now);
        }
        push(
            &mut state.pairs,
            pair_key,
            self.max_per_pair,
            self.max_keys,
            now,
        );
        push(
            &mut state.addresses,
            address,
            self.max_per_address,
            self.max_keys,
            now,
        );
        make_room(&mut state.accounts, email, self.max_keys, |a| {
            a.failures.back().copied()
        });
        let account = state.accounts.entry(email.to_owned()).or_default();
        account.failures.push_back(now);
        while account.failures.len() > self.slow_after {
            account.failures.pop_front();
        }
        account.next_slot = Some(slot + self.interval);
        Ok(Attempt {
            throttle: self,
            email: email.to_owned(),
            address,
            at: now,
            delay,
            resolved: false,
        })
    }

    fn release(&self, email: &str, address: IpAddr, at: Instant, success: bool) {
        let mut state = self.state.lock().expect("throttle lock");
        let pair_key = (email.to_owned(), address);
        if success {
            state.pairs.remove(&pair_key);
        } else if let Some(times) = state.pairs.get_mut(&pair_key) {
            remove_one(times, at);
        }
        if let Some(times) = state.addresses.get_mut(&address) {
            remove_one(times, at);
        }
        if let Some(account) = state.accounts.get_mut(email) {
            remove_one(&mut account.failures, at);
        }
    }

    /// Keys currently remembered, per kind (pairs, addresses, emails).
    pub fn tracked(&self) -> (usize, usize, usize) {
        let state = self.state.lock().expect("throttle lock");
        (
            state.pairs.len(),
            state.addresses.len(),
            state.accounts.len(),
        )
    }

    fn sweep(&self, state: &mut State, now: Instant) {
        let window = self.window;
        let fresh = |last: Option<&Instant>| last.is_some_and(|t| now.duration_since(*t) < window);
        state.pairs.retain(|_, times| fresh(times.back()));
        state.addresses.retain(|_, times| fresh(times.back()));
        state.accounts.retain(|_, account| {
            fresh(account.failures.back()) || account.next_slot.is_some_and(|slot| slot > now)
        });
        state.last_sweep = now;
    }
}

fn remove_one(times: &mut VecDeque<Instant>, at: Instant) {
    if let Some(index) = times.iter().rposition(|t| *t == at) {
        times.remove(index);
    }
}

fn expire(times: &mut VecDeque<Instant>, window: Duration, now: Instant) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        times.pop_front();
    }
}

fn blocked_for(
    times: Option<&mut VecDeque<Instant>>,
    max: usize,
    window: Duration,
    now: Instant,
) -> Option<Duration> {
    let times = times?;
    expire(times, window, now);
    if times.len() < max {
        return None;
    }
    let oldest = *times.front()?;
    Some(window.saturating_sub(now.duration_since(oldest)))
}

/// When `map` is full and `key` is new, forgets the key whose last activity
/// is the oldest (expired keys were swept before).
fn make_room<K: Eq + Hash + Clone + std::borrow::Borrow<Q>, Q: Eq + Hash + ?Sized, V>(
    map: &mut HashMap<K, V>,
    key: &Q,
    max_keys: usize,
    last: impl Fn(&V) -> Option<Instant>,
) {
    if map.len() < max_keys || map.contains_key(key) {
        return;
    }
    let stalest = map
        .iter()
        .min_by_key(|(_, v)| last(v))
        .map(|(k, _)| k.clone());
    if let Some(stalest) = stalest {
        tracing::warn!(max_keys, "login throttle full: forgetting the stalest key");
        map.remove::<K>(&stalest);
    }
}

fn push<K: Eq + Hash + Clone>(
    map: &mut HashMap<K, VecDeque<Instant>>,
    key: K,
    max: usize,
    max_keys: usize,
    now: Instant,
) {
    make_room(map, &key, max_keys, |times| times.back().copied());
    let times = map.entry(key).or_default();
    times.push_back(now);
    while times.len() > max {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(pair: usize, address: usize, slow_after: usize) -> LoginThrottle {
        LoginThrottle::new(&ThrottleConfig {
            window: Duration::from_secs(60),
            max_failures_per_email_and_address: pair,
            max_failures_per_address: address,
            slow_down_after_failures_per_email: slow_after,
            slow_down_interval: Duration::from_secs(1),
            max_delay: Duration::from_millis(2_500),
            max_tracked_keys: 3,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_pair_is_blocked_after_its_failures_and_reset_by_a_success() {
        let t = throttle(2, 100, 100);
        let a = ip("10.0.0.1");
        t.reserve("a@x.io", a).unwrap().failed();
        t.reserve("a@x.io", a).unwrap().failed();
        let wait = t.reserve("a@x.io", a).err().unwrap();
        assert!(wait > Duration::from_secs(55) && wait <= Duration::from_secs(60));
        // Another address, same email: not blocked.
        t.reserve("a@x.io", ip("10.0.0.2")).unwrap().succeeded();
        let t = throttle(2, 100, 100);
        t.reserve("a@x.io", a).unwrap().failed();
        t.reserve("a@x.io", a).unwrap().succeeded();
        t.reserve("a@x.io", a).unwrap().failed();
        assert!(t.reserve("a@x.io", a).is_ok(), "the success reset the pair");
    }

    #[test]
    fn reservations_count_before_they_resolve_and_unresolved_ones_are_undone() {
        let t = throttle(2, 100, 100);
        let a = ip("10.0.0.1");
        let first = t.reserve("a@x.io", a).unwrap();
        let second = t.reserve("a@x.io", a).unwrap();
        assert!(
            t.reserve("a@x.io", a).is_err(),
            "two in flight use the budget"
        );
        drop(first);
        second.failed();
        assert!(t.reserve("a@x.io", a).is_ok());
    }

    #[test]
    fn an_email_over_its_soft_limit_gets_spaced_slots() {
        let t = throttle(100, 100, 2);
        for i in 0..2 {
            t.reserve("v@x.io", ip(&format!("10.0.1.{i}")))
                .unwrap()
                .failed();
        }
        let a = t.reserve("v@x.io", ip("10.0.2.1")).unwrap();
        let b = t.reserve("v@x.io", ip("10.0.2.2")).unwrap();
        assert!(a.delay > Duration::from_millis(900), "{:?}", a.delay);
        assert!(b.delay > a.delay + Duration::from_millis(900));
        // Past max_delay: refused with the time until a slot is near enough.
        assert!(t.reserve("v@x.io", ip("10.0.2.3")).is_err());
    }

    #[test]
    fn keys_are_bounded() {
        let t = throttle(5, 5, 5);
        for i in 0..50 {
            t.reserve(&format!("u{i}@x.io"), ip(&format!("10.1.0.{i}")))
                .unwrap()
                .failed();
        }
        let (pairs, addresses, accounts) = t.tracked();
        assert!(pairs <= 3 && addresses <= 3 && accounts <= 3);
        assert_eq!(email_key(&"É".repeat(1000)).len(), 256);
    }
}

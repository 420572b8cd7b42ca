//! The console sign-in's brake on credential guessing: per client address, at most
//! [`MAX_FAILURES`] failed sign-ins in any [`WINDOW`]; past that, every sign-in from that
//! address (right or wrong credential) is refused with 429 `RESOURCE_EXHAUSTED` and a
//! `Retry-After` saying when the oldest failure leaves the window. A success does not reset
//! the count (else one known credential would unlock guessing for another).
//!
//! Addresses are IPv4 addresses or IPv6 /64 prefixes (one host usually holds a whole /64).
//! Memory is bounded: at most [`MAX_CLIENTS`] addresses are tracked, the stalest dropped
//! first. The limit sees the connection's address: behind a reverse proxy every client
//! shares the proxy's.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failed sign-ins allowed per client address within [`WINDOW`].
pub const MAX_FAILURES: usize = 10;
/// The sliding window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
const MAX_CLIENTS: usize = 10_000;

/// A client's sign-ins are refused for this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "too many failed sign-ins from this address ({MAX_FAILURES} in {} s); try again in {retry_after_seconds} s",
    WINDOW.as_secs()
)]
pub struct TooManyFailures {
    pub retry_after_seconds: u64,
}

/// Failed sign-ins per client address. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct SignInLimiter {
    failures: Arc<Mutex<HashMap<IpAddr, VecDeque<Instant>>>>,
}

/// The key an address is counted under: itself for IPv4, its /64 for IPv6.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

impl SignInLimiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `client` may try to sign in at `now`.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), TooManyFailures> {
        let mut failures = self.lock();
        let Some(times) = failures.get_mut(&client_key(client)) else { return Ok(()) };
        while times.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            times.pop_front();
        }
        if times.len() < MAX_FAILURES {
            return Ok(());
        }
        let oldest = times[times.len() - MAX_FAILURES];
        let wait = WINDOW.saturating_sub(now.duration_since(oldest));
        Err(TooManyFailures { retry_after_seconds: wait.as_secs() + u64::from(wait.subsec_nanos() > 0) })
    }

    /// Counts one failed sign-in from `client` at `now`.
    pub fn failed(&self, client: IpAddr, now: Instant) {
        let mut failures = self.lock();
        let key = client_key(client);
        if !failures.contains_key(&key) && failures.len() >= MAX_CLIENTS {
            failures.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
            if failures.len() >= MAX_CLIENTS
                && let Some(stalest) = failures.iter().min_by_key(|(_, times)| times.back().copied()).map(|(k, _)| *k)
            {
                failures.remove(&stalest);
            }
        }
        let times = failures.entry(key).or_default();
        times.push_back(now);
        while times.len() > MAX_FAILURES {
            times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_a_minute_then_refused_until_the_oldest_ages_out() {
        let limiter = SignInLimiter::default();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let start = Instant::now();
        for i in 0..MAX_FAILURES as u64 {
            assert_eq!(limiter.check(client, start + Duration::from_secs(i)), Ok(()));
            limiter.failed(client, start + Duration::from_secs(i));
        }
        let refused = limiter.check(client, start + Duration::from_secs(10)).unwrap_err();
        assert_eq!(refused.retry_after_seconds, 50, "the first failure leaves the window at 60 s");
        assert_eq!(limiter.check(other, start + Duration::from_secs(10)), Ok(()), "per address");
        assert!(limiter.check(client, start + Duration::from_millis(59_500)).is_err());
        assert_eq!(limiter.check(client, start + Duration::from_secs(60)), Ok(()), "one failure aged out");
        limiter.failed(client, start + Duration::from_secs(60));
        assert_eq!(limiter.check(client, start + Duration::from_secs(60)).unwrap_err().retry_after_seconds, 1);
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_memory_is_bounded() {
        let limiter = SignInLimiter::default();
        let now = Instant::now();
        for i in 0..MAX_FAILURES {
            limiter.failed(format!("2001:db8:1:2::{i:x}").parse().unwrap(), now);
        }
        assert!(limiter.check("2001:db8:1:2:ffff::1".parse().unwrap(), now).is_err(), "same /64");
        assert_eq!(limiter.check("2001:db8:1:3::1".parse().unwrap(), now), Ok(()));
        for i in 0..(u32::try_from(MAX_CLIENTS).unwrap() + 100) {
            limiter.failed(IpAddr::V4(i.into()), now);
        }
        assert!(limiter.lock().len() <= MAX_CLIENTS);
    }
}

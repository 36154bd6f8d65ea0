//! Local mode: one governor keyed GCRA limiter per policy, in this process.
//!
//! Keys are 64-bit hashes of the bucket key (keyed with a per-process random seed, so clients
//! cannot aim collisions), which keeps an entry at a few dozen bytes whatever the key's length.
//! The number of keys is bounded two ways: a periodic `retain_recent` drops keys whose state
//! equals a fresh bucket (see [`LocalPolicy::housekeeping`]), and a cap (`max_keys`), checked
//! every few requests, first evicts idle keys and, when the policy still holds too many, resets
//! it to empty. A reset forgives every client of that policy once; it is counted and logged,
//! and only a flood of more distinct clients than `max_keys` within one emission interval can
//! cause it.

use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::RateLimiter;

use super::config::Quota;
use crate::metrics;

/// A hasher that passes an already well-mixed `u64` through.
#[derive(Default, Clone, Copy)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for our keys; fold anything else in for completeness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Store = DashMapStateStore<u64, BuildHasherDefault<PassThrough>>;
type Keyed = RateLimiter<u64, Store, DefaultClock, StateInformationMiddleware>;

/// The outcome of one policy's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; `remaining` more requests fit right now, the bucket is full again after `reset`.
    Admit {
        /// Requests that would still be admitted now.
        remaining: u32,
        /// Time until the bucket is full again.
        reset: Duration,
    },
    /// Rejected; the next request fits after `wait`, the bucket is full after `reset`.
    Reject {
        /// Time until one request fits again.
        wait: Duration,
        /// Time until the bucket is full again.
        reset: Duration,
    },
}

/// One policy's local state.
pub struct LocalPolicy {
    quota: Quota,
    limiter: ArcSwap<Keyed>,
    seed: std::collections::hash_map::RandomState,
    checks: AtomicU32,
    check_every: u32,
    max_keys: usize,
    /// This policy's share of `omsgate_rate_limit_keys`.
    counted: KeyGauge,
    name: String,
}

impl LocalPolicy {
    /// An empty limiter for `quota`, holding at most `max_keys` keys.
    pub fn new(name: &str, quota: Quota, max_keys: usize) -> LocalPolicy {
        LocalPolicy {
            quota,
            limiter: ArcSwap::from_pointee(fresh(quota)),
            seed: Default::default(),
            checks: AtomicU32::new(0),
            // Checking the key count costs a pass over the map's shards: do it every few
            // requests, early enough that the cap holds in between.
            check_every: (max_keys / 8).clamp(1, 64) as u32,
            max_keys,
            counted: KeyGauge::default(),
            name: name.to_string(),
        }
    }

    /// Checks (and, if admitted, takes) one request for the bucket `key`.
    pub fn check(&self, key: &str) -> Verdict {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.check_every)
        {
            self.enforce_cap();
        }
        let hash = self.seed.hash_one(key);
        let limiter = self.limiter.load();
        let t = self.quota.interval();
        let burst = self.quota.burst.get();
        match limiter.check_key(&hash) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Verdict::Admit {
                    remaining,
                    reset: t * burst.saturating_sub(remaining),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                Verdict::Reject {
                    wait,
                    reset: wait + t * (burst - 1),
                }
            }
        }
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.limiter.load().len()
    }

    /// Moves this policy's share of `omsgate_rate_limit_keys` to the keys held now; returns them.
    pub fn refresh_gauge(&self) -> usize {
        let len = self.keys();
        self.counted.set(len);
        len
    }

    /// Drops keys whose state equals a fresh bucket, returns memory, refreshes the key gauge.
    pub fn housekeeping(&self) {
        let limiter = self.limiter.load();
        limiter.retain_recent();
        limiter.shrink_to_fit();
        self.counted.set(limiter.len());
    }

    fn enforce_cap(&self) {
        let limiter = self.limiter.load_full();
        let room = |len: usize| len + self.check_every as usize <= self.max_keys;
        let mut len = limiter.len();
        if !room(len) {
            limiter.retain_recent();
            len = limiter.len();
            if !room(len) {
                self.limiter.store(Arc::new(fresh(self.quota)));
                metrics::RATE_LIMIT_KEY_RESETS.inc();
                tracing::warn!(
                    policy = %self.name,
                    keys = len,
                    max_keys = self.max_keys,
                    "Rate-limit policy holds too many active keys; resetting its state."
                );
                len = 0;
            }
        }
        self.counted.set(len);
    }
}

/// One policy's share of the process-wide `omsgate_rate_limit_keys` gauge; dropping it (a
/// reload replaced the policy) takes the share out again.
#[derive(Default)]
pub struct KeyGauge(AtomicUsize);

impl KeyGauge {
    /// Moves this share of the gauge to `len`.
    pub fn set(&self, len: usize) {
        let before = self.0.swap(len, Ordering::Relaxed);
        metrics::RATE_LIMIT_KEYS.add(len as i64 - before as i64);
    }
}

impl Drop for KeyGauge {
    fn drop(&mut self) {
        metrics::RATE_LIMIT_KEYS.sub(*self.0.get_mut() as i64);
    }
}

fn fresh(quota: Quota) -> Keyed {
    RateLimiter::dashmap_with_clock_and_hasher(
        quota.governor(),
        DefaultClock::default(),
        BuildHasherDefault::<PassThrough>::default(),
    )
    .with_middleware::<StateInformationMiddleware>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn quota(count: u32, period: Duration, burst: u32) -> Quota {
        Quota {
            count: NonZeroU32::new(count).unwrap(),
            period,
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn burst_then_reject_with_wait() {
        let p = LocalPolicy::new("t", quota(5, Duration::from_secs(1), 5), 1000);
        for i in 0..5 {
            match p.check("a") {
                Verdict::Admit { remaining, .. } => assert_eq!(remaining, 4 - i),
                v => panic!("request {i} rejected: {v:?}"),
            }
        }
        match p.check("a") {
            Verdict::Reject { wait, reset } => {
                assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200));
                assert!(reset > Duration::from_millis(800) && reset <= Duration::from_secs(1));
            }
            v => panic!("sixth admitted: {v:?}"),
        }
        assert!(matches!(p.check("b"), Verdict::Admit { remaining: 4, .. }));
    }

    #[test]
    fn key_cap_holds_under_a_flood() {
        // An hour-long interval: no key becomes idle during the test, so only the cap helps.
        let p = LocalPolicy::new("flood", quota(1, Duration::from_secs(3600), 1), 1000);
        for i in 0..20_000 {
            assert!(matches!(p.check(&format!("k{i}")), Verdict::Admit { .. }));
            assert!(p.keys() <= 1000, "{} keys after {i}", p.keys());
        }
    }
}

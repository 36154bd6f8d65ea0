//! Distributed mode: the GCRA state of every bucket lives in Redis, and each check is one
//! atomic Lua script ([`GCRA_SCRIPT`], sent with `EVALSHA`), so any number of gateway instances
//! share one quota exactly: there is no read-then-write window between instances.
//!
//! All the policies of a request are checked in the same script call, all or nothing: a
//! request rejected by one policy takes nothing from the others. The script reads the clock of
//! Redis (`TIME`), so the instances' clocks do not matter. Each bucket key expires when its
//! state would equal a fresh bucket, so Redis holds only active keys.
//!
//! On a Redis Cluster a script's keys must share a slot: each bucket key carries its bucket as
//! hash tag (`{prefix}{policy}:{BUCKET}`), so the buckets of one request that share a bucket
//! (say a tenant's under two policies) are checked in one call, and the others in one call per
//! tag, concurrently. All or nothing then holds per call; when one call rejects and another
//! admitted, the admitted ones are given their request back ([`REFUND_SCRIPT`]), so a rejected
//! request takes nothing from the other policies except for the moment in between (which can
//! only reject, never admit, more than the quota).
//!
//! The connection ([`crate::redis_topology::Conn`]: standalone, cluster or Sentinel, each
//! reconnecting by itself) is opened as soon as the limiter exists inside Pingora's runtime
//! (`Limiter::connect_early`: at start and on reload), by a background task that retries with
//! backoff until it succeeds.
//! A check never waits longer than `rate_limit.redis_timeout`; on a timeout or an error the
//! caller applies `on_backend_error`.
//!
//! The buckets are in Redis, so this process counts the distinct keys it checked instead
//! ([`SeenKeys`], one per policy): that count is `omsgate_rate_limit_keys` in this mode.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::config::Quota;
use super::local::{KeyGauge, PassThrough, Verdict};
use crate::redis_topology::{Conn, RedisClient, Topology};

/// GCRA over several buckets at once, all or nothing.
///
/// `KEYS[i]` is a bucket; `ARGV[2i-1]` its emission interval and `ARGV[2i]` its tolerance
/// (`(burst - 1) * interval`), both in microseconds. A bucket stores its theoretical arrival
/// time (TAT) in microseconds of Redis time. Returns
/// `{admitted (1|0), index of the rejecting bucket (1-based, 0 if none), wait µs,
///   then per bucket: remaining, µs until full}`.
pub const GCRA_SCRIPT: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local n = #KEYS
local tats = {}
local admitted = 1
local rejecting = 0
local longest = 0
for i = 1, n do
  local t = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local stored = redis.call('GET', KEYS[i])
  local tat = now
  if stored then tat = math.max(tonumber(stored), now) end
  tats[i] = tat
  if now < tat - tau then
    admitted = 0
    if tat - tau - now > longest then
      longest = tat - tau - now
      rejecting = i
    end
  end
end
local out = {admitted, rejecting, math.ceil(longest)}
for i = 1, n do
  local t = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local tat = tats[i]
  if admitted == 1 then
    tat = tat + t
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
  end
  local remaining = math.floor(math.min(now + tau + t - tat, tau + t) / t)
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(tat - now)
end
return out
"#;

/// Gives back one request to each bucket of a call that admitted while another call of the same
/// request (another hash tag, on a cluster) rejected. `KEYS[i]` a bucket, `ARGV[i]` its emission
/// interval in µs. A bucket whose TAT falls to now or earlier is deleted (a fresh bucket).
pub const REFUND_SCRIPT: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
for i = 1, #KEYS do
  local stored = redis.call('GET', KEYS[i])
  if stored then
    local tat = tonumber(stored) - tonumber(ARGV[i])
    if tat <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
    end
  end
end
return 1
"#;

/// Why a distributed check did not answer.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No answer within `rate_limit.redis_timeout`.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error or the connection failed.
    #[error("Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// The script's answer had an unexpected shape.
    #[error("unexpected answer from the rate-limit script: {0:?}")]
    Malformed(Vec<i64>),
}

/// The shared Redis state of every policy.
pub struct Distributed {
    client: RedisClient,
    timeout: Duration,
    prefix: String,
    script: redis::Script,
    refund: redis::Script,
    conn: watch::Sender<Option<Conn>>,
    connecting: AtomicBool,
    last_warning: AtomicU64,
    started: Instant,
}

impl Distributed {
    /// A backend for `topology`; opens nothing until [`start_connecting`](Self::start_connecting)
    /// or the first check.
    pub fn new(
        topology: &Topology,
        timeout: Duration,
        prefix: &str,
        trust: &crate::tls::TlsConfig,
    ) -> Result<Arc<Distributed>, BackendError> {
        Ok(Arc::new(Distributed {
            client: RedisClient::new(topology, trust, timeout)?,
            timeout,
            prefix: prefix.to_string(),
            script: redis::Script::new(GCRA_SCRIPT),
            refund: redis::Script::new(REFUND_SCRIPT),
            conn: watch::Sender::new(None),
            connecting: AtomicBool::new(false),
            last_warning: AtomicU64::new(0),
            started: Instant::now(),
        }))
    }

    /// The Redis key of a bucket, `{prefix}{policy}:{BUCKET}`: the bucket is the hash tag.
    pub fn redis_key(&self, policy: &str, bucket: &str) -> String {
        format!("{}{policy}:{{{bucket}}}", self.prefix)
    }

    /// Checks one request against every `(redis key, quota)` bucket, atomically; admitted only
    /// if all admit, and then every bucket takes one request.
    pub async fn check(
        self: &Arc<Self>,
        buckets: &[(String, Quota)],
    ) -> Result<Vec<Verdict>, BackendError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let groups = if self.client.is_cluster() {
            let keys: Vec<&str> = buckets.iter().map(|(k, _)| k.as_str()).collect();
            crate::redis_topology::group_by_tag(&keys)
        } else {
            vec![(0..buckets.len()).collect()]
        };
        let answers = tokio::time::timeout_at(deadline, async {
            let conn = self.connection().await;
            let calls = groups.iter().map(|group| {
                let mut conn = conn.clone();
                let mut call = self.script.prepare_invoke();
                for &i in group {
                    let (key, quota) = &buckets[i];
                    let t = quota.interval().as_secs_f64() * 1e6;
                    let tau = t * f64::from(quota.burst.get() - 1);
                    call.key(key).arg(t).arg(tau);
                }
                async move { call.invoke_async::<Vec<i64>>(&mut conn).await }
            });
            let answers = futures::future::join_all(calls).await;
            if answers.len() > 1 {
                self.refund_partial(&conn, buckets, &groups, &answers).await;
            }
            answers.into_iter().collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|_| BackendError::Timeout(self.timeout))?
        .inspect_err(|e| crate::redis_topology::note_error("rate_limit", e))?;
        // The answer of each bucket, with the call's verdict and rejecting bucket (as an index
        // into `buckets`).
        let micros = |v: i64| Duration::from_micros(v.max(0) as u64);
        let mut out = vec![None; buckets.len()];
        let mut admitted = true;
        let mut rejecting = (0i64, usize::MAX);
        for (group, answer) in groups.iter().zip(&answers) {
            if answer.len() != 3 + 2 * group.len() {
                return Err(BackendError::Malformed(answer.clone()));
            }
            if answer[0] != 1 {
                admitted = false;
                let r = answer[1] as usize;
                if r >= 1 && r <= group.len() && answer[2] >= rejecting.0 {
                    rejecting = (answer[2], group[r - 1]);
                }
            }
            for (j, &i) in group.iter().enumerate() {
                let remaining = answer[3 + 2 * j].clamp(0, u32::MAX as i64) as u32;
                out[i] = Some((remaining, micros(answer[4 + 2 * j])));
            }
        }
        Ok(out
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let (remaining, reset) = v.unwrap_or((0, Duration::ZERO));
                if admitted {
                    Verdict::Admit { remaining, reset }
                } else if i == rejecting.1 {
                    Verdict::Reject {
                        wait: micros(rejecting.0),
                        reset,
                    }
                } else {
                    // Not charged (or given back): the request was rejected by another policy.
                    Verdict::Admit { remaining, reset }
                }
            })
            .collect())
    }

    /// After calls over several hash tags, gives the request back to the buckets of the calls
    /// that admitted it when another call rejected it (or failed).
    async fn refund_partial(
        &self,
        conn: &Conn,
        buckets: &[(String, Quota)],
        groups: &[Vec<usize>],
        answers: &[redis::RedisResult<Vec<i64>>],
    ) {
        let all_admitted = answers
            .iter()
            .all(|a| matches!(a, Ok(v) if v.first() == Some(&1)));
        if all_admitted {
            return;
        }
        let refunds = groups.iter().zip(answers).filter_map(|(group, a)| {
            if !matches!(a, Ok(v) if v.first() == Some(&1)) {
                return None;
            }
            let mut conn = conn.clone();
            let mut call = self.refund.prepare_invoke();
            for &i in group {
                let (key, quota) = &buckets[i];
                call.key(key).arg(quota.interval().as_secs_f64() * 1e6);
            }
            Some(async move { call.invoke_async::<i64>(&mut conn).await })
        });
        for r in futures::future::join_all(refunds).await {
            if let Err(e) = r {
                crate::redis_topology::note_error("rate_limit", &e);
                tracing::debug!(error = %e, "Rate-limit refund failed; the bucket keeps the request.");
            }
        }
    }

    /// The connection, waiting for the first one to be opened.
    async fn connection(self: &Arc<Self>) -> Conn {
        if let Some(c) = self.conn.borrow().as_ref() {
            return c.clone();
        }
        self.start_connecting();
        let mut rx = self.conn.subscribe();
        loop {
            if let Some(c) = rx.borrow_and_update().as_ref() {
                return c.clone();
            }
            // The sender lives in `self`, so `changed` cannot fail while we hold `self`; the
            // caller's deadline bounds the wait.
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Starts (once) the task that opens the connection, retrying with backoff; it ends when
    /// connected or when the backend is dropped (a reload). Nothing outside a runtime.
    pub fn start_connecting(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Distributed> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(this) = weak.upgrade() else { return };
                let connected = this.client.connect().await;
                drop(this);
                match connected {
                    Ok(conn) => {
                        if let Some(this) = weak.upgrade() {
                            tracing::info!(
                                redis = %this.client.describe(),
                                "Rate limiter connected to Redis."
                            );
                            this.conn.send_replace(Some(conn));
                        }
                        return;
                    }
                    Err(e) => {
                        let Some(this) = weak.upgrade() else { return };
                        this.warn(&BackendError::Redis(e));
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// Logs a backend error, at most once every 10 s (every one is counted in the metrics).
    pub fn warn(&self, e: &BackendError) {
        let now = self.started.elapsed().as_secs() + 10;
        let last = self.last_warning.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                redis = %self.client.describe(),
                error = %e,
                "Distributed rate limiter cannot reach Redis; applying on_backend_error."
            );
        } else {
            tracing::debug!(error = %e, "Distributed rate-limit check failed.");
        }
    }
}

// === SeenKeys ===

/// The distinct bucket keys of one policy that this process checked within the policy's
/// period (the `w` of its `RateLimit-Policy`), at most `max_keys` of them: in distributed mode
/// this process's share of `omsgate_rate_limit_keys`, so that a flood of distinct keys (for
/// example random `header:NAME` values) shows on every instance it reaches.
///
/// Keys enter as 64-bit hashes keyed with a per-process seed, as in local mode. A key already
/// in the set costs one hash and one lookup (which also keeps it for another period); a new
/// one an insert. The count is brought up to date by the housekeeping task and when the
/// metrics are read ([`SeenKeys::refresh`]).
pub struct SeenKeys {
    keys: moka::sync::Cache<u64, (), BuildHasherDefault<PassThrough>>,
    seed: RandomState,
    period: Duration,
    max_keys: usize,
    counted: KeyGauge,
}

impl SeenKeys {
    /// An empty set forgetting a key `period` after it was last checked, holding at most
    /// `max_keys`.
    pub fn new(period: Duration, max_keys: usize) -> SeenKeys {
        SeenKeys {
            keys: moka::sync::Cache::builder()
                .max_capacity(max_keys as u64)
                .time_to_idle(period)
                .build_with_hasher(BuildHasherDefault::default()),
            seed: RandomState::new(),
            period,
            max_keys,
            counted: KeyGauge::default(),
        }
    }

    /// Whether this set counts the same thing as one for `period` and `max_keys` (a reload
    /// keeps it then).
    pub fn counts_like(&self, period: Duration, max_keys: usize) -> bool {
        self.period == period && self.max_keys == max_keys
    }

    /// Records a check of bucket `key`.
    pub fn saw(&self, key: &str) {
        let hash = self.seed.hash_one(key);
        if self.keys.get(&hash).is_none() {
            self.keys.insert(hash, ());
        }
    }

    /// Applies the pending inserts and expiries, and moves this policy's share of the gauge to
    /// the count; returns the count.
    pub fn refresh(&self) -> usize {
        self.keys.run_pending_tasks();
        let len = usize::try_from(self.keys.entry_count()).unwrap_or(usize::MAX);
        self.counted.set(len);
        len
    }
}

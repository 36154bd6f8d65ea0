//! Invalidation by generations: every cache key contains the current generation number of the
//! global epoch, of its namespace (tenant, or `*` for public entries) and of every resource/tag
//! of its route. A write bumps the generations it touches, so every dependent key becomes
//! unreachable at once, in O(1) per resource and without scanning; the old entries age out.
//!
//! With Redis, generations are Redis strings (`{prefix}gen:{NAMESPACE}...`,
//! `{prefix}epoch:{!}`) shared by all instances, set by one script per invalidation and hash tag
//! to a fresh value of that tag's sequence (`{prefix}genseq:{TAG}`, seeded from the clock, so
//! values never repeat, even after Redis loses its data), which also publishes the touched keys
//! on `{prefix}invalidate` (a `PUBLISH` reaches every node of a Redis Cluster). Each instance caches generations in memory for
//! `cache.generation_cache_ttl`; a pub/sub message drops them at once, and on (re)subscribing an
//! instance drops all of them, since it may have missed messages. So another instance sees an
//! invalidation within the pub/sub latency, and never later than `generation_cache_ttl`.
//!
//! Generation keys expire `retention` after their last bump (longer than any entry lives), so
//! Redis does not keep one key per invoice ever written; the epoch never expires.
//!
//! Without Redis, generations live in a bounded map in this process.
//!
//! Besides the configured resources, every entry depends on the generation of its target URI in
//! its namespace (`{prefix}uri:{namespace}:{path}`, see [`Generations::uri_key`]): a successful
//! unsafe request bumps it for its own path and the same-origin `Location`/`Content-Location`
//! of its answer (RFC 9111 §4.4), so a write invalidates what was read at its URI even when no
//! route lists it in `invalidates`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use parking_lot::Mutex;

use super::backend::Redis;
use super::key;
use crate::metrics;

/// Generations kept in memory (per instance) before the least recently used are re-read.
const CACHED_GENERATIONS: u64 = 100_000;
/// Generations kept by the in-memory mode before it starts a new epoch instead.
const LOCAL_GENERATIONS: usize = 100_000;
/// Deadline of an invalidation (admin purge); writes use `redis_timeout`.
pub const PURGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where generations are kept.
pub struct Generations {
    prefix: String,
    epoch_key: String,
    channel: String,
    /// Random id of this process, to skip its own pub/sub messages.
    instance: u64,
    redis: Option<&'static Redis>,
    /// Generations read from Redis, for `generation_cache_ttl`.
    cached: moka::sync::Cache<String, u64>,
    /// Bumped by every invalidation; a read started before one does not fill `cached`.
    version: AtomicU64,
    retention: Duration,
    local: Mutex<Local>,
}

#[derive(Default)]
struct Local {
    seq: u64,
    epoch: u64,
    map: HashMap<String, u64>,
}

impl std::fmt::Debug for Generations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generations")
            .field("prefix", &self.prefix)
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

/// What an invalidation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bumped {
    /// The generations were bumped (and other instances told).
    Done,
    /// Redis failed or was too slow; nothing was invalidated.
    Failed,
}

impl Generations {
    /// Generations under `prefix`, in Redis when given.
    pub fn new(
        prefix: &str,
        redis: Option<&'static Redis>,
        cache_ttl: Duration,
        retention: Duration,
    ) -> Generations {
        Generations {
            prefix: prefix.to_string(),
            epoch_key: key::epoch_key(prefix),
            channel: format!("{prefix}invalidate"),
            instance: rand::random(),
            redis,
            cached: moka::sync::Cache::builder()
                .max_capacity(CACHED_GENERATIONS)
                .time_to_live(cache_ttl)
                .build(),
            version: AtomicU64::new(0),
            retention,
            local: Mutex::new(Local::default()),
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of the epoch (the first key of every lookup).
    pub fn epoch_key(&self) -> &str {
        &self.epoch_key
    }

    /// The generation key of the target URI `path` in `namespace`. It lives apart from the
    /// `gen:` keys, so that no configured resource name can collide with it.
    pub fn uri_key(&self, namespace: &str, path: &str) -> String {
        format!("{}uri:{{{namespace}}}:{}", self.prefix, key::escape(path))
    }

    /// The current generation of each key (`None` when Redis cannot say in time).
    pub async fn current(&'static self, keys: &[String]) -> Option<Vec<u64>> {
        let Some(redis) = self.redis else {
            let local = self.local.lock();
            return Some(
                keys.iter()
                    .map(|k| {
                        if *k == self.epoch_key {
                            local.epoch
                        } else {
                            local.map.get(k).copied().unwrap_or(0)
                        }
                    })
                    .collect(),
            );
        };
        let mut out = vec![0u64; keys.len()];
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.cached.get(k) {
                Some(v) => out[i] = v,
                None => missing.push(i),
            }
        }
        if missing.is_empty() {
            return Some(out);
        }
        let version = self.version.load(Ordering::Acquire);
        let names: Vec<String> = missing.iter().map(|i| keys[*i].clone()).collect();
        let values: Vec<Option<u64>> = redis
            .call("generations", |mut c| {
                let names = names.clone();
                async move { redis::cmd("MGET").arg(&names).query_async(&mut c).await }
            })
            .await?;
        if values.len() != names.len() {
            return None;
        }
        for ((i, name), value) in missing.iter().zip(&names).zip(values) {
            let v = match value {
                Some(v) => v,
                // A missing epoch means a new or emptied Redis: start a fresh, never-seen epoch
                // so that entries keyed under a lost one stay unreachable.
                None if *name == self.epoch_key => self.init_epoch(redis).await?,
                None => 0,
            };
            out[*i] = v;
        }
        if self.version.load(Ordering::Acquire) == version {
            for (name, i) in names.into_iter().zip(&missing) {
                self.cached.insert(name, out[*i]);
            }
        }
        Some(out)
    }

    async fn init_epoch(&'static self, redis: &'static Redis) -> Option<u64> {
        let key = self.epoch_key.clone();
        redis
            .call("epoch", |mut c| async move {
                INIT_EPOCH
                    .key(&key)
                    .arg(clock_seed())
                    .invoke_async(&mut c)
                    .await
            })
            .await
    }

    /// Bumps the generation of each key (one round trip with Redis) and tells the other
    /// instances; `all` also clears every instance's L1. Waits at most `deadline`.
    pub async fn bump(&'static self, keys: &[String], all: bool, deadline: Duration) -> Bumped {
        let Some(redis) = self.redis else {
            let mut local = self.local.lock();
            local.seq += 1;
            let seq = local.seq;
            for k in keys {
                if *k == self.epoch_key {
                    local.epoch = seq;
                } else {
                    local.map.insert(k.clone(), seq);
                }
            }
            if local.map.len() > LOCAL_GENERATIONS {
                // Forgetting a generation would resurrect entries keyed under older ones; a new
                // epoch makes every entry unreachable instead.
                local.map.clear();
                local.epoch = seq;
            }
            return Bumped::Done;
        };
        // One script call per hash tag (a namespace, or the epoch's): each call's keys, and the
        // sequence numbering them, share one Redis Cluster slot.
        let calls = crate::redis_topology::group_by_tag(keys)
            .into_iter()
            .map(|group| {
                let first = &keys[group[0]];
                let seq_key = match crate::redis_topology::hash_tag(first) {
                    Some(tag) => key::seq_key(&self.prefix, tag),
                    // Untagged (not written by this version): the key itself as the tag hashes
                    // to the key's own slot.
                    None => format!("{}genseq:{{{first}}}", self.prefix),
                };
                let mut message = self.instance.to_string();
                let mut script = BUMP.prepare_invoke();
                script.key(&seq_key);
                for i in &group {
                    message.push('\n');
                    message.push_str(&keys[*i]);
                    script.key(&keys[*i]);
                }
                if all {
                    message.push_str("\n*");
                }
                script
                    .arg(self.retention.as_millis() as u64)
                    .arg(&self.channel)
                    .arg(&message)
                    .arg(clock_seed())
                    .arg(&self.epoch_key);
                redis.call_within("invalidate", deadline, |mut c| async move {
                    script.invoke_async::<u64>(&mut c).await
                })
            });
        let done: Vec<Option<u64>> = futures::future::join_all(calls).await;
        // Whatever happened, do not trust what this instance remembers about these keys.
        self.forget(keys, all);
        if done.iter().all(Option::is_some) {
            Bumped::Done
        } else {
            Bumped::Failed
        }
    }

    fn forget(&self, keys: &[String], all: bool) {
        self.version.fetch_add(1, Ordering::AcqRel);
        if all {
            self.cached.invalidate_all();
        } else {
            for k in keys {
                self.cached.invalidate(k);
            }
        }
    }

    /// Drops every cached generation (after missing pub/sub messages).
    pub fn forget_all(&self) {
        self.forget(&[], true);
    }

    /// Applies an invalidation message from another instance; returns whether it asked to
    /// clear everything (the caller then clears its L1).
    pub fn on_message(&self, payload: &str) -> Option<bool> {
        let mut lines = payload.lines();
        let from: u64 = lines.next()?.parse().ok()?;
        if from == self.instance {
            return None;
        }
        let keys: Vec<String> = lines.map(str::to_string).collect();
        let all = keys.iter().any(|k| k == "*");
        self.forget(&keys, all);
        metrics::CACHE_INVALIDATIONS
            .with_label_values(&["remote"])
            .inc();
        Some(all)
    }

    /// Keeps a subscription to the invalidation channel until shutdown, reconnecting with
    /// backoff; `clear_l1` runs for messages that invalidate everything.
    pub async fn listen(
        &'static self,
        clear_l1: impl Fn() + Send + Sync,
        mut shutdown: pingora::server::ShutdownWatch,
    ) {
        let Some(redis) = self.redis else { return };
        redis.connect();
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribe = async {
                let mut ps = redis.client().pubsub().await?;
                ps.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            match tokio::time::timeout(Duration::from_secs(2), subscribe).await {
                Ok(Ok(ps)) => {
                    backoff = Duration::from_millis(100);
                    self.forget_all();
                    tracing::info!(channel = %self.channel, "Cache subscribed to invalidations.");
                    let mut stream = ps.into_on_message();
                    loop {
                        tokio::select! {
                            msg = stream.next() => match msg {
                                Some(m) => {
                                    let payload: String = m.get_payload().unwrap_or_default();
                                    if self.on_message(&payload) == Some(true) {
                                        clear_l1();
                                    }
                                }
                                None => break,
                            },
                            _ = shutdown.changed() => return,
                        }
                    }
                    self.forget_all();
                    tracing::warn!(channel = %self.channel, "Cache invalidation subscription lost; resubscribing.");
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "Cache cannot subscribe to invalidations.");
                }
                Err(_) => {
                    tracing::warn!(
                        retry_ms = backoff.as_millis() as u64,
                        "Cache subscribing to invalidations timed out."
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Microseconds since the Unix epoch: the seed of sequences that must never repeat.
fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

/// KEYS[1] the sequence of the keys' hash tag, KEYS[2..] the generations to bump (all in the
/// tag's slot). ARGV: retention ms, channel,
/// message, clock seed, epoch key (which never expires).
static BUMP: once_cell::sync::Lazy<redis::Script> = once_cell::sync::Lazy::new(|| {
    redis::Script::new(
        r"if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[4]) end
          local seq = redis.call('INCR', KEYS[1])
          for i = 2, #KEYS do
            if KEYS[i] == ARGV[5] then
              redis.call('SET', KEYS[i], seq)
            else
              redis.call('SET', KEYS[i], seq, 'PX', ARGV[1])
            end
          end
          redis.call('PUBLISH', ARGV[2], ARGV[3])
          return seq",
    )
});

/// Sets the epoch to the clock seed unless it exists; returns it.
static INIT_EPOCH: once_cell::sync::Lazy<redis::Script> = once_cell::sync::Lazy::new(|| {
    redis::Script::new(
        r"redis.call('SET', KEYS[1], ARGV[1], 'NX')
          return tonumber(redis.call('GET', KEYS[1]))",
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(g: Generations) -> &'static Generations {
        Box::leak(Box::new(g))
    }

    #[tokio::test]
    async fn local_generations_bump() {
        let g = leak(Generations::new(
            "t:",
            None,
            Duration::from_secs(1),
            Duration::from_secs(60),
        ));
        let keys = vec![
            g.epoch_key().to_string(),
            "t:gen:a:x".into(),
            "t:gen:a:y".into(),
        ];
        let before = g.current(&keys).await.unwrap();
        assert_eq!(
            g.bump(&keys[1..2], false, PURGE_TIMEOUT).await,
            Bumped::Done
        );
        let after = g.current(&keys).await.unwrap();
        assert_eq!(before[0], after[0]);
        assert_ne!(before[1], after[1]);
        assert_eq!(before[2], after[2]);
        g.bump(&keys[..1], true, PURGE_TIMEOUT).await;
        assert_ne!(g.current(&keys).await.unwrap()[0], after[0]);
    }

    #[tokio::test]
    async fn uri_generations_are_per_path_and_namespace() {
        let g = leak(Generations::new(
            "t:",
            None,
            Duration::from_secs(1),
            Duration::from_secs(60),
        ));
        let a = g.uri_key("acme", "/api/v1/invoices");
        assert_eq!(a, "t:uri:{acme}:%2Fapi%2Fv1%2Finvoices");
        assert_ne!(a, g.uri_key("globex", "/api/v1/invoices"));
        assert_ne!(a, g.uri_key("acme", "/api/v1/invoices/1"));
        // A resource named like a URI key is a different key.
        assert_ne!(
            a,
            key::resource_key("t:", "acme", "uri:%2Fapi%2Fv1%2Finvoices")
        );
        let keys = vec![a.clone(), g.uri_key("acme", "/api/v1/invoices/1")];
        let before = g.current(&keys).await.unwrap();
        g.bump(&keys[..1], false, PURGE_TIMEOUT).await;
        let after = g.current(&keys).await.unwrap();
        assert_ne!(before[0], after[0]);
        assert_eq!(before[1], after[1]);
    }

    #[test]
    fn own_messages_are_skipped() {
        let g = Generations::new("t:", None, Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(g.on_message(&format!("{}\nk", g.instance)), None);
        assert_eq!(g.on_message("1\nk"), Some(false));
        assert_eq!(g.on_message("1\nk\n*"), Some(true));
        assert_eq!(g.on_message("garbage"), None);
    }
}

//! The Redis connection of the cache: created lazily inside the runtime, every call under the
//! `cache.redis_timeout` deadline, failing open.
//!
//! A failure or timeout is counted in `omsgate_cache_backend_errors_total{backend="redis"}` and
//! returned as `None`; the caller then treats the request as a miss (or bypass) and never as a
//! client error. After a few failures in a row the circuit opens for a short while, so that a
//! Redis outage costs requests nothing rather than a deadline each; the first call after that
//! probes again. Reconnecting is left to the connection of the deployment
//! ([`crate::redis_topology`]: standalone, cluster or Sentinel).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::metrics;
use crate::redis_topology::{Conn, RedisClient, Topology};

/// Failures in a row that open the circuit.
const OPEN_AFTER: u32 = 3;
/// How long the circuit stays open.
const OPEN_FOR: Duration = Duration::from_millis(250);

/// The cache's Redis handle.
pub struct Redis {
    client: RedisClient,
    timeout: Duration,
    conn: watch::Sender<Option<Conn>>,
    connecting: AtomicBool,
    failures: AtomicU32,
    /// Milliseconds since `started` until which the circuit is open.
    open_until: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("client", &self.client)
            .field("timeout", &self.timeout)
            .field("connected", &self.conn.borrow().is_some())
            .finish()
    }
}

impl Redis {
    /// A handle for `topology` (parsed, not connected: the connection is made on first use).
    /// `rediss://` nodes are verified against `trust`.
    pub fn new(
        topology: &Topology,
        timeout: Duration,
        trust: &crate::tls::TlsConfig,
    ) -> redis::RedisResult<Redis> {
        Ok(Redis {
            client: RedisClient::new(topology, trust, timeout)?,
            timeout,
            conn: watch::Sender::new(None),
            connecting: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// The client, for dedicated connections (pub/sub).
    pub fn client(&self) -> &RedisClient {
        &self.client
    }

    /// Whether a connection has been established (it may be reconnecting).
    pub fn connected(&self) -> bool {
        self.conn.borrow().is_some()
    }

    /// Starts connecting in the background on the current runtime, once.
    pub fn connect(&'static self) {
        if self.conn.borrow().is_some() || self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.client.connect().await {
                    Ok(m) => {
                        tracing::info!(redis = %self.client.describe(), "Cache connected to Redis.");
                        self.conn.send_replace(Some(m));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "Cache cannot connect to Redis; serving without it.");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }

    /// Runs `op` on the connection under the deadline; `None` (counted) on any failure.
    pub async fn call<T, F, Fut>(&'static self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(op, self.timeout, f).await
    }

    /// [`Redis::call`] with an explicit deadline (admin operations may wait longer).
    pub async fn call_within<T, F, Fut>(
        &'static self,
        op: &'static str,
        deadline: Duration,
        f: F,
    ) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.circuit_open() {
            metrics::CACHE_BACKEND_ERRORS
                .with_label_values(&["redis"])
                .inc();
            return None;
        }
        let started = Instant::now();
        let conn = match self.connection(deadline).await {
            Some(c) => c,
            None => {
                self.failed(op, "not connected");
                return None;
            }
        };
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, f(conn)).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Some(v)
            }
            Ok(Err(e)) => {
                crate::redis_topology::note_error("cache", &e);
                self.failed(op, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(op, "deadline exceeded");
                None
            }
        }
    }

    async fn connection(&'static self, deadline: Duration) -> Option<Conn> {
        if let Some(c) = self.conn.borrow().as_ref() {
            return Some(c.clone());
        }
        self.connect();
        let mut rx = self.conn.subscribe();
        let waited = tokio::time::timeout(deadline, rx.wait_for(|c| c.is_some())).await;
        match waited {
            Ok(Ok(c)) => c.clone(),
            _ => None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn circuit_open(&self) -> bool {
        self.now_ms() < self.open_until.load(Ordering::Relaxed)
    }

    fn succeeded(&self) {
        if self.failures.swap(0, Ordering::Relaxed) >= OPEN_AFTER {
            tracing::info!("Cache Redis answers again.");
        }
    }

    fn failed(&self, op: &'static str, error: &str) {
        metrics::CACHE_BACKEND_ERRORS
            .with_label_values(&["redis"])
            .inc();
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= OPEN_AFTER {
            self.open_until.store(
                self.now_ms() + OPEN_FOR.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        if n == OPEN_AFTER {
            tracing::warn!(
                op,
                error,
                "Cache Redis keeps failing; bypassing it while it recovers."
            );
        } else if n < OPEN_AFTER {
            tracing::debug!(op, error, "Cache Redis call failed; treating it as a miss.");
        }
    }
}

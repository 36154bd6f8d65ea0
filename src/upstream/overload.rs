//! Overload protection in front of one server: a fixed limit of requests in flight and a bounded
//! FIFO queue with a wait deadline (`[upstream.overload]`).
//!
//! A request takes a [`Permit`] in `upstream_peer`, after the cache and the pooled query path
//! had their chance, so cache hits and database answers never wait here. When the queue is full
//! or the deadline passes the request is shed ([`Shed`]): the proxy answers from a stale cached
//! copy when `stale_if_error` allows, else with a fast `503` and `Retry-After`. The permit is
//! released when the request's context is dropped (after `logging`).
//!
//! The limit is fixed, not adaptive: a one-worker uvicorn OMS with one locked database
//! connection works on one request at a time whatever the limit, so a small fixed limit keeps
//! its accept queue short, and the gateway's queue (with its deadline) takes the rest.
//!
//! Shed decisions are fast: a request that would wait longer than `queue_timeout` anyway — more
//! requests ahead of it than the server finishes in that time at its measured pace (the mean
//! time a slot is held, over the limit) — is shed at once as `queue_full` instead of after
//! waiting out the deadline. And `queue_timeout` is one budget per request: time a request
//! already spent waiting on the cache lock for another request's answer (which was itself
//! queued here) is taken off its deadline, so the two waits never add up (`lock_wait`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::OverloadConfig;

/// Why a request was shed (the `reason` label of `omsgate_upstream_shed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The queue was full when the request arrived.
    QueueFull,
    /// The request waited `queue_timeout` without getting a slot.
    QueueTimeout,
    /// The request had waited on the cache lock for another request's answer, and the rest of
    /// its `queue_timeout` passed (or nothing was left of it) without a slot.
    LockWait,
}

impl Shed {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::QueueTimeout => "queue_timeout",
            Shed::LockWait => "lock_wait",
        }
    }
}

/// The limit and queue of one server.
#[derive(Debug)]
pub struct Gate {
    cfg: OverloadConfig,
    /// `None` when unlimited.
    slots: Option<Arc<Semaphore>>,
    waiting: AtomicUsize,
    in_flight: AtomicUsize,
    /// Moving mean of the time a slot is held, µs (0 = nothing measured yet).
    held_us: AtomicU64,
}

impl Gate {
    /// A gate with `cfg`'s limit and queue.
    pub fn new(cfg: OverloadConfig) -> Arc<Gate> {
        Arc::new(Gate {
            cfg,
            slots: cfg.max_in_flight.map(|n| Arc::new(Semaphore::new(n))),
            waiting: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            held_us: AtomicU64::new(0),
        })
    }

    /// The settings this gate was built with.
    pub fn config(&self) -> &OverloadConfig {
        &self.cfg
    }

    /// Requests in flight through this gate.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The limit of requests in flight (0 = unlimited).
    pub fn limit(&self) -> usize {
        self.cfg.max_in_flight.unwrap_or(0)
    }

    /// Moving mean of the time a slot is held (`None` before the first release).
    pub fn held(&self) -> Option<Duration> {
        match self.held_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Takes a slot: at once when one is free, else after waiting in the FIFO queue for at most
    /// `queue_timeout`; sheds when the queue is full or the deadline passes.
    pub async fn acquire(self: &Arc<Self>) -> Result<Permit, Shed> {
        self.acquire_after(Duration::ZERO).await
    }

    /// [`Gate::acquire`] for a request that already waited `lock_wait` on the cache lock: that
    /// time is taken off its `queue_timeout`; with nothing left it takes a free slot or is shed
    /// at once ([`Shed::LockWait`]).
    pub async fn acquire_after(self: &Arc<Self>, lock_wait: Duration) -> Result<Permit, Shed> {
        let budget = self.cfg.queue_timeout.saturating_sub(lock_wait);
        let timed_out = if lock_wait.is_zero() {
            Shed::QueueTimeout
        } else {
            Shed::LockWait
        };
        let Some(slots) = &self.slots else {
            return Ok(Permit::new(self.clone(), None));
        };
        // A free slot is only ever free while nobody waits (tokio's semaphore hands released
        // permits to waiters first), so this does not jump the queue.
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return Ok(Permit::new(self.clone(), Some(p)));
        }
        if budget.is_zero() {
            return Err(timed_out);
        }
        // Room in the queue: below `queue`, and no more requests ahead than the server
        // finishes within the deadline at its measured pace (held time over the limit).
        let pace = self
            .held()
            .map(|held| held / self.limit().max(1) as u32)
            .filter(|pace| !pace.is_zero());
        let queued = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let ahead = u32::try_from(w + 1).unwrap_or(u32::MAX);
                let too_long =
                    pace.is_some_and(|pace| pace.checked_mul(ahead).is_none_or(|d| d > budget));
                (w < self.cfg.queue && !too_long).then_some(w + 1)
            });
        if queued.is_err() {
            return Err(Shed::QueueFull);
        }
        let waited = tokio::time::timeout(budget, slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(p)) => Ok(Permit::new(self.clone(), Some(p))),
            // The semaphore is never closed; treat it like a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(timed_out),
        }
    }

    /// Folds one slot's held time into the moving mean (weight 1/8).
    fn record_held(&self, held: Duration) {
        let us = (held.as_micros() as u64).max(1);
        let _ = self
            .held_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    us
                } else {
                    (old * 7 + us).div_ceil(8)
                })
            });
    }
}

/// One request's slot at a server; released on drop.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    slot: Option<OwnedSemaphorePermit>,
    since: Instant,
}

impl Permit {
    fn new(gate: Arc<Gate>, slot: Option<OwnedSemaphorePermit>) -> Permit {
        gate.in_flight.fetch_add(1, Ordering::Relaxed);
        Permit {
            gate,
            slot,
            since: Instant::now(),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.slot.is_some() {
            self.gate.record_held(self.since.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(limit: usize, queue: usize, timeout_ms: u64) -> Arc<Gate> {
        Gate::new(OverloadConfig {
            max_in_flight: (limit > 0).then_some(limit),
            queue,
            queue_timeout: Duration::from_millis(timeout_ms),
            retry_after_secs: 1,
        })
    }

    #[tokio::test]
    async fn limit_then_queue_then_shed() {
        let g = gate(2, 1, 60_000);
        let a = g.acquire().await.unwrap();
        let _b = g.acquire().await.unwrap();
        assert_eq!(g.in_flight(), 2);
        // The third waits in the queue; the fourth finds the queue full.
        let g3 = g.clone();
        let third = tokio::spawn(async move { g3.acquire().await.map(|_| ()) });
        while g.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(g.acquire().await.err(), Some(Shed::QueueFull));
        drop(a);
        assert_eq!(third.await.unwrap(), Ok(()));
        assert_eq!(g.waiting(), 0);
    }

    #[tokio::test]
    async fn deadline_sheds() {
        let g = gate(1, 10, 20);
        let _a = g.acquire().await.unwrap();
        assert_eq!(g.acquire().await.err(), Some(Shed::QueueTimeout));
        assert_eq!(g.waiting(), 0);
        assert_eq!(g.in_flight(), 1);
    }

    #[tokio::test]
    async fn queue_is_fifo() {
        let g = gate(1, 10, 60_000);
        let first = g.acquire().await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (g2, order) = (g.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let p = g2.acquire().await.unwrap();
                order.lock().unwrap().push(i);
                drop(p);
            }));
            // Queue them in a known order.
            while g.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn a_lock_wait_is_taken_off_the_deadline() {
        let g = gate(1, 10, 60_000);
        let _a = g.acquire().await.unwrap();
        // Waited on the cache lock as long as the deadline: no queueing, shed at once.
        assert_eq!(
            g.acquire_after(Duration::from_secs(60)).await.err(),
            Some(Shed::LockWait)
        );
        // Waited less: queues for the rest, then is shed as a lock waiter.
        assert_eq!(
            g.acquire_after(Duration::from_millis(59_980)).await.err(),
            Some(Shed::LockWait)
        );
        assert_eq!(g.waiting(), 0);
    }

    #[tokio::test]
    async fn a_free_slot_is_taken_whatever_the_lock_wait() {
        let g = gate(1, 0, 10);
        assert!(g.acquire_after(Duration::from_secs(60)).await.is_ok());
    }

    #[tokio::test]
    async fn a_queue_longer_than_the_deadline_at_the_measured_pace_is_full() {
        let g = gate(1, 100, 1_000);
        // The server holds a slot 400 ms on average: one waiter fits in 1 s, three do not.
        g.record_held(Duration::from_millis(400));
        assert_eq!(g.held(), Some(Duration::from_millis(400)));
        let _a = g.acquire().await.unwrap();
        let mut waiters = Vec::new();
        for i in 0..2 {
            let g2 = g.clone();
            waiters.push(tokio::spawn(async move { g2.acquire().await.map(|_| ()) }));
            while g.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        // 2 ahead × 400 ms + its own 400 ms > 1 s: shed at once, not after the deadline.
        assert_eq!(g.acquire().await.err(), Some(Shed::QueueFull));
        for w in waiters {
            assert_eq!(w.await.unwrap(), Err(Shed::QueueTimeout));
        }
    }

    #[test]
    fn the_held_time_is_a_moving_mean() {
        let g = gate(1, 0, 10);
        assert_eq!(g.held(), None);
        g.record_held(Duration::from_millis(800));
        g.record_held(Duration::from_millis(1600));
        assert_eq!(g.held(), Some(Duration::from_millis(900)));
    }

    #[tokio::test]
    async fn unlimited_counts_only() {
        let g = gate(0, 0, 0);
        let ps: Vec<_> = futures::future::join_all((0..100).map(|_| g.acquire())).await;
        assert!(ps.iter().all(|p| p.is_ok()));
        assert_eq!(g.in_flight(), 100);
        drop(ps);
        assert_eq!(g.in_flight(), 0);
    }
}

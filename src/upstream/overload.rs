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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::OverloadConfig;

/// Why a request was shed (the `reason` label of `omsgate_upstream_shed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The queue was full when the request arrived.
    QueueFull,
    /// The request waited `queue_timeout` without getting a slot.
    QueueTimeout,
}

impl Shed {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::QueueTimeout => "queue_timeout",
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
}

impl Gate {
    /// A gate with `cfg`'s limit and queue.
    pub fn new(cfg: OverloadConfig) -> Arc<Gate> {
        Arc::new(Gate {
            cfg,
            slots: cfg.max_in_flight.map(|n| Arc::new(Semaphore::new(n))),
            waiting: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
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

    /// Takes a slot: at once when one is free, else after waiting in the FIFO queue for at most
    /// `queue_timeout`; sheds when the queue is full or the deadline passes.
    pub async fn acquire(self: &Arc<Self>) -> Result<Permit, Shed> {
        self.acquire_within(self.cfg.queue_timeout).await
    }

    async fn acquire_within(self: &Arc<Self>, deadline: Duration) -> Result<Permit, Shed> {
        let Some(slots) = &self.slots else {
            return Ok(Permit::new(self.clone(), None));
        };
        // A free slot is only ever free while nobody waits (tokio's semaphore hands released
        // permits to waiters first), so this does not jump the queue.
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return Ok(Permit::new(self.clone(), Some(p)));
        }
        let queued = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < self.cfg.queue).then_some(w + 1)
            });
        if queued.is_err() {
            return Err(Shed::QueueFull);
        }
        let waited = tokio::time::timeout(deadline, slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(p)) => Ok(Permit::new(self.clone(), Some(p))),
            // The semaphore is never closed; treat it like a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(Shed::QueueTimeout),
        }
    }
}

/// One request's slot at a server; released on drop.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Permit {
    fn new(gate: Arc<Gate>, slot: Option<OwnedSemaphorePermit>) -> Permit {
        gate.in_flight.fetch_add(1, Ordering::Relaxed);
        Permit { gate, _slot: slot }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::Relaxed);
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
    async fn unlimited_counts_only() {
        let g = gate(0, 0, 0);
        let ps: Vec<_> = futures::future::join_all((0..100).map(|_| g.acquire())).await;
        assert!(ps.iter().all(|p| p.is_ok()));
        assert_eq!(g.in_flight(), 100);
        drop(ps);
        assert_eq!(g.in_flight(), 0);
    }
}

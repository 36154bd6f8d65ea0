//! Process lifecycle: graceful shutdown with a deadline, and a clean connection handover.
//!
//! Pingora's own SIGTERM handling stops the listeners and then sleeps for a fixed grace period
//! before tearing the runtimes down. omsgate keeps Pingora's stop-accepting step but ends the
//! wait as soon as there is nothing left to do: every in-flight request has finished, every
//! client connection has closed (see [`Handover`]) and every background service holding a
//! [`FlushGuard`] (the audit shipper flushing Kafka and its spool) has released it. If the
//! deadline (`server.shutdown_grace`) passes first, a warning says what was still pending and
//! the process exits anyway.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use tokio::signal::unix::{signal, SignalKind};

static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
static DRAINING: AtomicBool = AtomicBool::new(false);
static PENDING_FLUSHES: AtomicUsize = AtomicUsize::new(0);
static OPEN_CONNECTIONS: AtomicI64 = AtomicI64::new(0);
static CONNECTIONS_CLOSED: AtomicBool = AtomicBool::new(false);

/// How long client connections of the proxy may stay open once its listeners have stopped
/// (SIGTERM, or 5 s after SIGQUIT handed them to a new process): each one gets its next request
/// answered, with `Connection: close`, until then; connections still idle at the end are closed
/// (FIN, not reset). The wait ends early when every connection has closed.
pub const IDLE_DRAIN: Duration = Duration::from_secs(2);

/// The proxy application with a clean end for its client connections.
///
/// Pingora closes every connection that is waiting for its next request the moment the listeners
/// stop (`HttpProxy::http_cleanup` wakes `await_shutdown` in `handle_new_request`, pingora-proxy
/// 0.9.1). A client that sent a request on such a connection in that instant, or whose fresh
/// connection the old process accepted just before, gets a reset or an empty answer. This
/// wrapper counts the open connections and passes that cleanup on only after [`IDLE_DRAIN`] (or
/// once none is open): until then a request that arrives is read and answered with
/// `Connection: close` (Pingora drops keepalive for requests read after the shutdown signal).
pub struct Handover<A> {
    inner: Arc<A>,
}

impl<A> Handover<A> {
    /// Wraps the proxy application.
    pub fn new(inner: A) -> Handover<A> {
        Handover {
            inner: Arc::new(inner),
        }
    }
}

/// Counts one open client connection until dropped.
struct ConnectionGuard(());

impl ConnectionGuard {
    fn new() -> ConnectionGuard {
        OPEN_CONNECTIONS.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard(())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Handover<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = ConnectionGuard::new();
        // Pingora's HTTP application serves every request of a connection in one call; a stream
        // handed back for reuse is served here too, so the guard spans the whole connection.
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    /// Called once the listeners have stopped.
    async fn cleanup(&self) {
        let started = Instant::now();
        tracing::info!(
            open = OPEN_CONNECTIONS.load(Ordering::SeqCst),
            idle_drain_ms = IDLE_DRAIN.as_millis() as u64,
            "Shutdown: listeners stopped; client connections get their next request answered with Connection: close."
        );
        while OPEN_CONNECTIONS.load(Ordering::SeqCst) > 0 && started.elapsed() < IDLE_DRAIN {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let open = OPEN_CONNECTIONS.load(Ordering::SeqCst);
        if open > 0 {
            tracing::info!(open, "Shutdown: closing the idle client connections.");
        }
        self.inner.cleanup().await;
        CONNECTIONS_CLOSED.store(true, Ordering::SeqCst);
    }
}

/// Marks a request as in flight until dropped.
#[derive(Debug)]
pub struct RequestGuard(());

impl RequestGuard {
    /// Starts tracking one request.
    pub fn new() -> RequestGuard {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        crate::metrics::IN_FLIGHT.inc();
        RequestGuard(())
    }
}

impl Default for RequestGuard {
    fn default() -> Self {
        RequestGuard::new()
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::IN_FLIGHT.dec();
    }
}

/// Held by a background service that has work to finish at shutdown; the process does not exit
/// (before the deadline) while one is held.
#[derive(Debug)]
pub struct FlushGuard(());

impl FlushGuard {
    /// Registers pending shutdown work.
    pub fn new() -> FlushGuard {
        PENDING_FLUSHES.fetch_add(1, Ordering::SeqCst);
        FlushGuard(())
    }
}

impl Default for FlushGuard {
    fn default() -> Self {
        FlushGuard::new()
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        PENDING_FLUSHES.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a graceful shutdown or upgrade has begun. Responses then close their keepalive
/// connection, so busy clients move to a fresh connection (the new process, after an upgrade)
/// instead of having an idle connection closed under them when the listeners stop.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Requests currently in flight.
pub fn in_flight() -> i64 {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// Client connections of the proxy currently open.
pub fn open_connections() -> i64 {
    OPEN_CONNECTIONS.load(Ordering::SeqCst)
}

/// Pingora's signal watch with an early exit once draining is done.
///
/// SIGTERM: graceful terminate (stop accepting, drain, flush, exit 0 when idle or at the
/// deadline). SIGINT: fast shutdown. SIGQUIT: graceful upgrade (hand the listeners to a new
/// process started with `--upgrade`).
pub struct DrainingSignals {
    /// Longest wait for in-flight requests and flushes.
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("Installing signal handlers failed; shutting down.");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                DRAINING.store(true, Ordering::Relaxed);
                spawn_drain_watch(self.grace, Duration::from_millis(100));
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => {
                DRAINING.store(true, Ordering::Relaxed);
                // After handing the listeners over, Pingora keeps accepting on them for 5 s
                // (`CLOSE_TIMEOUT` in pingora-core) before they stop; the drain watch waits for
                // that through `CONNECTIONS_CLOSED`, set by `Handover` after they stopped.
                spawn_drain_watch(self.grace, Duration::from_millis(100));
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

/// Watches the drain from a plain thread (the runtimes are being torn down) and exits the
/// process as soon as nothing is pending (no request in flight, the listeners stopped and every
/// client connection closed, no flush pending), or at the deadline.
fn spawn_drain_watch(grace: Duration, min_wait: Duration) {
    let started = Instant::now();
    std::thread::spawn(move || {
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "Shutdown: draining in-flight requests."
        );
        // Let the listeners close and the background services see the shutdown first.
        std::thread::sleep(min_wait);
        loop {
            let requests = in_flight();
            let flushes = PENDING_FLUSHES.load(Ordering::SeqCst);
            let connections = open_connections();
            let closed = CONNECTIONS_CLOSED.load(Ordering::SeqCst);
            if requests <= 0 && flushes == 0 && closed && connections <= 0 {
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "Shutdown: drained; exiting."
                );
                std::process::exit(0);
            }
            if started.elapsed() >= grace {
                tracing::warn!(
                    requests,
                    flushes,
                    connections,
                    listeners_stopped = closed,
                    "Shutdown: grace period over with work still pending; exiting anyway."
                );
                std::process::exit(0);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

//! Process lifecycle: graceful shutdown with a deadline.
//!
//! Pingora's own SIGTERM handling stops the listeners and then sleeps for a fixed grace period
//! before tearing the runtimes down. omsgate keeps Pingora's stop-accepting step but ends the
//! wait as soon as there is nothing left to do: every in-flight request has finished and every
//! background service holding a [`FlushGuard`] (the audit shipper flushing Kafka and its spool)
//! has released it. If the deadline (`server.shutdown_grace`) passes first, a warning says what
//! was still pending and the process exits anyway.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
static DRAINING: AtomicBool = AtomicBool::new(false);
static PENDING_FLUSHES: AtomicUsize = AtomicUsize::new(0);

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

/// How long the old process of a graceful upgrade keeps serving after SIGQUIT before it may
/// exit: Pingora's own close timeout (5 s, `CLOSE_TIMEOUT` in pingora-core, during which both
/// processes accept on the shared sockets) plus a margin for its listeners to stop.
pub const UPGRADE_CLOSE_WAIT: Duration = Duration::from_secs(6);

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
                // After handing the listeners over, Pingora keeps accepting on them for
                // UPGRADE_CLOSE_WAIT before it stops; exiting earlier would drop connections
                // this process has accepted but not read a request from yet.
                spawn_drain_watch(self.grace, UPGRADE_CLOSE_WAIT);
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

/// Watches the drain from a plain thread (the runtimes are being torn down) and exits the
/// process as soon as nothing is pending, or at the deadline.
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
            if requests <= 0 && flushes == 0 {
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
                    "Shutdown: grace period over with work still pending; exiting anyway."
                );
                std::process::exit(0);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

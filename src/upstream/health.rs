//! Health that cannot take the OMS down: the active check (Pingora's [`HttpHealthCheck`], with a
//! generous timeout and several failures in a row before a server is marked down), passive
//! health from real traffic ([`Passive`]: consecutive connect failures or 5xx eject a server for
//! a backoff that doubles, capped), and panic mode ([`PanicState`]: when too few servers are
//! left, all of them are used).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::lb::HealthRegistry;

use super::config::{PassiveConfig, UpstreamConfig};
use crate::metrics;

/// The active health check's registry for `cfg`. HTTPS servers get a check each, with their
/// own SNI and the pool's trust store (the same peer settings as requests).
pub fn registry(cfg: &UpstreamConfig) -> Arc<HealthRegistry> {
    let registry = Arc::new(HealthRegistry::new());
    if cfg.tls {
        registry.set_health_check(Box::new(PerServer {
            checks: cfg
                .servers
                .iter()
                .map(|addr| (*addr, http_check(cfg, Some(*addr))))
                .collect(),
            failures: cfg.health_failures,
            successes: cfg.health_successes,
        }));
    } else {
        registry.set_health_check(Box::new(http_check(cfg, None)));
    }
    registry
}

/// The HTTP check of one HTTPS server (`Some`), or of every plain server (`None`).
fn http_check(cfg: &UpstreamConfig, https: Option<SocketAddr>) -> HttpHealthCheck {
    let (host, mut hc) = match https {
        Some(addr) => {
            let peer = super::https_peer(cfg, addr);
            let host = peer.sni.clone();
            let mut hc = HttpHealthCheck::new(&host, true);
            hc.peer_template = peer;
            // The check itself stays HTTP/1.1 (one fresh connection per check).
            hc.peer_template.options.alpn = pingora::protocols::ALPN::H1;
            (host, hc)
        }
        None => (
            "localhost".to_string(),
            HttpHealthCheck::new("localhost", false),
        ),
    };
    if let Ok(mut req) =
        pingora::http::RequestHeader::build("GET", cfg.health_path.as_bytes(), None)
    {
        let _ = req.append_header("Host", host.as_str());
        let _ = req.append_header("User-Agent", "omsgate-health-check");
        hc.req = req;
    }
    hc.peer_template.options.connection_timeout = Some(cfg.health_timeout);
    hc.peer_template.options.read_timeout = Some(cfg.health_timeout);
    // One fresh connection per check, so that a check never hits the keep-alive race.
    hc.reuse_connection = false;
    hc.consecutive_failure = cfg.health_failures;
    hc.consecutive_success = cfg.health_successes;
    hc.validator = Some(Box::new(|resp| {
        if resp.status.is_success() {
            Ok(())
        } else {
            pingora::Error::e_explain(
                pingora::ErrorType::HTTPStatus(resp.status.as_u16()),
                "health check status",
            )
        }
    }));
    hc
}

/// One HTTP check per HTTPS server (each has its own SNI).
struct PerServer {
    checks: Vec<(SocketAddr, HttpHealthCheck)>,
    failures: usize,
    successes: usize,
}

#[async_trait::async_trait]
impl HealthCheck for PerServer {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        match self
            .checks
            .iter()
            .find(|(addr, _)| target.addr.as_inet() == Some(addr))
        {
            Some((_, check)) => check.check(target).await,
            None => pingora::Error::e_explain(
                pingora::ErrorType::ConnectError,
                "no health check for this server",
            ),
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.successes
        } else {
            self.failures
        }
    }
}

// === Passive ===

/// Passive health of one server: consecutive failures of real requests, and the current
/// ejection.
#[derive(Debug)]
pub struct Passive {
    cfg: PassiveConfig,
    state: Mutex<PassiveState>,
}

#[derive(Debug, Default)]
struct PassiveState {
    consecutive: u32,
    /// Ejections in a row (reset by a success after an ejection ended).
    ejections: u32,
    until: Option<Instant>,
}

impl Passive {
    /// Passive health with `cfg`.
    pub fn new(cfg: PassiveConfig) -> Passive {
        Passive {
            cfg,
            state: Mutex::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &PassiveConfig {
        &self.cfg
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PassiveState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the server is ejected at `now`.
    pub fn ejected(&self, now: Instant) -> bool {
        self.state().until.is_some_and(|u| now < u)
    }

    /// Records a successful request.
    pub fn success(&self) {
        let mut s = self.state();
        s.consecutive = 0;
        if s.until.is_none_or(|u| Instant::now() >= u) {
            s.ejections = 0;
            s.until = None;
        }
    }

    /// Records a failed request (connect failure or 5xx); returns the ejection when this
    /// failure ejects the server.
    pub fn failure(&self, now: Instant) -> Option<Duration> {
        if self.cfg.failures == 0 {
            return None;
        }
        let mut s = self.state();
        if s.until.is_some_and(|u| now < u) {
            // Already ejected (requests that were in flight, or panic mode).
            return None;
        }
        s.consecutive += 1;
        // After an ejection, the first failure ejects again (for longer).
        let needed = if s.ejections > 0 {
            1
        } else {
            self.cfg.failures
        };
        if s.consecutive < needed {
            return None;
        }
        let ejection = backoff(&self.cfg, s.ejections);
        s.ejections = s.ejections.saturating_add(1);
        s.consecutive = 0;
        s.until = Some(now + ejection);
        Some(ejection)
    }
}

/// The `n`th ejection in a row (from 0): `ejection × 2ⁿ`, capped at `max_ejection`.
pub fn backoff(cfg: &PassiveConfig, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX);
    cfg.ejection
        .checked_mul(factor)
        .unwrap_or(cfg.max_ejection)
        .min(cfg.max_ejection)
}

// === Panic mode ===

/// Whether the pool is in panic mode; logs and counts each transition once.
#[derive(Debug, Default)]
pub struct PanicState {
    on: AtomicBool,
}

impl PanicState {
    /// Sets the state from a selection: `usable` of `total` servers are healthy.
    pub fn update(&self, panic: bool, usable: usize, total: usize) {
        if self.on.swap(panic, Ordering::Relaxed) == panic {
            return;
        }
        metrics::UPSTREAM_PANIC.set(panic as i64);
        if panic {
            metrics::UPSTREAM_PANIC_TOTAL.inc();
            tracing::warn!(
                healthy = usable,
                servers = total,
                "Too few healthy upstream servers; panic mode: every server is used."
            );
        } else {
            tracing::info!(
                healthy = usable,
                servers = total,
                "Enough healthy upstream servers again; panic mode over."
            );
        }
    }
}

/// Whether `usable` healthy servers of `total` put the pool in panic mode.
pub fn is_panic(usable: usize, total: usize, threshold: f64) -> bool {
    usable == 0 || (usable as f64) < threshold * total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(failures: u32) -> PassiveConfig {
        PassiveConfig {
            failures,
            ejection: Duration::from_secs(2),
            max_ejection: Duration::from_secs(30),
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = cfg(3);
        let got: Vec<u64> = (0..7).map(|n| backoff(&c, n).as_secs()).collect();
        assert_eq!(got, [2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(&c, u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn consecutive_failures_eject_and_success_resets() {
        let p = Passive::new(cfg(3));
        let t = Instant::now();
        assert_eq!(p.failure(t), None);
        assert_eq!(p.failure(t), None);
        p.success();
        assert_eq!(p.failure(t), None);
        assert_eq!(p.failure(t), None);
        assert_eq!(p.failure(t), Some(Duration::from_secs(2)));
        assert!(p.ejected(t + Duration::from_secs(1)));
        assert!(!p.ejected(t + Duration::from_secs(3)));
        // Back after the ejection: one more failure ejects again, for twice as long.
        let later = t + Duration::from_secs(3);
        assert_eq!(p.failure(later), Some(Duration::from_secs(4)));
    }

    #[test]
    fn off_when_failures_is_zero() {
        let p = Passive::new(cfg(0));
        for _ in 0..100 {
            assert_eq!(p.failure(Instant::now()), None);
        }
        assert!(!p.ejected(Instant::now()));
    }

    #[test]
    fn panic_threshold() {
        assert!(is_panic(0, 1, 0.0));
        assert!(!is_panic(1, 2, 0.0));
        assert!(is_panic(1, 4, 0.5));
        assert!(!is_panic(2, 4, 0.5));
    }
}

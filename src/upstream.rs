//! Upstreams (DESIGN.md capability 1): the legacy OMS instances, load balancing, health checks,
//! timeouts, keepalive and retry of idempotent requests.
//!
//! Built on `pingora-load-balancing`: a [`LoadBalancer`] holds the servers, its health state lives
//! in a shared [`HealthRegistry`] that the [`HealthChecks`] background service probes;
//! `round_robin` uses the balancer's selector, `least_conn` picks the healthy server with the
//! fewest requests in flight (counted here). The whole pool is reloadable
//! ([`Upstreams::reload`]): a config reload swaps it for new requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// `[upstream]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct UpstreamFile {
    /// The OMS instances as `host:port`. Default `["127.0.0.1:8000"]`.
    pub servers: Vec<String>,
    /// `"round_robin"` or `"least_conn"`. Default `"round_robin"`.
    pub selection: String,
    /// Active health check. Default `{ path = "/health", interval = "5s" }`.
    pub health_check: HealthCheckFile,
    /// TCP connect timeout. Default `"1s"`.
    pub connect_timeout: String,
    /// Time to wait for each read from the upstream (headers or a body chunk). Default `"30s"`.
    pub read_timeout: String,
    /// Time to wait for each write to the upstream. Default `"30s"`.
    pub write_timeout: String,
    /// How long an idle keepalive connection to the upstream is kept. Default `"60s"`.
    pub idle_timeout: String,
    /// Idle keepalive connections kept per worker thread. Default 128.
    pub keepalive_pool: usize,
    /// Retries on another server when connecting fails (idempotent methods only). Default 1.
    pub retries: usize,
}

impl Default for UpstreamFile {
    fn default() -> Self {
        Self {
            servers: vec!["127.0.0.1:8000".into()],
            selection: "round_robin".into(),
            health_check: HealthCheckFile::default(),
            connect_timeout: "1s".into(),
            read_timeout: "30s".into(),
            write_timeout: "30s".into(),
            idle_timeout: "60s".into(),
            keepalive_pool: 128,
            retries: 1,
        }
    }
}

/// `[upstream.health_check]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct HealthCheckFile {
    /// Path requested with GET; any 2xx is healthy. Default `"/health"`.
    pub path: String,
    /// Time between checks. Default `"5s"`.
    pub interval: String,
    /// Timeout of one check. Default `"1s"`.
    pub timeout: String,
    /// Consecutive failures that mark a server down. Default 1.
    pub failures: usize,
    /// Consecutive successes that mark a server up again. Default 1.
    pub successes: usize,
}

impl Default for HealthCheckFile {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval: "5s".into(),
            timeout: "1s".into(),
            failures: 1,
            successes: 1,
        }
    }
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Round robin over healthy servers.
    RoundRobin,
    /// The healthy server with the fewest requests in flight.
    LeastConn,
}

/// Typed `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Server addresses.
    pub servers: Vec<SocketAddr>,
    /// Algorithm.
    pub selection: Selection,
    /// Health-check path.
    pub health_path: String,
    /// Health-check interval.
    pub health_interval: Duration,
    /// Health-check timeout.
    pub health_timeout: Duration,
    /// Failures to mark down.
    pub health_failures: usize,
    /// Successes to mark up.
    pub health_successes: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Read timeout.
    pub read_timeout: Duration,
    /// Write timeout.
    pub write_timeout: Duration,
    /// Idle keepalive timeout.
    pub idle_timeout: Duration,
    /// Keepalive pool size per thread.
    pub keepalive_pool: usize,
    /// Retries on connect failure.
    pub retries: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        let mut p = Problems::default();
        UpstreamConfig::from_file(&UpstreamFile::default(), &mut p)
    }
}

impl UpstreamConfig {
    /// Converts the file layer.
    pub fn from_file(f: &UpstreamFile, p: &mut Problems) -> UpstreamConfig {
        let mut servers = Vec::new();
        if f.servers.is_empty() {
            p.push("upstream.servers", "at least one server is needed");
        }
        for (i, s) in f.servers.iter().enumerate() {
            use std::net::ToSocketAddrs;
            match s.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(a)) => servers.push(a),
                _ => p.push(
                    format!("upstream.servers[{i}]"),
                    format!("`{s}` is not a resolvable `host:port`"),
                ),
            }
        }
        let selection = match f.selection.as_str() {
            "round_robin" => Selection::RoundRobin,
            "least_conn" => Selection::LeastConn,
            other => {
                p.push(
                    "upstream.selection",
                    format!("`{other}` is not one of \"round_robin\", \"least_conn\""),
                );
                Selection::RoundRobin
            }
        };
        let hc = &f.health_check;
        if !hc.path.starts_with('/') {
            p.push(
                "upstream.health_check.path",
                format!("`{}` must start with `/`", hc.path),
            );
        }
        let health_interval = p.duration_or(
            "upstream.health_check.interval",
            &hc.interval,
            Duration::from_secs(5),
        );
        if health_interval.is_zero() {
            p.push("upstream.health_check.interval", "must be greater than 0");
        }
        let cfg = UpstreamConfig {
            servers,
            selection,
            health_path: hc.path.clone(),
            health_interval,
            health_timeout: p.duration_or(
                "upstream.health_check.timeout",
                &hc.timeout,
                Duration::from_secs(1),
            ),
            health_failures: hc.failures.max(1),
            health_successes: hc.successes.max(1),
            connect_timeout: p.duration_or(
                "upstream.connect_timeout",
                &f.connect_timeout,
                Duration::from_secs(1),
            ),
            read_timeout: p.duration_or(
                "upstream.read_timeout",
                &f.read_timeout,
                Duration::from_secs(30),
            ),
            write_timeout: p.duration_or(
                "upstream.write_timeout",
                &f.write_timeout,
                Duration::from_secs(30),
            ),
            idle_timeout: p.duration_or(
                "upstream.idle_timeout",
                &f.idle_timeout,
                Duration::from_secs(60),
            ),
            keepalive_pool: f.keepalive_pool,
            retries: f.retries,
        };
        for (key, d) in [
            ("upstream.connect_timeout", cfg.connect_timeout),
            ("upstream.read_timeout", cfg.read_timeout),
        ] {
            if d.is_zero() {
                p.push(key, "must be greater than 0");
            }
        }
        cfg
    }
}

/// Counts requests in flight per server, for `least_conn` and metrics.
///
/// A reload that keeps a server keeps its counter (the new pool shares it), so requests that
/// started before the reload are still counted when they finish after it.
#[derive(Debug, Default)]
pub struct InFlight {
    counts: Vec<(SocketAddr, Arc<AtomicUsize>)>,
}

impl InFlight {
    /// One counter per server.
    pub fn new(servers: &[SocketAddr]) -> Arc<InFlight> {
        InFlight::carry_over(servers, None)
    }

    /// One counter per server, sharing `previous`'s counter for servers it already had.
    fn carry_over(servers: &[SocketAddr], previous: Option<&InFlight>) -> Arc<InFlight> {
        let counts = servers
            .iter()
            .map(|s| {
                let shared = previous.and_then(|p| p.counter(s));
                (*s, shared.unwrap_or_default())
            })
            .collect();
        Arc::new(InFlight { counts })
    }

    fn counter(&self, addr: &SocketAddr) -> Option<Arc<AtomicUsize>> {
        self.counts
            .iter()
            .find(|(a, _)| a == addr)
            .map(|(_, c)| c.clone())
    }

    /// Requests in flight to `addr`.
    pub fn get(&self, addr: &SocketAddr) -> usize {
        self.counts
            .iter()
            .find(|(a, _)| a == addr)
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Marks a request to `addr` as started.
    pub fn start(&self, addr: &SocketAddr) {
        if let Some((_, c)) = self.counts.iter().find(|(a, _)| a == addr) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks a request to `addr` as finished.
    pub fn finish(&self, addr: &SocketAddr) {
        if let Some((_, c)) = self.counts.iter().find(|(a, _)| a == addr) {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }
}

// === impl Upstreams ===

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::lb::discovery::Static;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, HealthRegistry, LoadBalancer};
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use pingora::upstreams::peer::HttpPeer;
use tokio::sync::Notify;

/// One generation of the pool: what a reload replaces as a whole.
struct Pool {
    lb: Arc<LoadBalancer<RoundRobin>>,
    /// Health state shared by every generation with the same health-check settings, so a
    /// reload keeps what is known about the servers it keeps.
    registry: Arc<HealthRegistry>,
    cfg: Arc<UpstreamConfig>,
    in_flight: Arc<InFlight>,
}

/// The upstream pool: servers, health state, selection and peer settings.
///
/// Everything sits behind one [`ArcSwap`] so that [`Upstreams::reload`] can replace the server
/// list, the selection algorithm, timeouts and health-check settings at once; a request sees
/// either the old pool or the new one. Health checks run in [`HealthChecks`], over whatever
/// pool is current.
pub struct Upstreams {
    pool: ArcSwap<Pool>,
    /// Wakes the health-check loop after a reload (new interval, new servers).
    reloaded: Notify,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("servers", &self.pool.load().cfg.servers)
            .finish()
    }
}

/// What a reload changed in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolChange {
    /// The server list changed.
    pub servers: bool,
    /// The health-check settings changed (health state starts over, then one check runs).
    pub health_check: bool,
}

/// Whether two configs check health the same way (then the health state can be kept).
fn same_health_check(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    a.health_path == b.health_path
        && a.health_timeout == b.health_timeout
        && a.health_failures == b.health_failures
        && a.health_successes == b.health_successes
}

fn health_registry(cfg: &UpstreamConfig) -> Arc<HealthRegistry> {
    let mut hc = HttpHealthCheck::new("localhost", false);
    if let Ok(mut req) =
        pingora::http::RequestHeader::build("GET", cfg.health_path.as_bytes(), None)
    {
        let _ = req.append_header("Host", "localhost");
        let _ = req.append_header("User-Agent", "omsgate-health-check");
        hc.req = req;
    }
    hc.peer_template.options.connection_timeout = Some(cfg.health_timeout);
    hc.peer_template.options.read_timeout = Some(cfg.health_timeout);
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
    let registry = Arc::new(HealthRegistry::new());
    registry.set_health_check(Box::new(hc));
    registry
}

/// A load balancer over `cfg.servers` whose health lives in `registry`.
fn load_balancer(
    cfg: &UpstreamConfig,
    registry: Arc<HealthRegistry>,
) -> std::io::Result<Arc<LoadBalancer<RoundRobin>>> {
    let backends: std::collections::BTreeSet<Backend> = cfg
        .servers
        .iter()
        .map(|a| Backend::new(&a.to_string()))
        .collect::<pingora::Result<_>>()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let view = Backends::new_with_health_registry(Static::new(backends), registry);
    let lb = LoadBalancer::<RoundRobin>::from_backends(view);
    // Static discovery answers at once; this publishes the servers to the view and registry.
    match futures::FutureExt::now_or_never(lb.update()) {
        Some(Ok(())) => Ok(Arc::new(lb)),
        Some(Err(e)) => Err(std::io::Error::other(e.to_string())),
        None => Err(std::io::Error::other("static discovery did not answer")),
    }
}

impl Upstreams {
    /// Builds the pool and the background service that runs its health checks.
    pub fn new(
        cfg: &UpstreamConfig,
    ) -> std::io::Result<(Arc<Upstreams>, GenBackgroundService<HealthChecks>)> {
        let registry = health_registry(cfg);
        let pool = Pool {
            lb: load_balancer(cfg, registry.clone())?,
            registry,
            cfg: Arc::new(cfg.clone()),
            in_flight: InFlight::new(&cfg.servers),
        };
        let ups = Arc::new(Upstreams {
            pool: ArcSwap::from_pointee(pool),
            reloaded: Notify::new(),
        });
        let service = background_service(
            "upstream health check",
            HealthChecks {
                upstreams: ups.clone(),
            },
        );
        Ok((ups, service))
    }

    /// Replaces the pool with one built from `cfg`, for requests that start from now on.
    ///
    /// When the servers or the health-check settings change, one health check of the new pool
    /// runs before it goes live (bounded by the health-check timeout), so a server that is down
    /// is not offered to requests in the meantime; servers kept from the old pool keep their
    /// health state and in-flight counts.
    pub async fn reload(&self, cfg: &UpstreamConfig) -> std::io::Result<PoolChange> {
        let old = self.pool.load_full();
        let change = PoolChange {
            servers: old.cfg.servers != cfg.servers,
            health_check: !same_health_check(&old.cfg, cfg),
        };
        let pool = if change == PoolChange::default() {
            Pool {
                lb: old.lb.clone(),
                registry: old.registry.clone(),
                cfg: Arc::new(cfg.clone()),
                in_flight: old.in_flight.clone(),
            }
        } else {
            let registry = if change.health_check {
                health_registry(cfg)
            } else {
                old.registry.clone()
            };
            let lb = load_balancer(cfg, registry.clone())?;
            registry.run_health_check(true).await;
            Pool {
                lb,
                registry,
                cfg: Arc::new(cfg.clone()),
                in_flight: InFlight::carry_over(&cfg.servers, Some(&old.in_flight)),
            }
        };
        self.pool.store(Arc::new(pool));
        if change.servers {
            // Servers that left must not linger in the health gauge.
            crate::metrics::UPSTREAM_HEALTHY.reset();
        }
        self.reloaded.notify_one();
        Ok(change)
    }

    /// Picks a healthy server not in `exclude`, by the configured algorithm.
    pub fn select(&self, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        let pool = self.pool.load();
        match pool.cfg.selection {
            Selection::RoundRobin => pool
                .lb
                .select_with(b"", 256, |b, healthy| {
                    healthy && b.addr.as_inet().is_some_and(|a| !exclude.contains(a))
                })
                .and_then(|b| b.addr.as_inet().copied()),
            Selection::LeastConn => {
                let backends = pool.lb.backends().get_backend();
                backends
                    .iter()
                    .filter(|b| pool.lb.backends().ready(b))
                    .filter_map(|b| b.addr.as_inet().copied())
                    .filter(|a| !exclude.contains(a))
                    .min_by_key(|a| pool.in_flight.get(a))
            }
        }
    }

    /// Whether another healthy server than those in `exclude` exists.
    pub fn has_alternative(&self, exclude: &[SocketAddr]) -> bool {
        self.select(exclude).is_some()
    }

    /// The peer for `addr` with the configured timeouts and keepalive.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let cfg = &self.pool.load().cfg;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(cfg.connect_timeout);
        peer.options.read_timeout = Some(cfg.read_timeout);
        peer.options.write_timeout = Some(cfg.write_timeout);
        peer.options.idle_timeout = Some(cfg.idle_timeout);
        peer
    }

    /// Health of every server, in config order.
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        let pool = self.pool.load();
        let backends = pool.lb.backends().get_backend();
        pool.cfg
            .servers
            .iter()
            .map(|s| {
                let healthy = backends
                    .iter()
                    .find(|b| b.addr.as_inet() == Some(s))
                    .is_some_and(|b| pool.lb.backends().ready(b));
                (*s, healthy)
            })
            .collect()
    }

    /// Requests in flight per server (for least_conn).
    pub fn in_flight(&self) -> Arc<InFlight> {
        self.pool.load().in_flight.clone()
    }

    /// The configuration the current pool was built from.
    pub fn config(&self) -> Arc<UpstreamConfig> {
        self.pool.load().cfg.clone()
    }
}

// === impl HealthChecks ===

/// The active health check: every `upstream.health_check.interval`, one parallel pass over the
/// servers of the current pool. A reload wakes it so a new interval applies at once.
pub struct HealthChecks {
    upstreams: Arc<Upstreams>,
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let pool = self.upstreams.pool.load_full();
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = pool.registry.run_health_check(true) => {}
            }
            let interval = pool.cfg.health_interval;
            drop(pool);
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = self.upstreams.reloaded.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

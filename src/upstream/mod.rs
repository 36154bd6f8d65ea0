//! Upstreams (DESIGN.md capability 1): the legacy OMS instances, server selection, health,
//! timeouts, keepalive, safe retries and overload protection. `docs/upstream.md` is the
//! operator's page.
//!
//! - [`config`]: `[upstream]` and its sub-tables, with defaults that fit a one-worker uvicorn.
//! - [`health`]: the active check (Pingora's health registry), passive health from real traffic
//!   (ejection with a growing backoff) and panic mode.
//! - [`overload`]: the per-server limit of requests in flight and its FIFO queue.
//!
//! The proxy calls in at four phases, each through one method here: `upstream_peer`
//! ([`Upstreams::peer_for`]: select, wait for a slot, build the peer), `fail_to_connect`
//! ([`Upstreams::connect_failed`]), `error_while_proxy` ([`Upstreams::proxy_failed`]: the
//! keep-alive race) and `upstream_response_filter` ([`Upstreams::responded`]). The per-request
//! state is an [`Attempt`] in the proxy's context; dropping it releases the slot.
//!
//! The whole pool is reloadable ([`Upstreams::reload`]): a config reload swaps it for new
//! requests; per-server state (passive health, the overload gate) carries over for servers
//! the new pool keeps, as long as their settings did not change.

pub mod config;
pub mod health;
pub mod overload;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::lb::discovery::Static;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, HealthRegistry, LoadBalancer};
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, RetryType};
use tokio::sync::Notify;

pub use config::{
    HealthCheckFile, OverloadConfig, OverloadFile, PassiveConfig, PassiveFile, Selection,
    UpstreamConfig, UpstreamFile,
};
use health::{PanicState, Passive};
use overload::{Gate, Permit, Shed};

use crate::metrics;

/// The error `upstream_peer` returns for a shed request: the cache may answer it from a stale
/// copy (`should_serve_stale`), else `fail_to_proxy` answers 503 with `Retry-After`.
pub const SHED: ErrorType = ErrorType::Custom("upstream overloaded");

/// Connections opened for a retry after the keep-alive race each get a pool group of their own
/// (this base plus a counter) and are not kept afterwards, so the retry always runs on a fresh
/// connection: a group no other request asks for, not even another retry.
const FRESH_GROUP: u64 = 0x6f6d_7367_6174_6531;

/// The next fresh pool group.
static FRESH_GROUPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// === Per-server state ===

/// What the gateway knows about one server beyond the active check.
#[derive(Debug)]
pub struct Server {
    /// The address.
    pub addr: SocketAddr,
    /// Passive health.
    pub passive: Passive,
    /// Limit and queue.
    pub gate: Arc<Gate>,
}

/// One server's state per configured server, in config order.
#[derive(Debug)]
struct Servers {
    list: Vec<Arc<Server>>,
}

impl Servers {
    /// State for `cfg.servers`, sharing `previous`'s for servers it had with the same settings,
    /// so requests that started before a reload still release their slot into the gate the
    /// next requests use.
    fn carry_over(cfg: &UpstreamConfig, previous: Option<&Servers>) -> Servers {
        let list = cfg
            .servers
            .iter()
            .map(|addr| {
                previous
                    .and_then(|p| p.list.iter().find(|s| s.addr == *addr))
                    .filter(|s| {
                        *s.gate.config() == cfg.overload && *s.passive.config() == cfg.passive
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Server {
                            addr: *addr,
                            passive: Passive::new(cfg.passive),
                            gate: Gate::new(cfg.overload),
                        })
                    })
            })
            .collect();
        Servers { list }
    }
}

// === Attempt ===

/// Why a request was retried (the `reason` label of `omsgate_upstream_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// Connecting failed.
    Connect,
    /// A reused keepalive connection was closed before any response byte arrived.
    ReusedClosed,
}

impl RetryReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::ReusedClosed => "reused_closed",
        }
    }
}

/// A request's way to the upstream: servers tried, its slot, retries so far.
#[derive(Debug, Default)]
pub struct Attempt {
    /// Servers tried, in order.
    pub tried: Vec<SocketAddr>,
    /// The slot at the current server (released on drop).
    permit: Option<(Arc<Server>, Permit)>,
    connect_retries: usize,
    reused_retried: bool,
    /// The next connection must be a fresh one.
    fresh: bool,
    /// Why the request was shed, if it was.
    pub shed: Option<Shed>,
}

impl Attempt {
    /// The server the request was last sent to.
    pub fn server(&self) -> Option<&Arc<Server>> {
        self.permit.as_ref().map(|(s, _)| s)
    }
}

// === impl Upstreams ===

/// One generation of the pool: what a reload replaces as a whole.
struct Pool {
    lb: Arc<LoadBalancer<RoundRobin>>,
    /// Health state shared by every generation with the same health-check settings, so a
    /// reload keeps what is known about the servers it keeps.
    registry: Arc<HealthRegistry>,
    cfg: Arc<UpstreamConfig>,
    servers: Servers,
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
    /// Round-robin position.
    next: AtomicUsize,
    panic: PanicState,
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
    a.tls == b.tls
        && a.names == b.names
        && a.trust.extra_roots == b.trust.extra_roots
        && a.health_path == b.health_path
        && a.health_timeout == b.health_timeout
        && a.health_failures == b.health_failures
        && a.health_successes == b.health_successes
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

/// The peer of an HTTPS server: SNI and the certificate check use `[upstream.tls] sni`, else the
/// host name the config gives for `addr`; the trust store is `[tls]`'s (Pingora's own, the
/// system roots, when no `ca_file` is set). Verification is on unless `[upstream.tls] verify`
/// is false.
pub(crate) fn https_peer(cfg: &UpstreamConfig, addr: SocketAddr) -> HttpPeer {
    let name = cfg.tls_sni.clone().unwrap_or_else(|| {
        cfg.servers
            .iter()
            .position(|a| *a == addr)
            .and_then(|i| cfg.names.get(i))
            .cloned()
            .unwrap_or_else(|| addr.ip().to_string())
    });
    let mut peer = HttpPeer::new(addr, true, name);
    peer.options.verify_cert = cfg.tls_verify;
    peer.options.verify_hostname = cfg.tls_verify;
    peer.options.ca = cfg.trust.upstream_ca.clone();
    peer.client_cert_key = cfg.tls_client.as_ref().map(|c| c.pingora());
    if cfg.h2 {
        // h2 preferred, http/1.1 when the server does not offer it.
        peer.options.alpn = pingora::protocols::ALPN::H2H1;
    }
    peer
}

fn warn_about(cfg: &UpstreamConfig) {
    for (key, reason) in cfg.warnings() {
        tracing::warn!(key, "Upstream setting: {reason}");
    }
}

impl Pool {
    /// Whether the active check considers `addr` healthy.
    fn actively_healthy(&self, addr: &SocketAddr) -> bool {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .find(|b| b.addr.as_inet() == Some(addr))
            .is_some_and(|b| backends.ready(b))
    }
}

impl Upstreams {
    /// Builds the pool and the background service that runs its health checks.
    pub fn new(
        cfg: &UpstreamConfig,
    ) -> std::io::Result<(Arc<Upstreams>, GenBackgroundService<HealthChecks>)> {
        warn_about(cfg);
        let registry = health::registry(cfg);
        let pool = Pool {
            lb: load_balancer(cfg, registry.clone())?,
            registry,
            cfg: Arc::new(cfg.clone()),
            servers: Servers::carry_over(cfg, None),
        };
        let ups = Arc::new(Upstreams {
            pool: ArcSwap::from_pointee(pool),
            reloaded: Notify::new(),
            next: AtomicUsize::new(0),
            panic: PanicState::default(),
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
    /// When the servers or the health-check settings change, `health_check.failures` passes of
    /// the health check run over the new pool before it goes live (each bounded by the
    /// health-check timeout), so a server that is down
    /// is not offered to requests in the meantime; servers kept from the old pool keep their
    /// health state, and their passive health and gate while those settings stay the same.
    pub async fn reload(&self, cfg: &UpstreamConfig) -> std::io::Result<PoolChange> {
        warn_about(cfg);
        let old = self.pool.load_full();
        let change = PoolChange {
            servers: old.cfg.servers != cfg.servers
                || old.cfg.names != cfg.names
                || old.cfg.tls != cfg.tls
                || old.cfg.tls_sni != cfg.tls_sni
                || old.cfg.tls_verify != cfg.tls_verify
                || old.cfg.tls_client != cfg.tls_client,
            health_check: !same_health_check(&old.cfg, cfg),
        };
        let servers = Servers::carry_over(cfg, Some(&old.servers));
        let pool = if change == PoolChange::default() {
            Pool {
                lb: old.lb.clone(),
                registry: old.registry.clone(),
                cfg: Arc::new(cfg.clone()),
                servers,
            }
        } else {
            let registry = if change.health_check {
                health::registry(cfg)
            } else {
                old.registry.clone()
            };
            let lb = load_balancer(cfg, registry.clone())?;
            // A new server starts healthy and takes `failures` failed checks to be marked down,
            // so that many passes run (each bounded by the health-check timeout).
            for _ in 0..cfg.health_failures {
                registry.run_health_check(true).await;
            }
            Pool {
                lb,
                registry,
                cfg: Arc::new(cfg.clone()),
                servers,
            }
        };
        self.pool.store(Arc::new(pool));
        if change.servers {
            // Servers that left must not linger in the per-server gauges.
            for g in [
                &*metrics::UPSTREAM_HEALTHY,
                &*metrics::UPSTREAM_IN_FLIGHT,
                &*metrics::UPSTREAM_QUEUE,
                &*metrics::UPSTREAM_LIMIT,
            ] {
                g.reset();
            }
        }
        self.reloaded.notify_one();
        Ok(change)
    }

    /// Picks a server, preferring one not in `exclude`: among the servers both health checks
    /// allow, or among all of them in panic mode (too few allowed). Falls back to a server in
    /// `exclude` rather than to none, so a retry with one server goes to that server again.
    pub fn select(&self, exclude: &[SocketAddr]) -> Arc<Server> {
        let pool = self.pool.load();
        let now = Instant::now();
        let all = &pool.servers.list;
        let usable: Vec<&Arc<Server>> = all
            .iter()
            .filter(|s| pool.actively_healthy(&s.addr) && !s.passive.ejected(now))
            .collect();
        let panic = health::is_panic(usable.len(), all.len(), pool.cfg.panic_threshold);
        self.panic.update(panic, usable.len(), all.len());
        let candidates: Vec<&Arc<Server>> = if panic { all.iter().collect() } else { usable };
        let untried: Vec<&Arc<Server>> = candidates
            .iter()
            .copied()
            .filter(|s| !exclude.contains(&s.addr))
            .collect();
        let from = if untried.is_empty() {
            &candidates
        } else {
            &untried
        };
        let pick = match pool.cfg.selection {
            Selection::RoundRobin => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                from.get(i % from.len().max(1)).copied()
            }
            Selection::LeastConn => from.iter().copied().min_by_key(|s| s.gate.in_flight()),
        };
        // `servers` is never empty (validated), so `from` is not either.
        pick.or_else(|| all.first()).cloned().unwrap_or_else(|| {
            Arc::new(Server {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                passive: Passive::new(pool.cfg.passive),
                gate: Gate::new(pool.cfg.overload),
            })
        })
    }

    /// `upstream_peer`: selects a server, waits for a slot at it (the request keeps its slot
    /// across retries to the same server) and returns the peer with the configured timeouts.
    /// A request that cannot get a slot fails with [`SHED`], counted per route. `lock_wait`:
    /// how long the request already waited on the cache lock, taken off its queue deadline.
    pub async fn peer_for(
        &self,
        attempt: &mut Attempt,
        route: &str,
        lock_wait: Duration,
    ) -> pingora::Result<Box<HttpPeer>> {
        let server = self.select(&attempt.tried);
        let holds = attempt
            .permit
            .as_ref()
            .is_some_and(|(s, _)| Arc::ptr_eq(s, &server));
        if !holds {
            // A slot at another server is not needed any more.
            attempt.permit = None;
            match server.gate.acquire_after(lock_wait).await {
                Ok(p) => attempt.permit = Some((server.clone(), p)),
                Err(reason) => {
                    attempt.shed = Some(reason);
                    metrics::UPSTREAM_SHED
                        .with_label_values(&[route, reason.as_str()])
                        .inc();
                    return Error::e_explain(
                        SHED,
                        format!("{} at {}", reason.as_str(), server.addr),
                    );
                }
            }
        }
        attempt.tried.push(server.addr);
        let mut peer = self.peer(server.addr);
        if std::mem::take(&mut attempt.fresh) {
            peer.group_key = FRESH_GROUP.wrapping_add(FRESH_GROUPS.fetch_add(1, Ordering::Relaxed));
            peer.options.idle_timeout = Some(Duration::ZERO);
        }
        Ok(Box::new(peer))
    }

    /// `fail_to_connect`: counts the failure in passive health and marks the error for one
    /// retry (`upstream.retries`) when the request is idempotent.
    pub fn connect_failed(
        &self,
        attempt: &mut Attempt,
        idempotent: bool,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(s) = attempt.server() {
            self.passive_failure(s);
        }
        if idempotent && attempt.connect_retries < self.config().retries {
            attempt.connect_retries += 1;
            metrics::UPSTREAM_RETRIES
                .with_label_values(&[RetryReason::Connect.as_str()])
                .inc();
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    /// `error_while_proxy`: the keep-alive race. An error Pingora marks as retryable only on a
    /// reused connection (the connection closed or reset before any response byte), on a reused
    /// connection, for an idempotent request whose body can be sent again, is retried once on a
    /// fresh connection. Everything else is final and counts in passive health.
    pub fn proxy_failed(
        &self,
        attempt: &mut Attempt,
        retryable_request: bool,
        client_reused: bool,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let race = matches!(e.retry, RetryType::ReusedOnly) && client_reused;
        if race && retryable_request && !attempt.reused_retried {
            attempt.reused_retried = true;
            attempt.fresh = true;
            // The same server is fine: it is alive, it only closed an idle connection.
            attempt.tried.pop();
            metrics::UPSTREAM_RETRIES
                .with_label_values(&[RetryReason::ReusedClosed.as_str()])
                .inc();
            e.set_retry(true);
            return e;
        }
        e.set_retry(false);
        if !race {
            if let Some(s) = attempt.server() {
                self.passive_failure(s);
            }
        }
        e
    }

    /// `upstream_response_filter`: a 5xx counts as a failure in passive health, anything else
    /// as a success.
    pub fn responded(&self, attempt: &Attempt, status: u16) {
        let Some(s) = attempt.server() else { return };
        if status >= 500 {
            self.passive_failure(s);
        } else {
            s.passive.success();
        }
    }

    fn passive_failure(&self, s: &Server) {
        if let Some(ejection) = s.passive.failure(Instant::now()) {
            metrics::UPSTREAM_EJECTIONS
                .with_label_values(&[&s.addr.to_string()])
                .inc();
            tracing::warn!(
                server = %s.addr,
                ejection_ms = ejection.as_millis() as u64,
                "Upstream server failed repeatedly; ejected from selection for a while."
            );
        }
    }

    /// The peer for `addr` with the configured timeouts and keepalive.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let cfg = &self.pool.load().cfg;
        let mut peer = if cfg.tls {
            https_peer(cfg, addr)
        } else {
            HttpPeer::new(addr, false, String::new())
        };
        peer.options.connection_timeout = Some(cfg.connect_timeout);
        peer.options.read_timeout = Some(cfg.read_timeout);
        peer.options.write_timeout = Some(cfg.write_timeout);
        peer.options.idle_timeout = Some(cfg.idle_timeout);
        peer
    }

    /// Health of every server (active check and passive ejection), in config order.
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        self.status()
            .into_iter()
            .map(|s| (s.addr, s.healthy))
            .collect()
    }

    /// Everything `/ready` and the gauges show about each server, in config order.
    pub fn status(&self) -> Vec<ServerStatus> {
        let pool = self.pool.load();
        let now = Instant::now();
        pool.servers
            .list
            .iter()
            .map(|s| {
                let ejected = s.passive.ejected(now);
                ServerStatus {
                    addr: s.addr,
                    healthy: pool.actively_healthy(&s.addr) && !ejected,
                    ejected,
                    in_flight: s.gate.in_flight(),
                    queued: s.gate.waiting(),
                    limit: s.gate.limit(),
                }
            })
            .collect()
    }

    /// Whether the pool is in panic mode now (too few servers healthy by both checks), whether
    /// or not a request has been sent since.
    pub fn panic(&self) -> bool {
        let status = self.status();
        let healthy = status.iter().filter(|s| s.healthy).count();
        health::is_panic(healthy, status.len(), self.config().panic_threshold)
    }

    /// The configuration the current pool was built from.
    pub fn config(&self) -> Arc<UpstreamConfig> {
        self.pool.load().cfg.clone()
    }
}

/// One server as `/ready` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerStatus {
    /// The address.
    pub addr: SocketAddr,
    /// Healthy by the active check and not ejected.
    pub healthy: bool,
    /// Ejected by passive health.
    pub ejected: bool,
    /// Requests in flight.
    pub in_flight: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// The limit of requests in flight (0 = unlimited).
    pub limit: usize,
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

//! Rate limiting (DESIGN.md capability 5), in `request_filter` after identity.
//!
//! Named policies (`[rate_limit.policies.NAME]`: a key, a quota, a burst) apply to the routes
//! that list them, plus an optional default policy applied to every route. Each policy is a
//! GCRA bucket per key: in this process with governor ([`local`]), or shared by every instance
//! through one atomic Redis script per check ([`distributed`]).
//!
//! - **Keys.** A bucket key combines parts of the request: `ip`, `tenant`, `subject`,
//!   `header:NAME`, `route`. A request lacking the identity or header a part needs is keyed by
//!   its client IP for that part instead, so anonymous traffic is limited per IP rather than
//!   sharing one bucket (or escaping the limit).
//! - **Client IP.** The socket peer, or the forwarded address when the peer is a trusted
//!   proxy ([`client_ip`], also used by the audit record through `Ctx::client_ip`).
//! - **Answers.** A rejected request gets 429 with `Retry-After`, the `RateLimit-Policy` and
//!   `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-09 and a JSON body; it never
//!   reaches the upstream. Admitted requests carry the same fields unless `headers = false`.
//! - **Failure.** Local mode cannot fail. In distributed mode a Redis error or a check slower
//!   than `redis_timeout` applies `on_backend_error`: `allow` (fail open) or `deny` (503).
//!   Both are counted in `omsgate_rate_limit_backend_errors_total` and
//!   `omsgate_rate_limit_checks_total{result="error_allowed"|"error_denied"}`.
//! - **Reload.** The limiter lives on the [`Pipeline`](crate::proxy::Pipeline): a reload
//!   applies new policies at once; local-mode buckets start fresh, distributed ones (in Redis)
//!   carry on.

pub mod config;
pub mod distributed;
pub mod ip;
pub mod local;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use self::config::{in_any, KeyPart, Mode, Policy};
pub use self::config::{OnBackendError, RateLimitConfig, RateLimitFile};
use self::distributed::{Distributed, SeenKeys};
pub use self::ip::client_ip;
use self::local::{LocalPolicy, Verdict};
use crate::metrics;
use crate::proxy::Ctx;
use crate::routes::Router;

/// The revision of the IETF RateLimit header fields draft the headers follow.
pub const HEADERS_DRAFT: &str = "draft-ietf-httpapi-ratelimit-headers-09";

/// Where the buckets live.
enum Backend {
    Local(Vec<Arc<LocalPolicy>>),
    Distributed(Arc<Distributed>),
}

/// The rate limiter of one pipeline: the policies, which routes use them, and their state.
pub struct Limiter {
    config: RateLimitConfig,
    /// Policy indices per route id; the last entry is the `other` route.
    route_policies: Vec<Vec<usize>>,
    /// `RateLimit-Policy` value per route id, built once.
    route_policy_headers: Vec<String>,
    backend: Backend,
    /// Distributed mode: per policy, the distinct keys this process checked (empty otherwise).
    seen: Vec<Arc<SeenKeys>>,
    housekeeping: AtomicBool,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("mode", &self.config.mode)
            .field("policies", &self.config.policies.len())
            .finish()
    }
}

/// What the limiter needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// Resolved client IP.
    pub ip: Option<IpAddr>,
    /// Verified tenant.
    pub tenant: Option<&'a str>,
    /// Verified subject.
    pub subject: Option<&'a str>,
    /// Request headers (for `header:NAME` keys).
    pub headers: &'a http::HeaderMap,
    /// Route name.
    pub route: &'a str,
}

/// One policy's state after a check, for the `RateLimit` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyState {
    /// Index of the policy.
    pub policy: usize,
    /// Requests that would still be admitted now.
    pub remaining: u32,
    /// Seconds until the bucket is full again (rounded up).
    pub reset_secs: u64,
}

/// The limiter's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No policy applies to the route.
    Unlimited,
    /// The client IP or subject is exempt.
    Exempt,
    /// Admitted by every policy.
    Admitted(Vec<PolicyState>),
    /// Rejected by `policy`; retry after `retry_after` seconds.
    Limited {
        /// Index of the rejecting policy.
        policy: usize,
        /// Seconds until a request fits again (at least 1).
        retry_after: u64,
        /// Every checked policy's state.
        states: Vec<PolicyState>,
    },
    /// Redis failed (distributed mode) and `on_backend_error` says what to do.
    BackendError(OnBackendError),
}

/// `RateLimit-Policy` and `RateLimit` values for an admitted request's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    /// `RateLimit-Policy`.
    pub policy: String,
    /// `RateLimit`.
    pub state: String,
}

// === impl Limiter ===

impl Limiter {
    /// Builds the limiter of a validated config. Inside a runtime (a reload) it starts opening
    /// its Redis connection at once; outside (at start) [`ConnectAtStart`] does that when the
    /// server runs. Housekeeping starts on first use.
    pub fn new(config: &RateLimitConfig, routes: &Router) -> Limiter {
        Limiter::build(config, routes, None)
    }

    /// [`Limiter::new`] for a reload: a local policy whose name, key, quota and key cap are
    /// unchanged keeps `previous`'s buckets, so that a reload never hands every client a fresh
    /// burst. Changed or new policies start empty; distributed state lives in Redis anyway.
    pub fn reloaded(config: &RateLimitConfig, routes: &Router, previous: &Limiter) -> Limiter {
        Limiter::build(config, routes, Some(previous))
    }

    fn build(config: &RateLimitConfig, routes: &Router, previous: Option<&Limiter>) -> Limiter {
        let route_policies: Vec<Vec<usize>> = routes
            .routes
            .iter()
            .chain(std::iter::once(&routes.other))
            .map(|r| {
                let mut v: Vec<usize> = config.default.into_iter().collect();
                for name in &r.rate_limit {
                    if let Some(i) = config.policy_index(name) {
                        if !v.contains(&i) {
                            v.push(i);
                        }
                    }
                }
                v
            })
            .collect();
        let route_policy_headers = route_policies
            .iter()
            .map(|ps| policy_header(&config.policies, ps))
            .collect();
        let backend = match &config.mode {
            Mode::Distributed { topology } => {
                match Distributed::new(
                    topology,
                    config.redis_timeout,
                    &config.key_prefix,
                    &config.trust,
                ) {
                    Ok(d) => Backend::Distributed(d),
                    Err(e) => {
                        // `from_file` already checked the URL; keep serving, limited locally.
                        tracing::error!(error = %e, "Invalid rate_limit Redis setting; limiting locally.");
                        Backend::Local(local_policies(config, previous))
                    }
                }
            }
            Mode::Local => Backend::Local(local_policies(config, previous)),
        };
        let seen = match &backend {
            Backend::Distributed(_) => seen_keys(config, previous),
            Backend::Local(_) => Vec::new(),
        };
        let limiter = Limiter {
            config: config.clone(),
            route_policies,
            route_policy_headers,
            backend,
            seen,
            housekeeping: AtomicBool::new(false),
        };
        limiter.connect_early();
        limiter
    }

    /// The configuration.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// The policies applied to route `route_id` (out of range means `other`).
    pub fn policies_of(&self, route_id: usize) -> &[usize] {
        let last = self.route_policies.len() - 1;
        &self.route_policies[route_id.min(last)]
    }

    /// Keys held by the local policies; in distributed mode the distinct keys this process
    /// checked within each policy's period. Also brings `omsgate_rate_limit_keys` up to date.
    pub fn keys(&self) -> usize {
        match &self.backend {
            Backend::Local(ps) => ps.iter().map(|p| p.refresh_gauge()).sum(),
            Backend::Distributed(_) => self.seen.iter().map(|s| s.refresh()).sum(),
        }
    }

    /// Brings `omsgate_rate_limit_keys` up to date (before the metrics are rendered).
    pub fn refresh_gauges(&self) {
        self.keys();
    }

    /// Checks one request of route `route_id`, counting the result in the metrics.
    pub async fn decide(self: &Arc<Self>, route_id: usize, caller: &Caller<'_>) -> Decision {
        let policies = self.policies_of(route_id);
        if policies.is_empty() {
            return Decision::Unlimited;
        }
        let exempt = caller
            .ip
            .is_some_and(|ip| in_any(&self.config.exempt_cidrs, ip))
            || caller
                .subject
                .is_some_and(|s| self.config.exempt_subjects.iter().any(|e| e == s));
        if exempt {
            metrics::RATE_LIMIT_CHECKS
                .with_label_values(&["exempt"])
                .inc();
            return Decision::Exempt;
        }
        let verdicts = match &self.backend {
            Backend::Local(local) => {
                self.start_housekeeping();
                let mut out = Vec::with_capacity(policies.len());
                for &i in policies {
                    let v =
                        local[i].check(&bucket_key(&self.config.policies[i], caller, &self.config));
                    let rejected = matches!(v, Verdict::Reject { .. });
                    out.push(v);
                    // Later policies are not charged for a request that will not pass.
                    if rejected {
                        break;
                    }
                }
                out
            }
            Backend::Distributed(d) => {
                self.start_housekeeping();
                let buckets: Vec<(String, config::Quota)> = policies
                    .iter()
                    .map(|&i| {
                        let p = &self.config.policies[i];
                        let key = bucket_key(p, caller, &self.config);
                        self.seen[i].saw(&key);
                        (d.redis_key(&p.name, &key), p.quota)
                    })
                    .collect();
                match d.check(&buckets).await {
                    Ok(v) => v,
                    Err(e) => {
                        metrics::RATE_LIMIT_BACKEND_ERRORS.inc();
                        d.warn(&e);
                        let how = self.config.on_backend_error;
                        let label = match how {
                            OnBackendError::Allow => "error_allowed",
                            OnBackendError::Deny => "error_denied",
                        };
                        metrics::RATE_LIMIT_CHECKS.with_label_values(&[label]).inc();
                        return Decision::BackendError(how);
                    }
                }
            }
        };
        let mut states = Vec::with_capacity(verdicts.len());
        let mut limited = None;
        for (&policy, v) in policies.iter().zip(&verdicts) {
            let (remaining, reset) = match *v {
                Verdict::Admit { remaining, reset } => (remaining, reset),
                Verdict::Reject { wait, reset } => {
                    limited = Some((policy, ceil_secs(wait).max(1)));
                    (0, reset)
                }
            };
            states.push(PolicyState {
                policy,
                remaining,
                reset_secs: ceil_secs(reset),
            });
        }
        match limited {
            None => {
                metrics::RATE_LIMIT_CHECKS
                    .with_label_values(&["allowed"])
                    .inc();
                Decision::Admitted(states)
            }
            Some((policy, retry_after)) => {
                metrics::RATE_LIMIT_CHECKS
                    .with_label_values(&["limited"])
                    .inc();
                metrics::RATE_LIMITED
                    .with_label_values(&[caller.route, &self.config.policies[policy].name])
                    .inc();
                Decision::Limited {
                    policy,
                    retry_after,
                    states,
                }
            }
        }
    }

    /// The `RateLimit-Policy` value of a route.
    pub fn policy_header(&self, route_id: usize) -> &str {
        let last = self.route_policy_headers.len() - 1;
        &self.route_policy_headers[route_id.min(last)]
    }

    /// The `RateLimit` value for `states`: `"name";r=REMAINING;t=SECONDS, ...`.
    pub fn state_header(&self, states: &[PolicyState]) -> String {
        let mut out = String::new();
        for (i, s) in states.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(
                out,
                "\"{}\";r={};t={}",
                self.config.policies[s.policy].name, s.remaining, s.reset_secs
            );
        }
        out
    }

    /// Opens the distributed backend's Redis connection now, in the background, so that the
    /// first checks do not spend their `redis_timeout` waiting for it (a TLS handshake with a
    /// cluster takes longer than the default 20 ms). Called by every build inside a runtime (a
    /// reload) and at start by [`ConnectAtStart`]; nothing in local mode.
    pub fn connect_early(&self) {
        if let Backend::Distributed(d) = &self.backend {
            d.start_connecting();
        }
    }

    /// Starts (once) the task that evicts idle keys every `cleanup_interval` (distributed mode:
    /// that counts the distinct keys seen); it ends when the limiter is dropped (a reload).
    fn start_housekeeping(self: &Arc<Self>) {
        if self.housekeeping.load(Ordering::Relaxed)
            || self.housekeeping.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Not inside a runtime (a synchronous caller): the key cap still bounds the state.
            self.housekeeping.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Limiter> = Arc::downgrade(self);
        let every = self.config.cleanup_interval;
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                if let Backend::Local(ps) = &this.backend {
                    for p in ps {
                        p.housekeeping();
                    }
                }
                for s in &this.seen {
                    s.refresh();
                }
            }
        });
    }
}

/// The local state of each policy: carried over from `previous` when the policy is the same
/// (name, key, quota, key cap), fresh otherwise.
fn local_policies(config: &RateLimitConfig, previous: Option<&Limiter>) -> Vec<Arc<LocalPolicy>> {
    let same = |p: &Policy| -> Option<Arc<LocalPolicy>> {
        let prev = previous?;
        let Backend::Local(states) = &prev.backend else {
            return None;
        };
        if prev.config.max_keys != config.max_keys {
            return None;
        }
        let i = prev
            .config
            .policies
            .iter()
            .position(|q| q.name == p.name && q.key == p.key && q.quota == p.quota)?;
        states.get(i).cloned()
    };
    config
        .policies
        .iter()
        .map(|p| {
            same(p).unwrap_or_else(|| Arc::new(LocalPolicy::new(&p.name, p.quota, config.max_keys)))
        })
        .collect()
}

/// Distributed mode: the distinct-key set of each policy, carried over from `previous` when it
/// counts the same (name, key, period, key cap), empty otherwise.
fn seen_keys(config: &RateLimitConfig, previous: Option<&Limiter>) -> Vec<Arc<SeenKeys>> {
    config
        .policies
        .iter()
        .map(|p| {
            let kept = previous.and_then(|prev| {
                let i = prev
                    .config
                    .policies
                    .iter()
                    .position(|q| q.name == p.name && q.key == p.key)?;
                prev.seen
                    .get(i)
                    .filter(|s| s.counts_like(p.quota.period, config.max_keys))
                    .cloned()
            });
            kept.unwrap_or_else(|| Arc::new(SeenKeys::new(p.quota.period, config.max_keys)))
        })
        .collect()
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `"name";q=COUNT;w=SECONDS, ...` for the policies `ps`.
fn policy_header(policies: &[Policy], ps: &[usize]) -> String {
    let mut out = String::new();
    for (i, &p) in ps.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let p = &policies[p];
        let _ = write!(
            out,
            "\"{}\";q={};w={}",
            p.name,
            p.quota.count,
            ceil_secs(p.quota.period).max(1)
        );
    }
    out
}

/// The bucket key of a request under `policy`: its parts, each tagged and length-prefixed so
/// that no two different requests share a key by accident (`t5:acme1|r14:invoice_create`).
/// A part whose identity or header is missing uses the client IP (`ip` tag) instead; header
/// values (API keys) enter only as a hash, so secrets never appear in Redis key names, and
/// only up to `header_key_max_bytes` (a longer value is keyed by the client IP, so a client
/// cannot mint unbounded keys of unbounded size). An IPv6 client is keyed by its
/// `ipv6_prefix` network.
pub fn bucket_key(policy: &Policy, c: &Caller<'_>, config: &RateLimitConfig) -> String {
    let mut key = String::with_capacity(48);
    let ip = |key: &mut String| match c.ip {
        Some(ip) => {
            let s = key_ip(ip, config.ipv6_prefix).to_string();
            let _ = write!(key, "ip{}:{s}", s.len());
        }
        None => key.push_str("ip0:"),
    };
    for (i, part) in policy.key.iter().enumerate() {
        if i > 0 {
            key.push('|');
        }
        let tagged = |key: &mut String, tag: &str, v: &str| {
            let _ = write!(key, "{tag}{}:{v}", v.len());
        };
        match part {
            KeyPart::Ip => ip(&mut key),
            KeyPart::Tenant => match c.tenant {
                Some(t) => tagged(&mut key, "t", t),
                None => ip(&mut key),
            },
            KeyPart::Subject => match c.subject {
                Some(s) => tagged(&mut key, "s", s),
                None => ip(&mut key),
            },
            KeyPart::Route => tagged(&mut key, "r", c.route),
            KeyPart::Header(name) => match c.headers.get(name) {
                Some(v) if v.len() > config.header_key_max_bytes => {
                    metrics::RATE_LIMIT_HEADER_KEYS
                        .with_label_values(&["too_long"])
                        .inc();
                    ip(&mut key)
                }
                Some(v) if !v.is_empty() => {
                    metrics::RATE_LIMIT_HEADER_KEYS
                        .with_label_values(&["keyed"])
                        .inc();
                    let _ = write!(
                        key,
                        "h{}:{}:{:016x}",
                        name.as_str().len(),
                        name,
                        fnv1a(v.as_bytes())
                    );
                }
                _ => ip(&mut key),
            },
        }
    }
    key
}

/// The address an `ip` key uses: IPv4 as is, IPv6 cut to its first `v6_prefix` bits.
pub fn key_ip(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mask = match v6_prefix {
                0 => 0,
                p if p >= 128 => u128::MAX,
                p => !(u128::MAX >> p),
            };
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        v4 => v4,
    }
}

/// FNV-1a, 64 bits: stable across processes and versions, so every instance derives the same
/// Redis key from the same header value.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// === request_filter / response_filter hooks ===

/// Checks the request against its route's policies. Answers it (429, or 503 when Redis fails
/// and `on_backend_error = "deny"`) and returns `true` when it must not go upstream; otherwise
/// remembers the `RateLimit` headers for [`response_headers`] and returns `false`.
pub async fn check(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
    let limiter = ctx.pipeline.limiter.clone();
    if limiter.policies_of(ctx.route_id).is_empty() {
        return Ok(false);
    }
    let decision = {
        let caller = Caller {
            ip: ctx.client_ip,
            tenant: ctx.identity.tenant.as_deref(),
            subject: ctx.identity.subject.as_deref(),
            headers: &session.req_header().headers,
            route: &ctx.route().name,
        };
        limiter.decide(ctx.route_id, &caller).await
    };
    match decision {
        Decision::Unlimited | Decision::Exempt | Decision::BackendError(OnBackendError::Allow) => {
            Ok(false)
        }
        Decision::Admitted(states) => {
            if limiter.config.headers {
                ctx.rate_limit_headers = Some(Headers {
                    policy: limiter.policy_header(ctx.route_id).to_string(),
                    state: limiter.state_header(&states),
                });
            }
            Ok(false)
        }
        Decision::Limited {
            policy,
            retry_after,
            states,
        } => {
            let body = Bytes::from(
                serde_json::json!({
                    "error": "rate limited",
                    "policy": limiter.config.policies[policy].name,
                    "retry_after": retry_after,
                    "request_id": ctx.request_id,
                })
                .to_string(),
            );
            let mut header = crate::respond::json_header(429, body.len(), &ctx.request_id)?;
            header.insert_header(http::header::RETRY_AFTER, retry_after.to_string())?;
            header.insert_header("ratelimit-policy", limiter.policy_header(ctx.route_id))?;
            header.insert_header("ratelimit", limiter.state_header(&states))?;
            ctx.rate_limited = true;
            ctx.local_status = Some(429);
            crate::respond::send_json(session, header, body).await?;
            Ok(true)
        }
        Decision::BackendError(OnBackendError::Deny) => {
            ctx.rate_limited = true;
            ctx.local_status = Some(503);
            crate::respond::send_error(session, 503, "rate limiter unavailable", &ctx.request_id)
                .await?;
            Ok(true)
        }
    }
}

/// Adds the `RateLimit-Policy` / `RateLimit` fields to an admitted request's response.
pub fn response_headers(response: &mut ResponseHeader, ctx: &Ctx) -> pingora::Result<()> {
    if let Some(h) = &ctx.rate_limit_headers {
        response.insert_header("ratelimit-policy", &h.policy)?;
        response.insert_header("ratelimit", &h.state)?;
    }
    Ok(())
}

// === ConnectAtStart ===

/// Background service: opens the start-up limiter's Redis connection as the server starts
/// ([`Limiter::connect_early`]); the limiter of a reload connects as it is built. Holds the
/// limiter weakly, so a reload can drop it.
pub struct ConnectAtStart {
    limiter: Weak<Limiter>,
}

impl ConnectAtStart {
    /// The service for `limiter`.
    pub fn new(limiter: &Arc<Limiter>) -> ConnectAtStart {
        ConnectAtStart {
            limiter: Arc::downgrade(limiter),
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ConnectAtStart {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        if let Some(limiter) = self.limiter.upgrade() {
            limiter.connect_early();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limiter(toml_text: &str) -> Arc<Limiter> {
        let c = Config::parse(toml_text).unwrap();
        Arc::new(Limiter::new(&c.rate_limit, &c.routes))
    }

    fn caller<'a>(h: &'a http::HeaderMap, ip: &str, tenant: Option<&'a str>) -> Caller<'a> {
        Caller {
            ip: ip.parse().ok(),
            tenant,
            subject: None,
            headers: h,
            route: "invoice_create",
        }
    }

    const CONFIG: &str = r#"
        [rate_limit]
        default = "per_ip"
        exempt_cidrs = ["192.0.2.0/24"]
        [rate_limit.policies.per_ip]
        quota = "1000/minute"
        [rate_limit.policies.tenant_writes]
        key = ["tenant", "route"]
        quota = "2/hour"
        [[route]]
        name = "invoice_create"
        path = "/api/v1/invoices"
        methods = ["POST"]
        rate_limit = ["tenant_writes"]
    "#;

    #[tokio::test]
    async fn route_and_default_policies_apply() {
        let l = limiter(CONFIG);
        let tw = l.config.policy_index("tenant_writes").unwrap();
        let ip = l.config.policy_index("per_ip").unwrap();
        assert_eq!(l.policies_of(0), &[ip, tw]);
        assert_eq!(l.policies_of(1), &[ip]);
        assert_eq!(l.policies_of(usize::MAX), &[ip]);
        assert_eq!(
            l.policy_header(0),
            "\"per_ip\";q=1000;w=60, \"tenant_writes\";q=2;w=3600"
        );
        let h = http::HeaderMap::new();
        let acme = caller(&h, "198.51.100.1", Some("acme"));
        for left in [1, 0] {
            match l.decide(0, &acme).await {
                Decision::Admitted(s) => {
                    assert_eq!(s[1].remaining, left);
                    assert_eq!(
                        l.state_header(&s[1..]),
                        format!("\"tenant_writes\";r={left};t={}", 1800 * (2 - left))
                    );
                }
                d => panic!("{d:?}"),
            }
        }
        match l.decide(0, &acme).await {
            Decision::Limited {
                policy,
                retry_after,
                ..
            } => {
                assert_eq!(policy, tw);
                assert!(retry_after > 1700 && retry_after <= 1800, "{retry_after}");
            }
            d => panic!("{d:?}"),
        }
        // Another tenant from the same IP has its own bucket; the IP bucket still admits.
        assert!(matches!(
            l.decide(0, &caller(&h, "198.51.100.1", Some("globex")))
                .await,
            Decision::Admitted(_)
        ));
        // No tenant: keyed by the client IP instead.
        assert!(matches!(
            l.decide(0, &caller(&h, "198.51.100.2", None)).await,
            Decision::Admitted(_)
        ));
        assert!(matches!(
            l.decide(0, &caller(&h, "198.51.100.2", None)).await,
            Decision::Admitted(_)
        ));
        assert!(matches!(
            l.decide(0, &caller(&h, "198.51.100.2", None)).await,
            Decision::Limited { .. }
        ));
        assert!(matches!(
            l.decide(0, &caller(&h, "198.51.100.3", None)).await,
            Decision::Admitted(_)
        ));
        // Exempt network.
        for _ in 0..5 {
            assert_eq!(
                l.decide(0, &caller(&h, "192.0.2.9", Some("acme"))).await,
                Decision::Exempt
            );
        }
    }

    #[test]
    fn bucket_keys_are_unambiguous() {
        let c = Config::parse(
            r#"
            [rate_limit.policies.p]
            key = ["tenant", "subject", "header:x-api-key", "route"]
            quota = "1/second"
            "#,
        )
        .unwrap();
        let p = &c.rate_limit.policies[0];
        let mut h = http::HeaderMap::new();
        h.insert("x-api-key", "secret".parse().unwrap());
        let a = Caller {
            ip: "10.0.0.1".parse().ok(),
            tenant: Some("a|s1:b"),
            subject: Some("c"),
            headers: &h,
            route: "r",
        };
        let b = Caller {
            tenant: Some("a"),
            subject: Some("b|s1:c"),
            ..a
        };
        let rl = &c.rate_limit;
        let ka = bucket_key(p, &a, rl);
        assert_ne!(ka, bucket_key(p, &b, rl));
        assert!(!ka.contains("secret"), "{ka}");
        let none = http::HeaderMap::new();
        let anon = Caller {
            tenant: None,
            subject: None,
            headers: &none,
            ..a
        };
        assert_eq!(
            bucket_key(p, &anon, rl),
            "ip8:10.0.0.1|ip8:10.0.0.1|ip8:10.0.0.1|r1:r"
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix_and_header_keys_are_bounded() {
        let c = Config::parse(
            r#"
            [rate_limit]
            header_key_max_bytes = 16
            [rate_limit.policies.p]
            key = ["ip", "header:x-api-key"]
            quota = "1/second"
            "#,
        )
        .unwrap();
        let p = &c.rate_limit.policies[0];
        let rl = &c.rate_limit;
        let none = http::HeaderMap::new();
        let at = |ip: &str| Caller {
            ip: ip.parse().ok(),
            tenant: None,
            subject: None,
            headers: &none,
            route: "r",
        };
        // Two addresses of one /64 share a bucket; another /64 does not.
        let k1 = bucket_key(p, &at("2001:db8:1:2::1"), rl);
        assert_eq!(
            k1,
            bucket_key(p, &at("2001:db8:1:2:ffff:ffff:ffff:ffff"), rl)
        );
        assert_ne!(k1, bucket_key(p, &at("2001:db8:1:3::1"), rl));
        assert_eq!(
            bucket_key(p, &at("10.0.0.1"), rl),
            "ip8:10.0.0.1|ip8:10.0.0.1"
        );
        let mut long = http::HeaderMap::new();
        long.insert("x-api-key", "k".repeat(17).parse().unwrap());
        let mut short = http::HeaderMap::new();
        short.insert("x-api-key", "k".repeat(16).parse().unwrap());
        let with = |h| Caller {
            headers: h,
            ..at("10.0.0.1")
        };
        assert_eq!(bucket_key(p, &with(&long), rl), "ip8:10.0.0.1|ip8:10.0.0.1");
        assert!(bucket_key(p, &with(&short), rl).contains("h9:x-api-key:"));
        assert_eq!(
            key_ip("2001:db8::1".parse().unwrap(), 128),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }
}

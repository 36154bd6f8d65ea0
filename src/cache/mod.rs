//! Response cache (DESIGN.md capability 3), on Pingora's own HTTP cache.
//!
//! Pingora's cache state machine does the HTTP work: coalescing concurrent misses behind a cache
//! lock, stale-while-revalidate with one background refresh, stale-if-error, `304` revalidation
//! against the origin, `If-None-Match` answered from the cache, `Vary` variants, `Age`. This
//! module supplies what is specific to omsgate:
//!
//! - the policy per route ([`config`]) and the storage decision per response ([`policy`]);
//! - keys scoped to the verified identity ([`key`]): a response stored for one tenant or subject
//!   is looked up only under that tenant's or subject's key, and each entry also records its
//!   scope, compared on every hit;
//! - invalidation by generations ([`generations`]): writes and `POST /purge` bump per-tenant,
//!   per-resource counters that are part of every key, and other instances learn it over pub/sub;
//!   every successful unsafe request also bumps its target URI (and the same-origin `Location` /
//!   `Content-Location` of its answer) in the requester's namespaces (RFC 9111 §4.4);
//! - two-tier storage ([`storage`]): a bounded in-process L1 in front of Redis;
//! - failing open ([`backend`]): Redis errors or slowness are misses and bypasses, never client
//!   errors.
//!
//! The phase hooks at the end are called by `proxy.rs`, one per Pingora phase:
//!
//! | phase                   | hook                       | what                                     |
//! |-------------------------|----------------------------|------------------------------------------|
//! | `request_filter` (end)  | [`prepare`]                | scope, generations (async), key          |
//! | `request_cache_filter`  | [`request_cache_filter`]   | enable Pingora's cache for the request   |
//! | `cache_key_callback`    | [`cache_key`]              | the prepared key                         |
//! | `cache_hit_filter`      | [`cache_hit_filter`]       | scope check of the stored entry          |
//! | `upstream_response_filter` | [`upstream_response_filter`] | keep a revalidation's `304` header  |
//! | `response_cache_filter` | [`response_cache_filter`]  | store or not, TTL, stale windows         |
//! | `cache_vary_filter`     | [`cache_vary_filter`]      | `Vary` variance                          |
//! | `should_serve_stale`    | [`should_serve_stale`]     | stale-if-error on upstream failures      |
//! | `response_filter`       | [`response_filter`]        | `x-cache`, `Cache-Status`, `Age`,        |
//! |                         |                            | targeted cache fields                    |
//! |                         |                            | removed, invalidation by writes          |
//! | `logging`               | [`logging`]                | `omsgate_cache_requests_total`           |

mod backend;
mod config;
mod generations;
pub(crate) mod key;
mod policy;
mod storage;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use once_cell::sync::OnceCell;
use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, HitHandler,
    NoCacheReason, RespCacheable, VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use pingora::{Error, ErrorSource, ErrorType, Result};
use serde::Deserialize;

pub use self::config::{
    CacheConfig, CacheFile, MemoryFile, RouteCacheFile, RoutePolicy, Scope, DEFAULT_STATUSES,
};
pub use self::generations::Bumped;
pub use self::key::ScopeId;
pub use self::policy::{CACHE_CONTROL_FIELDS, SCOPE_HEADER};
pub use self::storage::TieredStorage;

use self::backend::Redis;
use self::generations::{Generations, PURGE_TIMEOUT};
use crate::metrics;
use crate::proxy::Ctx;

/// Response header with the cache status.
pub const X_CACHE: &str = "x-cache";

/// RFC 9211 response header; omsgate appends its own entry (`omsgate; ...`) to any the OMS sent.
pub const CACHE_STATUS: &str = "cache-status";

/// Raw zstd dictionary for stored response headers: the usual names and values of OMS answers.
const HEADER_DICT: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: \r\n\
date: Mon, Tue, Wed, Thu, Fri, Sat, Sun, Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec 2026 GMT\r\n\
server: uvicorn\r\ncache-control: max-age=, s-maxage=, public, stale-while-revalidate=\r\n\
etag: \"W/\r\nlast-modified: \r\nvary: accept-encoding, accept-language, authorization\r\n\
content-encoding: gzip\r\nx-request-id: \r\nx-omsgate-cache-scope: tenant:subject:public:\r\n";

/// How long a failed write invalidation keeps being retried in the background.
const INVALIDATION_RETRY_FOR: Duration = Duration::from_secs(30);

// === Cache ===

/// The process-wide cache: storage tiers, cache lock, generations, Redis handle.
///
/// Pingora wants its storage and lock as `&'static`, so there is one per process, created on
/// first use ([`Cache::global`]) without connecting anywhere: the Redis connection is made inside
/// the runtime when first needed. A reload keeps it; the settings that shape it (`redis_url`/`redis`,
/// `key_prefix`, `memory`, `redis_timeout`, `generation_cache_ttl`, `max_ttl`, `lock_timeout`)
/// take effect on restart. Route policies and the other `[cache]` keys are read per request from
/// the config snapshot of the request.
pub struct Cache {
    storage: TieredStorage,
    lock: Box<CacheKeyLockImpl>,
    generations: Generations,
    redis: Option<&'static Redis>,
    settings: CacheConfig,
    /// Whether fresh L1 hits take the fast path ([`fresh_l1_hit`]); off only with
    /// `OMSGATE_CACHE_FAST_PATH=off`, to compare the two paths.
    fast_path: bool,
}

/// The environment variable that turns the fresh-hit fast path off (`off`, `0` or `false`), so
/// that tests and benches can run every hit through Pingora's cache state machine instead.
pub const FAST_PATH_ENV: &str = "OMSGATE_CACHE_FAST_PATH";

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("storage", &self.storage)
            .field("generations", &self.generations)
            .finish()
    }
}

static GLOBAL: OnceCell<&'static Cache> = OnceCell::new();

impl Cache {
    /// Builds a cache and leaks it (once per process; tests and benches may build more).
    pub fn leak(config: &CacheConfig) -> &'static Cache {
        // Stored headers are zstd-compressed with this raw-content dictionary. It is part of the
        // stored format: changing it makes older entries undecodable (misses), so bump the key
        // version in `key.rs` with it. Setting it twice is a no-op.
        pingora::cache::set_compression_dict_content(std::borrow::Cow::Borrowed(HEADER_DICT));
        let redis = config.redis.as_ref().and_then(|topology| {
            match Redis::new(topology, config.redis_timeout, &config.trust) {
                Ok(r) => Some(&*Box::leak(Box::new(r))),
                Err(e) => {
                    tracing::error!(error = %e, "Cache Redis URL unusable; caching in memory only.");
                    None
                }
            }
        });
        if redis.is_none() && config.l1_max_bytes == 0 {
            tracing::warn!(
                "cache.memory.max_bytes is 0 and there is no cache.redis_url or cache.redis: nothing will be cached."
            );
        }
        // Generation keys outlive every entry keyed under them (see `generations`).
        let retention = config.max_ttl + config.generation_cache_ttl + Duration::from_secs(3600);
        let cache = Cache {
            storage: TieredStorage::new(
                config.l1_max_bytes,
                redis,
                &config.key_prefix,
                config.max_ttl,
            ),
            lock: CacheLock::new_boxed(config.lock_timeout),
            generations: Generations::new(
                &config.key_prefix,
                redis,
                config.generation_cache_ttl,
                retention,
            ),
            redis,
            settings: config.clone(),
            fast_path: !matches!(
                std::env::var(FAST_PATH_ENV).as_deref(),
                Ok("off" | "0" | "false")
            ),
        };
        if !cache.fast_path {
            tracing::info!("{FAST_PATH_ENV} is off: every cache hit goes through Pingora's cache.");
        }
        Box::leak(Box::new(cache))
    }

    /// The process-wide cache, built from the first config it is asked for.
    pub fn global(config: &CacheConfig) -> &'static Cache {
        let cache = *GLOBAL.get_or_init(|| Cache::leak(config));
        if cache.settings.backend_settings() != config.backend_settings()
            || cache.settings.max_ttl != config.max_ttl
            || cache.settings.lock_timeout != config.lock_timeout
        {
            tracing::warn!("Cache storage settings changed; they take effect on restart.");
        }
        cache
    }

    /// Whether anything can be stored (an L1, Redis, or both).
    pub fn can_store(&self) -> bool {
        self.redis.is_some() || self.settings.l1_max_bytes > 0
    }

    /// Redis state for `/ready`: `None` without Redis, else whether it is connected.
    pub fn redis_connected(&self) -> Option<bool> {
        self.redis.map(|r| r.connected())
    }

    /// Sets the L1 gauges.
    pub fn refresh_gauges(&self) {
        self.storage.refresh_gauges();
    }

    /// The background service keeping the invalidation subscription (with Redis only).
    pub fn listener(&'static self) -> Option<GenBackgroundService<Listener>> {
        self.redis?;
        Some(background_service(
            "cache invalidation",
            Listener { cache: self },
        ))
    }

    /// Serves `POST /purge`: bumps the generations named by `req` and tells other instances.
    pub async fn purge(&'static self, req: &PurgeRequest) -> Result<usize, PurgeError> {
        let prefix = self.generations.prefix();
        let keys: Vec<String> = match (req.all, &req.tenant, req.resources.is_empty()) {
            (true, None, true) => vec![self.generations.epoch_key().to_string()],
            (true, _, _) => {
                return Err(PurgeError::Invalid(
                    "`all` cannot be combined with `tenant` or `resources`".into(),
                ))
            }
            (false, None, true) => {
                return Err(PurgeError::Invalid(
                    "name a `tenant`, `resources`, or both; or send {\"all\": true}".into(),
                ))
            }
            (false, Some(t), _) if t.is_empty() => {
                return Err(PurgeError::Invalid("`tenant` is empty".into()))
            }
            (false, tenant, _) => {
                let ns = tenant
                    .as_deref()
                    .map_or_else(|| key::PUBLIC_NAMESPACE.to_string(), key::escape);
                if req.resources.is_empty() {
                    vec![key::namespace_key(prefix, &ns)]
                } else if let Some(r) = req.resources.iter().find(|r| r.is_empty()) {
                    return Err(PurgeError::Invalid(format!("empty resource name {r:?}")));
                } else {
                    req.resources
                        .iter()
                        .map(|r| key::resource_key(prefix, &ns, r))
                        .collect()
                }
            }
        };
        match self.generations.bump(&keys, req.all, PURGE_TIMEOUT).await {
            Bumped::Done => {
                if req.all {
                    self.storage.clear_l1();
                }
                metrics::CACHE_INVALIDATIONS
                    .with_label_values(&["purge"])
                    .inc();
                tracing::info!(tenant = ?req.tenant, resources = ?req.resources, all = req.all, "Cache purged.");
                Ok(keys.len())
            }
            Bumped::Failed => Err(PurgeError::Backend),
        }
    }

    /// Bumps the generations a successful write touched, retrying in the background if Redis
    /// does not answer in time.
    async fn invalidate(&'static self, keys: Vec<String>, route: &str) {
        let deadline = self.settings.redis_timeout;
        if self.generations.bump(&keys, false, deadline).await == Bumped::Done {
            metrics::CACHE_INVALIDATIONS
                .with_label_values(&["write"])
                .inc();
            return;
        }
        let route = route.to_string();
        tracing::warn!(%route, "Write could not invalidate the cache in time; retrying in the background.");
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut wait = Duration::from_millis(100);
            while started.elapsed() < INVALIDATION_RETRY_FOR {
                tokio::time::sleep(wait).await;
                if self.generations.bump(&keys, false, PURGE_TIMEOUT).await == Bumped::Done {
                    metrics::CACHE_INVALIDATIONS
                        .with_label_values(&["write"])
                        .inc();
                    tracing::info!(%route, "Delayed cache invalidation done.");
                    return;
                }
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            tracing::error!(%route, keys = ?keys, "Cache invalidation after a write failed; dependent entries stay until their TTL.");
        });
    }
}

/// Keeps the invalidation subscription running.
pub struct Listener {
    cache: &'static Cache,
}

#[async_trait::async_trait]
impl BackgroundService for Listener {
    async fn start(&self, shutdown: ShutdownWatch) {
        let cache = self.cache;
        cache
            .generations
            .listen(move || cache.storage.clear_l1(), shutdown)
            .await;
    }
}

/// Body of `POST /purge`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// The tenant whose entries to invalidate; absent means publicly scoped entries.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Resources/tags to invalidate (e.g. `"invoice:42"`, `"invoices"`); empty with a tenant
    /// means everything of that tenant.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Invalidate everything, on every instance.
    #[serde(default)]
    pub all: bool,
}

/// Why a purge failed.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The request names nothing sensible.
    #[error("invalid purge request: {0}")]
    Invalid(String),
    /// Redis did not take the invalidation.
    #[error("the cache backend (Redis) did not answer; nothing was purged, try again")]
    Backend,
}

// === Per request ===

/// The cache's part of the per-request context.
#[derive(Debug, Default)]
pub struct RequestCache {
    state: State,
    /// A stale copy was served because the upstream failed.
    served_stale: bool,
    /// The length of the decoded copy a fresh L1 hit serves ([`serve_decoded`]).
    decoded: Option<usize>,
    /// The answer is a fresh L1 hit sent by the fast path ([`fresh_l1_hit`]).
    fast: bool,
    /// The header of a `304` that revalidated the stored entry ([`upstream_response_filter`]).
    not_modified: Option<http::HeaderMap>,
}

#[derive(Debug, Default)]
enum State {
    /// The route is not cached (or the cache is off).
    #[default]
    Off,
    /// The route is cached but this request cannot use the cache.
    Bypass,
    /// The request uses the cache under this key; `tag` names its scope.
    Ready { primary: Vec<u8>, tag: String },
}

impl RequestCache {
    /// Whether the request goes through the cache.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }
}

// === Phase hooks ===

/// `request_filter`, last: decides whether the request may use the cache and builds its key
/// (reading generations, from memory or Redis under the deadline).
pub async fn prepare(session: &Session, ctx: &mut Ctx) {
    let state = {
        let route = ctx.route();
        let Some(policy) = &route.cache else { return };
        let config = &ctx.pipeline.config.cache;
        let cache = ctx.pipeline.cache;
        let req = session.req_header();
        if !config.enabled {
            State::Off
        } else if !(req.method == http::Method::GET || req.method == http::Method::HEAD)
            || !cache.can_store()
        {
            State::Bypass
        } else if let Some(scope) = ScopeId::of(policy.scope, &ctx.identity) {
            let prefix = cache.generations.prefix();
            let ns = scope.namespace();
            let mut keys = Vec::with_capacity(3 + policy.resources.len());
            keys.push(cache.generations.epoch_key().to_string());
            keys.push(key::namespace_key(prefix, &ns));
            keys.push(cache.generations.uri_key(&ns, req.uri.path()));
            for r in &policy.resources {
                keys.push(key::resource_key(prefix, &ns, &r.render(&ctx.params)));
            }
            match cache.generations.current(&keys).await {
                Some(gens) => State::Ready {
                    primary: key::primary(
                        &route.name,
                        req.uri.path(),
                        req.uri.query(),
                        &scope,
                        &gens,
                    ),
                    tag: scope.tag(),
                },
                None => State::Bypass,
            }
        } else {
            State::Bypass
        }
    };
    ctx.cache.state = state;
}

/// `request_cache_filter`: turns Pingora's cache on for requests [`prepare`] made ready.
pub fn request_cache_filter(session: &mut Session, ctx: &mut Ctx) {
    if !ctx.cache.is_ready() {
        return;
    }
    let cache: &'static Cache = ctx.pipeline.cache;
    let config = &ctx.pipeline.config.cache;
    let mut overrides = CacheOptionOverrides::default();
    overrides.wait_timeout = Some(config.lock_timeout);
    session.cache.enable(
        &cache.storage,
        None,
        None,
        Some(cache.lock.as_ref()),
        Some(overrides),
    );
    session.cache.set_max_file_size_bytes(config.max_body);
}

/// `cache_key_callback`: the key built by [`prepare`]; the route name tags it for metrics.
pub fn cache_key(ctx: &Ctx) -> Result<CacheKey> {
    match &ctx.cache.state {
        State::Ready { primary, .. } => {
            Ok(CacheKey::new(primary.clone(), ctx.route().name.clone()))
        }
        _ => Error::e_explain(
            ErrorType::InternalError,
            "cache key asked for an uncached request",
        ),
    }
}

/// `cache_hit_filter`: an entry whose recorded scope differs from the request's is never served
/// (the key already prevents it; this is the second line of defence).
pub fn cache_hit_filter(meta: &CacheMeta, ctx: &Ctx) -> Option<ForcedFreshness> {
    let State::Ready { tag, .. } = &ctx.cache.state else {
        return Some(ForcedFreshness::ForceMiss);
    };
    if scope_matches(meta, tag) {
        return None;
    }
    let stored = meta.headers().get(SCOPE_HEADER);
    tracing::error!(request_id = %ctx.request_id, expected = %tag, stored = ?stored, "Cache entry scope mismatch; not served.");
    Some(ForcedFreshness::ForceMiss)
}

/// Whether a stored entry records the scope `tag` of the request looking it up.
fn scope_matches(meta: &CacheMeta, tag: &str) -> bool {
    meta.headers()
        .get(SCOPE_HEADER)
        .is_some_and(|v| v.as_bytes() == tag.as_bytes())
}

/// A fresh L1 entry the fast path sends ([`fresh_l1_hit`]).
pub struct FastHit(storage::L1Hit);

/// `request_filter`, after [`prepare`]: the fresh-hit fast path. A request that Pingora's cache
/// would answer with a fresh hit from the L1 — GET or HEAD without `Range`, an entry in the L1
/// under its key, without `Vary` variance, of the request's scope and fresh — is answered from
/// here, without the cache state machine. The decision uses the functions Pingora's path calls
/// ([`cache_key`], [`cache_vary_filter`], the scope check of [`cache_hit_filter`],
/// [`CacheMeta::is_fresh`]); anything else (no entry, stale, a variant, Redis-only, a range)
/// returns `None` and goes through Pingora's cache as before.
pub fn fresh_l1_hit(session: &Session, ctx: &Ctx) -> Option<FastHit> {
    let State::Ready { tag, .. } = &ctx.cache.state else {
        return None;
    };
    let cache: &'static Cache = ctx.pipeline.cache;
    let req = session.req_header();
    if !cache.fast_path
        || !(req.method == http::Method::GET || req.method == http::Method::HEAD)
        || req.headers.contains_key(http::header::RANGE)
    {
        return None;
    }
    let key = cache_key(ctx).ok()?;
    let found = cache.storage.l1_hit(&key)?;
    let meta = found.meta();
    let usable = meta.variance().is_none()
        && cache_vary_filter(meta, req).is_none()
        && scope_matches(meta, tag)
        && meta.is_fresh(SystemTime::now());
    usable.then_some(FastHit(found))
}

/// The answer to a [`FastHit`], as Pingora's cache would send it: the stored header with `Age`
/// (and chunked framing when it has no `Content-Length`), the decoded copy for a client that
/// does not accept the stored gzip ([`serve_decoded`]), `304` for a matching conditional
/// request. Returns the header, the body and whether only the header is sent (HEAD, `304`);
/// `response_filter` then runs on the header like on any hit.
pub fn fast_hit_answer(
    session: &mut Session,
    ctx: &mut Ctx,
    fast: FastHit,
) -> (Box<ResponseHeader>, Bytes, bool) {
    use pingora::protocols::http::conditional_filter::{not_modified_filter, to_304};
    let FastHit(mut found) = fast;
    let (meta, hit) = found.parts();
    decode_for_client(session, meta, hit, ctx);
    let mut header = Box::new(meta.response_header_copy());
    let _ = header.insert_header(http::header::AGE, meta.age().as_secs());
    header.set_version(http::Version::HTTP_11);
    if storage::lacks_length(&header) {
        let _ = header.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
    let not_modified = not_modified_filter(session.req_header(), &header);
    if not_modified {
        to_304(&mut header);
    }
    // No `Range` here: this only adds `Accept-Ranges` where Pingora's cache would.
    range_header_filter(session, &mut header);
    let header_only = not_modified || session.req_header().method == http::Method::HEAD;
    ctx.cache.fast = true;
    metrics::CACHE_FAST_HITS
        .with_label_values(&[&ctx.route().name])
        .inc();
    (header, found.into_body(), header_only)
}

/// `range_header_filter` of a hit (Pingora's cache, and the fast path for the
/// `Accept-Ranges` it adds): Pingora's byte ranges, except of a stored body the compression
/// module will decode for this client (gzip for a client that does not accept it). A range of
/// the encoded bytes is of no use to that client, so it gets the whole body, decoded.
pub fn range_header_filter(
    session: &mut Session,
    resp: &mut ResponseHeader,
) -> pingora::proxy::RangeType {
    if crate::compress::decodes_for_client(session, resp) {
        return pingora::proxy::RangeType::None;
    }
    // Pingora's own limit of ranges in one multipart answer.
    pingora::proxy::range_header_filter(session.req_header(), resp, Some(200))
}

/// `cache_hit_filter`, for an entry served fresh: a gzip entry for a client that does not
/// accept gzip (and nothing else to encode in, see [`crate::compress::wants_decoded`]) is sent
/// from a decoded copy kept next to the L1 entry — gunzipped on the first such hit, not on
/// every one. `GET` and `HEAD` (which must carry the same `Content-Length`) without `Range`
/// only; hits from Redis and bodies that decode to more than `max_body` are decoded while
/// streaming as before.
pub fn serve_decoded(
    session: &mut Session,
    meta: &CacheMeta,
    hit: &mut HitHandler,
    is_fresh: bool,
    ctx: &mut Ctx,
) {
    let req = session.req_header();
    let get_or_head = req.method == http::Method::GET || req.method == http::Method::HEAD;
    if !is_fresh || !get_or_head || req.headers.contains_key(http::header::RANGE) {
        return;
    }
    if let Some(hit) = hit.as_any_mut().downcast_mut::<storage::Hit>() {
        decode_for_client(session, meta, hit, ctx);
    }
}

/// Switches a fresh GET/HEAD hit to the entry's decoded copy when the client needs the stored
/// gzip decoded ([`crate::compress::wants_decoded`]).
fn decode_for_client(
    session: &mut Session,
    meta: &CacheMeta,
    hit: &mut storage::Hit,
    ctx: &mut Ctx,
) {
    if crate::compress::wants_decoded(session, meta.response_header()) {
        ctx.cache.decoded = hit.serve_decoded(ctx.pipeline.cache.settings.max_body);
    }
}

/// `upstream_response_filter`: gives an origin response without `Date` the time it was
/// received (RFC 9110 §6.6.1: a recipient that stores or forwards such a response adds one), so
/// that a stored entry keeps that date on every hit instead of getting the time of each answer;
/// a `Date` the origin sent is never replaced (here or, with the vendored Pingora patch, when
/// the answer is written). Then keeps the header of a `304` answering Pingora's revalidation of
/// a stored entry, for [`response_cache_filter`] to bring the stored header up to date with it
/// (Pingora itself takes only `Cache-Control`, `Expires`, `ETag` and a few more from a `304`).
pub fn upstream_response_filter(resp: &mut ResponseHeader, ctx: &mut Ctx) {
    // A `304` without one leaves the stored `Date` as it is (RFC 9111 §4.3.4).
    let final_status =
        !resp.status.is_informational() && resp.status != http::StatusCode::NOT_MODIFIED;
    if final_status && !resp.headers.contains_key(http::header::DATE) {
        // A cached `HeaderValue`: cannot fail.
        let _ = resp.insert_header(
            http::header::DATE,
            pingora::protocols::http::date::get_cached_date(),
        );
    }
    if resp.status == http::StatusCode::NOT_MODIFIED && ctx.cache.is_ready() {
        ctx.cache.not_modified = Some(resp.headers.clone());
    }
}

/// `response_cache_filter`: whether the origin response is stored (see [`policy`]). After a
/// `304`, `resp` is the stored header, updated with every field of the `304` but the framing
/// ones ([`policy::merge_not_modified`]); it is also what the client is sent.
pub fn response_cache_filter(resp: &ResponseHeader, ctx: &Ctx) -> RespCacheable {
    let (State::Ready { tag, .. }, Some(policy)) = (&ctx.cache.state, &ctx.route().cache) else {
        return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
    };
    let config = &ctx.pipeline.config.cache;
    let max_ttl = ctx.pipeline.cache.settings.max_ttl;
    let merged;
    let resp = match &ctx.cache.not_modified {
        Some(not_modified) if resp.status != http::StatusCode::NOT_MODIFIED => {
            merged = policy::merge_not_modified(resp, not_modified);
            &merged
        }
        _ => resp,
    };
    policy::decide(
        resp,
        policy,
        &config.statuses,
        max_ttl,
        tag,
        ctx.credentialed,
        SystemTime::now(),
    )
}

/// `cache_vary_filter`: the values of the request headers the origin named in `Vary`, except
/// `Accept-Encoding`: the origin is always asked for the same coding for a cacheable request
/// (`compress::upstream_request_filter`) and the compression module adapts the one stored entry
/// to each client, so varying on it would only store duplicates.
pub fn cache_vary_filter(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut names: Vec<String> = meta
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty() && n != "accept-encoding")
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    let mut variance = VarianceBuilder::new();
    for name in &names {
        variance.add_owned_value(name, vary_value(req, name));
    }
    variance.finalize()
}

/// The value of request field `name` as the variance sees it: every field line, in order, so
/// that only requests whose `Vary`-named fields are exactly the stored request's share a
/// variant — and the conditional request Pingora sends to revalidate a variant carries the
/// stored request's fields (RFC 9111 §4.1, §4.3.1). An absent field is told apart from an empty
/// one by a byte no field value can contain.
fn vary_value(req: &RequestHeader, name: &str) -> Vec<u8> {
    let mut lines = req.headers.get_all(name).iter();
    let Some(first) = lines.next() else {
        return vec![0];
    };
    let mut value = first.as_bytes().to_vec();
    for line in lines {
        value.push(b'\n');
        value.extend_from_slice(line.as_bytes());
    }
    value
}

/// `should_serve_stale`: within `stale_while_revalidate` (no error) always; within
/// `stale_if_error` when the upstream failed, timed out, answered 5xx or had no healthy server.
/// Pingora checks the windows themselves.
pub fn should_serve_stale(ctx: &mut Ctx, error: Option<&Error>) -> bool {
    let Some(e) = error else { return true };
    let upstream_failed = !matches!(e.esource(), ErrorSource::Downstream)
        && match e.etype() {
            ErrorType::HTTPStatus(code) => *code >= 500,
            _ => true,
        };
    if upstream_failed {
        ctx.cache.served_stale = true;
    }
    upstream_failed
}

/// `proxy_upstream_filter`: stores a response the gateway produced itself (the pooled query
/// path) as if the origin had sent it — same storing rules ([`response_cache_filter`]), same
/// `Vary` variance, gzip-encoded for storage like origin responses
/// ([`crate::compress::encode_for_store`]) — and returns the body to send (the stored form).
/// Storing is best effort: a failure is logged and the response is still sent.
pub async fn store_local(
    session: &mut Session,
    ctx: &mut Ctx,
    header: &mut ResponseHeader,
    body: Bytes,
) -> Bytes {
    // Miss (cold key) or Stale (expired entry being replaced); other phases do not store.
    if !matches!(session.cache.phase(), CachePhase::Miss | CachePhase::Stale) {
        return body;
    }
    let body = match crate::compress::encode_for_store(session, header, body.clone()) {
        Ok(encoded) => encoded,
        Err(e) => {
            tracing::warn!(error = %e, "Encoding a local response for the cache failed; storing it as it is.");
            body
        }
    };
    match response_cache_filter(header, ctx) {
        RespCacheable::Cacheable(meta) => {
            let variance = cache_vary_filter(&meta, session.req_header());
            session.cache.set_cache_meta(meta);
            session.cache.update_variance(variance);
            if let Err(e) = write_entry(session, body.clone()).await {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "Storing a local response in the cache failed.");
            }
        }
        RespCacheable::Uncacheable(reason) => {
            session.cache.response_became_uncacheable(reason);
            session.cache.disable(reason);
        }
    }
    body
}

/// Writes the whole entry (meta set already) through Pingora's miss handler, which also releases
/// the cache lock to the requests waiting on this key.
async fn write_entry(session: &mut Session, body: Bytes) -> Result<()> {
    session.cache.set_miss_handler().await?;
    if let Some(handler) = session.cache.miss_handler() {
        handler.write_body(body, true).await?;
    }
    session.cache.finish_miss_handler().await
}

/// `response_filter`: sets the cache status (`x-cache` is added by the proxy from
/// `ctx.cache_status`) and `Age` on stale answers, removes the internal scope header and the
/// cache fields targeted at this gateway, and after a successful unsafe request bumps the
/// generations of its target URI and of what the route `invalidates` — before the response is
/// sent, so the client's next read cannot race it.
pub async fn response_filter(session: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) {
    resp.remove_header(SCOPE_HEADER);
    // RFC 9213: the targeted fields are for this gateway; clients get `Cache-Control`.
    for name in &CACHE_CONTROL_FIELDS[..2] {
        resp.remove_header(*name);
    }
    let status = match &ctx.cache.state {
        State::Off => None,
        State::Bypass => Some("BYPASS"),
        State::Ready { .. } => Some(if ctx.cache.served_stale {
            "STALE"
        } else if ctx.cache.fast {
            "HIT"
        } else {
            match session.cache.phase() {
                CachePhase::Hit => "HIT",
                CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
                CachePhase::Expired
                | CachePhase::Revalidated
                | CachePhase::RevalidatedNoCache(_) => "EXPIRED",
                _ => "MISS",
            }
        }),
    };
    if status == Some("STALE") && resp.headers.get(http::header::AGE).is_none() {
        if let Some(meta) = session.cache.maybe_cache_meta() {
            let _ = resp.insert_header(http::header::AGE, meta.age().as_secs().to_string());
        }
    }
    if status.is_some() {
        ctx.cache_status = status;
    }
    // A hit after waiting on the cache lock was filled by another request's trip to the OMS
    // (request collapsing): `x-cache` says HIT (no request of its own reached the OMS), the
    // `collapsed` entry of `Cache-Status` says it waited, and the counter counts it.
    let collapsed =
        status == Some("HIT") && session.cache.lock_duration().is_some_and(|d| !d.is_zero());
    if collapsed {
        metrics::CACHE_COLLAPSED
            .with_label_values(&[&ctx.route().name])
            .inc();
    }
    if let Some(entry) = status.map(|s| cache_status_entry(s, collapsed)) {
        append_cache_status(resp, entry);
    }
    if let (Some(len), Some("HIT"), 200) = (ctx.cache.decoded, status, resp.status.as_u16()) {
        crate::compress::decoded_headers(resp, len);
    }

    let req = session.req_header();
    // RFC 9111 §4.4: a non-error answer to an unsafe method (any but GET, HEAD, OPTIONS, TRACE).
    if req.method.is_safe() || !(200..400).contains(&resp.status.as_u16()) {
        return;
    }
    let route = ctx.route();
    let config = &ctx.pipeline.config;
    if route.invalidates.is_empty() && !config.routes.routes.iter().any(|r| r.cache.is_some()) {
        return;
    }
    let cache: &'static Cache = ctx.pipeline.cache;
    let prefix = cache.generations.prefix();
    let resources: Vec<String> = route
        .invalidates
        .iter()
        .map(|t| t.render(&ctx.params))
        .collect();
    let mut paths = vec![req.uri.path().to_string()];
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()));
    for field in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        let target = resp.headers.get(&field).and_then(|v| v.to_str().ok());
        if let Some(path) = target.and_then(|t| same_origin_path(t, host)) {
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
    }
    // The requester's namespaces: its tenant's, and the public one it reads too.
    let mut namespaces = vec![key::PUBLIC_NAMESPACE.to_string()];
    if let Some(t) = ctx.identity.tenant.as_deref().filter(|t| !t.is_empty()) {
        namespaces.push(key::escape(t));
    }
    let mut keys = Vec::with_capacity(namespaces.len() * (resources.len() + paths.len()));
    for ns in &namespaces {
        keys.extend(resources.iter().map(|r| key::resource_key(prefix, ns, r)));
        keys.extend(paths.iter().map(|p| cache.generations.uri_key(ns, p)));
    }
    let route_name = route.name.clone();
    cache.invalidate(keys, &route_name).await;
}

/// The path of a `Location` / `Content-Location` value when it names a resource of the origin
/// the request was sent to: an absolute path, or an absolute URI whose authority is the
/// request's `Host` (RFC 9111 §4.4 invalidates only same-origin URIs).
fn same_origin_path(value: &str, host: Option<&str>) -> Option<String> {
    let uri: http::Uri = value.trim().parse().ok()?;
    let path = uri.path();
    if !path.starts_with('/') || path.starts_with("//") {
        return None;
    }
    match (uri.scheme_str(), uri.authority()) {
        (None, None) => Some(path.to_string()),
        (Some("http" | "https"), Some(authority)) => {
            let host = host?;
            authority
                .as_str()
                .eq_ignore_ascii_case(host)
                .then(|| path.to_string())
        }
        _ => None,
    }
}

/// This gateway's RFC 9211 `Cache-Status` entry for an `x-cache` status.
fn cache_status_entry(status: &str, collapsed: bool) -> &'static str {
    match (status, collapsed) {
        ("HIT", true) => "omsgate; fwd=miss; collapsed",
        ("HIT", false) => "omsgate; hit",
        ("STALE", _) => "omsgate; hit; detail=stale",
        ("EXPIRED", _) => "omsgate; fwd=stale",
        ("BYPASS", _) => "omsgate; fwd=bypass",
        _ => "omsgate; fwd=miss",
    }
}

/// Appends `entry` to the response's `Cache-Status` list (RFC 9211 §2: each cache adds its own
/// entry after those of the caches nearer the origin).
fn append_cache_status(resp: &mut ResponseHeader, entry: &'static str) {
    let value = match resp
        .headers
        .get(CACHE_STATUS)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
    {
        Some(upstream) => http::HeaderValue::try_from(format!("{upstream}, {entry}")),
        // The usual case: no copy.
        None => Ok(http::HeaderValue::from_static(entry)),
    };
    if let Ok(value) = value {
        let _ = resp.insert_header(CACHE_STATUS, value);
    }
}

/// `logging`: counts the lookup in `omsgate_cache_requests_total{route,result}`.
pub fn logging(ctx: &mut Ctx) {
    if ctx.cache_status.is_none() && ctx.cache.is_ready() {
        // Failed before a response (e.g. 502 with no stale copy): it was a miss.
        ctx.cache_status = Some("MISS");
    }
    let result = match ctx.cache_status {
        Some("HIT") => "hit",
        Some("MISS") => "miss",
        Some("STALE") => "stale",
        Some("BYPASS") => "bypass",
        Some("EXPIRED") => "expired",
        _ => return,
    };
    metrics::CACHE_REQUESTS
        .with_label_values(&[&ctx.route().name, result])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_origin_locations_are_invalidated() {
        let host = Some("oms.example:8080");
        let cases = [
            ("/api/v1/invoices/7", Some("/api/v1/invoices/7")),
            ("/api/v1/invoices/7?x=1#f", Some("/api/v1/invoices/7")),
            ("http://oms.example:8080/a", Some("/a")),
            ("https://OMS.example:8080/a", Some("/a")),
            ("http://oms.example/a", None),
            ("http://evil.example:8080/a", None),
            ("//oms.example:8080/a", None),
            ("relative/a", None),
            ("ftp://oms.example:8080/a", None),
            ("not a uri", None),
        ];
        for (value, want) in cases {
            assert_eq!(same_origin_path(value, host).as_deref(), want, "{value}");
        }
        assert_eq!(same_origin_path("http://oms.example:8080/a", None), None);
    }
}

//! The request pipeline: the [`ProxyHttp`] implementation and the per-request [`Ctx`].
//!
//! This file only sequences the concerns; each lives in its own module. Phase chart:
//!
//! | Pingora phase              | concern(s)                                                       |
//! |----------------------------|------------------------------------------------------------------|
//! | `new_ctx`                  | request guard (in-flight count), config snapshot                 |
//! | `request_filter`           | request id, canonical path and route match, 400/404 refusals     |
//! |                            | (`canonical`), client IP (`limit::ip`), 400 for `Connection`     |
//! |                            | naming a credential and duplicate trusted headers, identity      |
//! |                            | (`identity`), rate limit, 429 (`limit`), compression decision,   |
//! |                            | cache scope and key with generations (`cache::prepare`); a fresh |
//! |                            | L1 hit answered here (`cache::fresh_l1_hit`), without Pingora's  |
//! |                            | cache state machine                                              |
//! | `request_cache_filter`     | enable Pingora's cache for cached routes (`cache`)               |
//! | `cache_key_callback`       | the scoped cache key (`cache`)                                   |
//! | `cache_hit_filter`         | scope check of the stored entry; decoded copy for clients that   |
//! |                            | do not accept gzip (`cache`)                                     |
//! | `proxy_upstream_filter`    | after a cache miss: pooled query path answers from PostgreSQL    |
//! |                            | (`db::serve`), stored in the cache like an origin response       |
//! | `upstream_peer`            | server selection (health, passive ejection, panic mode), a slot  |
//! |                            | under the per-server limit or a shed (`upstream::overload`),     |
//! |                            | timeouts, keepalive (`upstream`)                                 |
//! | `fail_to_connect`          | passive health; one retry of idempotent requests (`upstream`)    |
//! | `error_while_proxy`        | keep-alive race: one retry on a fresh connection (`upstream`)    |
//! | `upstream_request_filter`  | request id; only the verified identity (`identity`: the OMS's    |
//! |                            | identity headers removed, or set from it); strong forms in       |
//! |                            | `If-None-Match`, one `Accept-Encoding` for cacheable requests    |
//! |                            | (`compress`)                                                     |
//! | `upstream_response_filter` | upstream latency, passive health (`upstream`); gzip before       |
//! |                            | storing in the cache (`compress`); the header of a revalidating  |
//! |                            | `304` (`cache`)                                                  |
//! | `upstream_response_body_filter` | gzip before storing in the cache (`compress`)               |
//! | `response_cache_filter`    | store or not, TTL, stale windows (`cache`)                       |
//! | `cache_vary_filter`        | `Vary` variants (`cache`)                                        |
//! | `should_serve_stale`       | stale-if-error / stale-while-revalidate (`cache`)                |
//! | `response_filter`          | `x-request-id`, `x-cache`/`Age`, invalidation by writes (`cache`)|
//! |                            | `RateLimit` headers (`limit`), no keepalive when draining        |
//! | downstream modules         | compression (`compress::Compression`): per response, after       |
//! |                            | `response_filter`, on proxied, cached and local responses alike  |
//! | `fail_to_proxy`            | JSON error body on 502/504; 503 + `Retry-After` for a shed       |
//! |                            | request without a stale copy (`upstream`)                        |
//! | `request_summary`          | Pingora's error lines: path without query, request id            |
//! | `logging`                  | metrics (`metrics`, `cache`), audit record (`audit`); the        |
//! |                            | upstream slot is released when the context drops (`upstream`)    |
//!
//! Each request takes a snapshot of the [`Pipeline`] in `new_ctx`; a reload swaps the pipeline
//! for new requests while in-flight ones finish on the snapshot they started with.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::ErrorType;

use crate::compress;
use crate::config::Config;
use crate::identity::{Identity, Rejection, SUBJECT_HEADER, TENANT_HEADER};
use crate::lifecycle::RequestGuard;
use crate::metrics;
use crate::routes::{Params, Route};
use crate::upstream::Upstreams;

/// Request-id header.
pub const REQUEST_ID: &str = "x-request-id";

/// Everything that changes on reload, swapped atomically.
#[derive(Debug)]
pub struct Pipeline {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The process-wide response cache (kept across reloads).
    pub cache: &'static crate::cache::Cache,
    /// Rate-limit policies and their state.
    pub limiter: Arc<crate::limit::Limiter>,
    /// The pooled query paths, when a route has a `query` binding (kept across reloads that
    /// leave `[database]` as it was).
    pub query_paths: Option<Arc<crate::db::serve::Pool>>,
}

impl Pipeline {
    /// Builds the per-concern runtime state from a validated config.
    ///
    /// The single constructor: the server calls it at start and [`crate::reload`] on every
    /// reload, then stores the result in [`Shared::pipeline`]. A concern whose state must
    /// survive a reload (counters, caches) keeps it outside the pipeline.
    pub fn new(config: Arc<Config>) -> Pipeline {
        Pipeline::build(config, None)
    }

    /// [`Pipeline::new`] for a reload: state that must not reset when its settings did not
    /// change (local rate-limit buckets) is carried over from `previous`.
    pub fn reloaded(config: Arc<Config>, previous: &Pipeline) -> Pipeline {
        Pipeline::build(config, Some(previous))
    }

    fn build(config: Arc<Config>, previous: Option<&Pipeline>) -> Pipeline {
        // Key set refresher and API key watcher (kept across reloads with the same settings).
        config.identity.start();
        let cache = crate::cache::Cache::global(&config.cache);
        let limiter = Arc::new(match previous {
            Some(p) => {
                crate::limit::Limiter::reloaded(&config.rate_limit, &config.routes, &p.limiter)
            }
            None => crate::limit::Limiter::new(&config.rate_limit, &config.routes),
        });
        let query_paths = crate::db::serve::pool_for(&config);
        Pipeline {
            config,
            cache,
            limiter,
            query_paths,
        }
    }
}

/// State shared by all requests and the admin service.
pub struct Shared {
    /// The current pipeline.
    pub pipeline: ArcSwap<Pipeline>,
    /// The upstream pool.
    pub upstreams: Arc<Upstreams>,
    /// The audit pipeline (process-wide: its queue and spool outlive reloads).
    pub audit: crate::audit::Audit,
    /// Process start.
    pub started: Instant,
    /// The public listener's certificate when it speaks TLS; a reload replaces it.
    pub listener_cert: Option<Arc<crate::tls::ListenerCert>>,
    /// The same for each `[[server.listeners]]` entry, in file order.
    pub listener_certs: Vec<Option<Arc<crate::tls::ListenerCert>>>,
}

/// The gateway's [`ProxyHttp`] implementation.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// A gateway over the shared state.
    pub fn new(shared: Arc<Shared>) -> Gateway {
        Gateway { shared }
    }
}

/// Per-request state shared by the phases.
pub struct Ctx {
    _guard: RequestGuard,
    /// The pipeline this request runs on.
    pub pipeline: Arc<Pipeline>,
    /// Request start.
    pub started: Instant,
    /// `x-request-id`, taken from the request or generated.
    pub request_id: String,
    /// Index of the matched route (`routes.len()` for `other`).
    pub route_id: usize,
    /// Path parameters of the matched route.
    pub params: Params,
    /// Verified identity (empty when unverified).
    pub identity: Identity,
    /// Client IP: the socket peer, or the forwarded client when the peer is a trusted proxy
    /// (`crate::limit::client_ip`).
    pub client_ip: Option<IpAddr>,
    /// The way to the upstream: servers tried, the slot held, retries (`upstream`).
    pub upstream: crate::upstream::Attempt,
    /// When the request was sent upstream.
    pub upstream_started: Option<Instant>,
    /// Time to the upstream response header.
    pub upstream_elapsed: Option<std::time::Duration>,
    /// Cache status for `x-cache` and audit (`HIT`, `MISS`, `STALE`, `BYPASS`, `EXPIRED`).
    pub cache_status: Option<&'static str>,
    /// Whether the request was rejected by the rate limiter.
    pub rate_limited: bool,
    /// `RateLimit` headers for the response of an admitted request.
    pub rate_limit_headers: Option<crate::limit::Headers>,
    /// Status of a response the gateway wrote itself (429, pooled path, errors).
    pub local_status: Option<u16>,
    /// The cache's per-request state.
    pub cache: crate::cache::RequestCache,
    /// Request body captured for the audit record (routes that record write bodies).
    pub audit_body: Option<Vec<u8>>,
    /// Whether the request carried credentials (`Authorization` or `Cookie`): a `public`
    /// cache route stores its answer only when the origin allows it (RFC 9111 §3.5).
    pub credentialed: bool,
}

impl Ctx {
    /// The matched route.
    pub fn route(&self) -> &Route {
        let routes = &self.pipeline.config.routes;
        routes.routes.get(self.route_id).unwrap_or(&routes.other)
    }
}

fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 200 && v.iter().all(|b| b.is_ascii_graphic())
}

/// Whether an error means the upstream timed out (504) rather than failed (502).
fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            audit_body: None,
            credentialed: false,
            _guard: RequestGuard::new(),
            pipeline: self.shared.pipeline.load_full(),
            started: Instant::now(),
            request_id: String::new(),
            route_id: usize::MAX,
            params: Params::default(),
            identity: Identity::default(),
            client_ip: None,
            upstream: crate::upstream::Attempt::default(),
            upstream_started: None,
            upstream_elapsed: None,
            cache_status: None,
            rate_limited: false,
            rate_limit_headers: None,
            local_status: None,
            cache: crate::cache::RequestCache::default(),
        }
    }

    /// Registers the compression module in place of Pingora's default one (see `compress`).
    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        modules.add_module(compress::module());
    }

    /// Names the request (id, route), establishes who is asking, and answers it locally when a
    /// concern says so (429, pooled query path).
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Pingora keeps an HTTP/1.1 connection open for its next request forever; an idle
        // client gets the operator's `server.keepalive_timeout` instead. (Off stays off: the
        // client asked to close, or it is HTTP/1.0 without keep-alive.)
        if session.get_keepalive().is_some() {
            session.set_keepalive(ctx.pipeline.config.server.keepalive_timeout);
        }
        let req = session.req_header_mut();
        ctx.request_id = match req.headers.get(REQUEST_ID) {
            Some(v) if valid_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => uuid::Uuid::now_v7().to_string(),
        };
        // A client can never claim an identity: these are set only from verified credentials.
        req.remove_header(TENANT_HEADER);
        req.remove_header(SUBJECT_HEADER);

        let config = ctx.pipeline.config.clone();
        // One canonical path for routing, keys, invalidation, limits, audit and the OMS.
        let target = crate::canonical::request_filter(req, &config);
        ctx.route_id = target.route_id;
        ctx.params = target.params;
        if let Some(refusal) = target.refused {
            let status = refusal.status();
            crate::respond::send_error(session, status, refusal.message(), &ctx.request_id).await?;
            ctx.local_status = Some(status);
            return Ok(true);
        }
        let req = session.req_header();
        ctx.credentialed = req.headers.contains_key(http::header::AUTHORIZATION)
            || req.headers.contains_key(http::header::COOKIE);

        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = &config.rate_limit.trusted_proxies;
        let headers = &session.req_header().headers;
        ctx.client_ip =
            crate::limit::client_ip(peer, headers, trusted, &config.rate_limit.client_ip_header);

        // What omsgate verifies must be what the OMS receives: a `Connection` header naming a
        // credential would make the proxy drop it after verification.
        if let Some(name) = config.identity.nominated_credential(headers) {
            let message = format!("the Connection header must not name `{name}`");
            return self
                .refuse(session, ctx, "connection_nominates_credential", &message)
                .await;
        }
        let peer_trusted = crate::limit::ip::peer_trusted(peer, trusted);
        ctx.identity = match config.identity.identify(headers, peer_trusted) {
            Ok(id) => {
                let label = if id.tenant.is_some() {
                    "verified"
                } else {
                    "none"
                };
                metrics::IDENTITY.with_label_values(&[label]).inc();
                id
            }
            Err(Rejection::Duplicate) => {
                metrics::IDENTITY
                    .with_label_values(&[Rejection::Duplicate.as_str()])
                    .inc();
                return self
                    .refuse(
                        session,
                        ctx,
                        "duplicate_identity_header",
                        "an identity header was sent more than once",
                    )
                    .await;
            }
            Err(r) => {
                metrics::IDENTITY.with_label_values(&[r.as_str()]).inc();
                Identity::default()
            }
        };
        // Before any concern answers locally, so that local answers (pooled query path) are
        // compressed too.
        compress::request_filter(session, &config, ctx.route());
        if crate::limit::check(session, ctx).await? {
            return Ok(true);
        }
        crate::cache::prepare(session, ctx).await;
        if let Some(fast) = crate::cache::fresh_l1_hit(session, ctx) {
            let (mut header, body, header_only) = crate::cache::fast_hit_answer(session, ctx, fast);
            self.response_filter(session, &mut header, ctx).await?;
            session.write_response_header(header, header_only).await?;
            if !header_only {
                session.write_response_body(Some(body), true).await?;
            }
            return Ok(true);
        }
        // Last, so that refused, limited and locally answered requests never wait for a body.
        let body_timeout = config.server.body_timeout;
        if crate::request_body::read_ahead(session, body_timeout).await?
            == crate::request_body::ReadAhead::TimedOut
        {
            // Part of the body is unread: the connection cannot carry another request.
            session.set_keepalive(None);
            let message = format!(
                "the request body did not arrive within {:?} (server.body_timeout)",
                body_timeout.unwrap_or_default()
            );
            crate::respond::send_error(session, 408, &message, &ctx.request_id).await?;
            ctx.local_status = Some(408);
            return Ok(true);
        }
        Ok(false)
    }

    /// Turns Pingora's cache on for requests of cached routes that may use it.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        crate::cache::request_cache_filter(session, ctx);
        Ok(())
    }

    /// The scoped cache key built in `request_filter`.
    fn cache_key_callback(&self, _session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        crate::cache::cache_key(ctx)
    }

    /// Byte ranges of a hit: [`crate::cache::range_header_filter`].
    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> pingora::proxy::RangeType {
        crate::cache::range_header_filter(session, resp)
    }

    /// Refuses stored entries whose scope differs from the request's.
    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        let forced = crate::cache::cache_hit_filter(meta, ctx);
        if forced.is_none() {
            crate::cache::serve_decoded(session, meta, hit_handler, is_fresh, ctx);
        }
        Ok(forced)
    }

    /// Whether the origin response is stored, and for how long.
    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        Ok(crate::cache::response_cache_filter(resp, ctx))
    }

    /// The `Vary` variance of a stored response for this request.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        crate::cache::cache_vary_filter(meta, req)
    }

    /// Serves stale copies while revalidating and when the upstream fails.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        crate::cache::should_serve_stale(ctx, error)
    }

    /// After a cache miss: answers a route with a `query` binding from the database pool, stores
    /// the answer in the cache like an origin response, and sends it; otherwise (no binding, no
    /// verified tenant, database trouble) the request goes to the OMS.
    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some((mut header, body)) = crate::db::serve::answer(session, ctx).await else {
            return Ok(true);
        };
        let body = crate::cache::store_local(session, ctx, &mut header, body).await;
        self.response_filter(session, &mut header, ctx).await?;
        ctx.local_status = Some(header.status.as_u16());
        crate::respond::send_json(session, header, body).await?;
        Ok(false)
    }

    /// Selects a server and waits for a slot at it (`upstream`); a shed request fails with
    /// [`crate::upstream::SHED`] (stale copy or 503). Time already spent waiting on the cache
    /// lock counts against the queue deadline.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx.route().name.clone();
        let peer = self
            .shared
            .upstreams
            .peer_for(
                &mut ctx.upstream,
                &route,
                session.cache.lock_duration().unwrap_or_default(),
            )
            .await;
        if peer.is_err() {
            // Pingora closes the client connection after this error, even when the answer is
            // a stale copy: say so in that answer, so that a keep-alive client does not send
            // its next request on a closing connection.
            session.set_keepalive(None);
        }
        peer
    }

    /// Counts the failure and retries idempotent requests once (`upstream.retries`).
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        metrics::UPSTREAM_ERRORS
            .with_label_values(&[if is_timeout(&e) { "timeout" } else { "connect" }])
            .inc();
        let idempotent = session.req_header().method.is_idempotent();
        self.shared
            .upstreams
            .connect_failed(&mut ctx.upstream, idempotent, e)
    }

    /// Retries an idempotent request once on a fresh connection when a reused one was closed
    /// before any response byte (the keep-alive race); other errors are final.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        let retryable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let e = self
            .shared
            .upstreams
            .proxy_failed(&mut ctx.upstream, retryable, client_reused, e);
        if e.retry() {
            // The retry sends the body again from Pingora's retry buffer, through
            // `request_body_filter`: capture it afresh, not twice.
            ctx.audit_body = None;
        }
        e
    }

    /// Forwards the request id and the verified identity, and only that identity
    /// (`identity::IdentityConfig::upstream_headers`).
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        compress::upstream_request_filter(session, upstream_request);
        upstream_request.insert_header(REQUEST_ID, &ctx.request_id)?;
        let identity = &ctx.pipeline.config.identity;
        identity.upstream_headers(upstream_request, &ctx.identity)?;
        ctx.upstream_started = Some(Instant::now());
        Ok(())
    }

    /// Records the upstream latency.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        compress::send_whole_bodies_with_length(session, upstream_response);
        compress::upstream_response_filter(session, upstream_response);
        crate::cache::upstream_response_filter(upstream_response, ctx);
        self.shared
            .upstreams
            .responded(&ctx.upstream, upstream_response.status.as_u16());
        if let Some(t) = ctx.upstream_started {
            let elapsed = t.elapsed();
            ctx.upstream_elapsed = Some(elapsed);
            metrics::UPSTREAM_DURATION
                .with_label_values(&[&ctx.route().name])
                .observe(elapsed.as_secs_f64());
        }
        Ok(())
    }

    /// Encodes the body of a response being stored compressed (`compress`).
    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        _ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        compress::upstream_response_body_filter(session, body, end_of_stream)?;
        Ok(None)
    }

    /// Adds the gateway's response headers; while draining, closes the client connection after
    /// the response (see [`crate::lifecycle::draining`]).
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        crate::cache::response_filter(session, upstream_response, ctx).await;
        upstream_response.insert_header(REQUEST_ID, &ctx.request_id)?;
        if crate::lifecycle::draining() {
            session.set_keepalive(None);
        }
        if let Some(c) = ctx.cache_status {
            upstream_response.insert_header(crate::cache::X_CACHE, c)?;
        }
        crate::limit::response_headers(upstream_response, ctx)?;
        Ok(())
    }

    /// What Pingora's own error lines say about the request: method, path without the query
    /// (which could carry a token), route and request id, so they can be matched with the
    /// access log and audit records.
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        let req = session.req_header();
        let route = if ctx.route_id == usize::MAX {
            "-"
        } else {
            ctx.route().name.as_str()
        };
        format!(
            "{} {}, route: {route}, request_id: {}",
            req.method,
            req.uri.path(),
            ctx.request_id
        )
    }

    /// Answers failures with a JSON body: 504 for timeouts, 503 with `Retry-After` for a request
    /// shed by overload protection, 502 otherwise.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let shed = *e.etype() == crate::upstream::SHED;
        let (code, message) = match e.etype() {
            _ if shed => (503, SHED_MESSAGE),
            ErrorType::HTTPStatus(c) => (*c, "request failed"),
            _ if is_timeout(e) && !matches!(e.esource(), pingora::ErrorSource::Downstream) => {
                (504, "upstream timed out")
            }
            _ => match e.esource() {
                pingora::ErrorSource::Upstream => (502, "upstream failed"),
                pingora::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, "")
                    }
                    // A streamed body that stalled longer than `server.body_timeout`.
                    ErrorType::ReadTimedout => {
                        (408, "the request body stalled (server.body_timeout)")
                    }
                    _ => (400, "bad request"),
                },
                _ => (500, "internal error"),
            },
        };
        // A shed is counted in omsgate_upstream_shed_total, not as an upstream error.
        if !shed && matches!(e.esource(), pingora::ErrorSource::Upstream) && code >= 500 {
            let kind = if is_timeout(e) { "timeout" } else { "other" };
            if !matches!(e.etype(), ErrorType::HTTPStatus(_)) {
                metrics::UPSTREAM_ERRORS.with_label_values(&[kind]).inc();
            }
        }
        if code > 0 {
            if session.response_written().is_none() {
                // The client connection is closed after a failed proxy attempt; say so, so that
                // a keep-alive client does not send its next request on it.
                session.set_keepalive(None);
                let sent = if shed {
                    let retry_after = self.shared.upstreams.config().overload.retry_after_secs;
                    send_shed(session, retry_after, &ctx.request_id).await
                } else {
                    crate::respond::send_error(session, code, message, &ctx.request_id).await
                };
                if let Err(we) = sent {
                    tracing::debug!(error = %we, status = code, "Writing the error response failed.");
                }
            }
            ctx.local_status = Some(code);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Counts the request in the metrics and emits its audit record.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx)
    where
        Self::CTX: Send + Sync,
    {
        // The upstream slot (if any) is released here, before the audit record is built.
        drop(std::mem::take(&mut ctx.upstream));
        crate::cache::logging(ctx);
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.local_status)
            .unwrap_or(0);
        let route = ctx.route().name.as_str();
        let method = session.req_header().method.as_str();
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
            _ => "OTHER",
        };
        metrics::HTTP_REQUESTS
            .with_label_values(&[route, method, metrics::status_class(status)])
            .inc();
        metrics::HTTP_DURATION
            .with_label_values(&[route])
            .observe(ctx.started.elapsed().as_secs_f64());
        if let Some(e) = e {
            tracing::debug!(request_id = %ctx.request_id, route, error = %e, "Request failed.");
        }
        if ctx.pipeline.config.log.access_log {
            tracing::info!(
                request_id = %ctx.request_id,
                route,
                method,
                path = session.req_header().uri.path(),
                status,
                duration_ms = ctx.started.elapsed().as_secs_f64() * 1000.0,
                "Request served."
            );
        }
        self.audit_record(session, status, ctx);
    }

    /// Captures the body of writes on routes that record it, capped at `audit.body_max_bytes`.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()>
    where
        Self::CTX: Send + Sync,
    {
        let Some(chunk) = body else { return Ok(()) };
        if !ctx.route().audit.wants_body(&session.req_header().method) {
            return Ok(());
        }
        let cap = self.shared.audit.config().body_max_bytes;
        let buf = ctx.audit_body.get_or_insert_with(Vec::new);
        // One byte over the cap tells the redactor the body was cut.
        let room = (cap + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        Ok(())
    }
}

/// The error message of a request shed by overload protection.
const SHED_MESSAGE: &str = "the OMS is overloaded; retry after the time in Retry-After";

/// The answer to a request shed by overload protection: 503, `Retry-After`, a JSON body.
async fn send_shed(session: &mut Session, retry_after: u64, request_id: &str) -> Result<()> {
    let body = crate::respond::error_body(SHED_MESSAGE, request_id);
    let mut header = crate::respond::json_header(503, body.len(), request_id)?;
    header.insert_header(http::header::RETRY_AFTER, retry_after.to_string())?;
    crate::respond::send_json(session, header, body).await
}

// === impl Gateway (refusals, audit) ===

impl Gateway {
    /// Answers a request that tries to separate what omsgate verifies from what the OMS
    /// receives with 400 and a JSON body, counted by `reason`; it never goes upstream.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reason: &'static str,
        message: &str,
    ) -> Result<bool> {
        metrics::REQUESTS_REFUSED.with_label_values(&[reason]).inc();
        tracing::debug!(request_id = %ctx.request_id, reason, "Request refused.");
        crate::respond::send_error(session, 400, message, &ctx.request_id).await?;
        ctx.local_status = Some(400);
        Ok(true)
    }

    /// Builds the request's audit record and hands it to the audit queue (never waits).
    fn audit_record(&self, session: &Session, status: u16, ctx: &mut Ctx) {
        let audit = &self.shared.audit;
        let cfg = audit.config();
        if !cfg.enabled || !ctx.route().audit.enabled {
            return;
        }
        let req = session.req_header();
        let captured = ctx.audit_body.take();
        let route = ctx.route();
        let header = |name: http::header::HeaderName| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let body = captured.and_then(|b| crate::audit::redact_body(&b, &route.audit, cfg));
        let elapsed = ctx.started.elapsed();
        let record = crate::audit::AuditRecord {
            ts: std::time::SystemTime::now() - elapsed,
            request_id: ctx.request_id.clone(),
            tenant: ctx.identity.tenant.clone(),
            subject: ctx.identity.subject.clone(),
            client_ip: ctx.client_ip,
            method: req.method.to_string(),
            route: route.name.clone(),
            path: req.uri.path().to_string(),
            query: req
                .uri
                .query()
                .and_then(|q| crate::audit::redact_query(q, cfg)),
            status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_ms: ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
            bytes_in: session.as_downstream().body_bytes_read() as u64,
            bytes_out: session.as_downstream().body_bytes_sent() as u64,
            cache: ctx.cache_status.map(str::to_string),
            rate_limited: ctx.rate_limited,
            user_agent: header(http::header::USER_AGENT),
            headers: route.audit.capture_headers(&req.headers, cfg),
            body,
            ..Default::default()
        };
        audit.record(record);
    }
}

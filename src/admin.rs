//! The admin listener (DESIGN.md capability 7): `/metrics`, `/health`, `/ready`, `/purge`, and
//! `POST /reload` (capability 9, see [`crate::reload`]).
//!
//! Served by its own Pingora service on `admin.listen` (loopback by default), never on the
//! public listener. `/health` is liveness (200 while the process serves); `/ready` reports each
//! dependency, uptime and RSS as JSON, and answers 503 when no upstream server is healthy.
//! `POST /purge` invalidates cache entries (see `cache::PurgeRequest`): by tenant and
//! resources/tags, a whole tenant, or everything.
//!
//! What the listener accepts ([`guard`]): no request with an `Origin` header (a browser page
//! on any site could otherwise `POST /purge` to a loopback address), and no `Host` other than
//! the listen address (an IP literal with its port, or `localhost`), which defeats DNS
//! rebinding. With `[admin] token_env` set, `POST /purge` and `POST /reload` also need
//! `Authorization: Bearer <token>`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::metrics;
use crate::proxy::Shared;

/// The admin HTTP application.
pub struct Admin {
    shared: Arc<Shared>,
    reloader: Option<Arc<crate::reload::Reloader>>,
}

impl Admin {
    /// An admin app over the shared state.
    pub fn new(shared: Arc<Shared>) -> Admin {
        Admin {
            shared,
            reloader: None,
        }
    }

    /// Serves `POST /reload` with `reloader`.
    pub fn with_reloader(mut self, reloader: Arc<crate::reload::Reloader>) -> Admin {
        self.reloader = Some(reloader);
        self
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        let Some(reloader) = &self.reloader else {
            return json_response(
                404,
                json!({ "error": "reload is not available: no config file" }),
            );
        };
        let outcome = reloader.reload("admin").await;
        let status = if outcome.result == "ok" { 200 } else { 422 };
        json_response(status, json!(outcome))
    }

    fn ready(&self) -> (u16, serde_json::Value) {
        let ups = &self.shared.upstreams;
        let status = ups.status();
        let healthy = status.iter().filter(|s| s.healthy).count();
        let servers: Vec<_> = status
            .iter()
            .map(|s| json!({ "server": s.addr.to_string(), "healthy": s.healthy }))
            .collect();
        let load: Vec<_> = status
            .iter()
            .map(|s| {
                json!({
                    "server": s.addr.to_string(),
                    "ejected": s.ejected,
                    "in_flight": s.in_flight,
                    "queued": s.queued,
                    "limit": s.limit,
                })
            })
            .collect();
        // Not ready when no server is healthy, even though panic mode still sends requests to
        // them: a load balancer in front may prefer another gateway instance.
        let upstream_ready = healthy > 0;
        // Without any key set yet, tokens cannot be verified: requests are served without
        // identity (never blocked), but a load balancer may prefer an instance with keys.
        let identity = &self.shared.pipeline.load().config.identity;
        let jwks = identity.jwks().map(|j| j.ready_json());
        let ready = upstream_ready && identity.jwks().is_none_or(|j| j.has_keys());
        let cache_redis = match self.shared.pipeline.load().cache.redis_connected() {
            None => "none",
            Some(true) => "up",
            Some(false) => "down",
        };
        let body = json!({
            "ready": ready,
            "uptime_seconds": self.shared.started.elapsed().as_secs(),
            "rss_bytes": rss_bytes(),
            "in_flight": crate::lifecycle::in_flight(),
            "config_hash": self.shared.pipeline.load().config.hash,
            "dependencies": {
                "upstream": {
                    "state": if upstream_ready { "up" } else { "down" },
                    "healthy": healthy,
                    "panic": ups.panic(),
                    "servers": servers,
                    "load": load,
                },
                "cache_redis": { "state": cache_redis },
                "audit": self.shared.audit.state().ready_json(),
                "identity_jwks": jwks,
            },
        });
        (if ready { 200 } else { 503 }, body)
    }

    fn refresh_gauges(&self) {
        metrics::UPTIME.set(self.shared.started.elapsed().as_secs_f64());
        let pipeline = self.shared.pipeline.load();
        pipeline.cache.refresh_gauges();
        pipeline.limiter.refresh_gauges();
        pipeline.config.identity.refresh_gauges();
        crate::db::serve::update_gauges();
        for s in self.shared.upstreams.status() {
            let server = s.addr.to_string();
            let server = [server.as_str()];
            metrics::UPSTREAM_HEALTHY
                .with_label_values(&server)
                .set(s.healthy as i64);
            metrics::UPSTREAM_IN_FLIGHT
                .with_label_values(&server)
                .set(s.in_flight as i64);
            metrics::UPSTREAM_QUEUE
                .with_label_values(&server)
                .set(s.queued as i64);
            metrics::UPSTREAM_LIMIT
                .with_label_values(&server)
                .set(s.limit as i64);
        }
    }
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`), 0 when unknown.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Largest `POST /purge` body accepted.
const MAX_PURGE_BODY: usize = 64 * 1024;

impl Admin {
    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_PURGE_BODY {
                        return json_response(413, json!({ "error": "purge body too large" }));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return json_response(400, json!({ "error": format!("cannot read body: {e}") }))
                }
            }
        }
        let req: crate::cache::PurgeRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return json_response(
                    400,
                    json!({ "error": format!("body is not a purge request ({e}); send {{\"tenant\": \"t1\", \"resources\": [\"invoice:42\"]}} or {{\"all\": true}}") }),
                )
            }
        };
        let cache = self.shared.pipeline.load().cache;
        match cache.purge(&req).await {
            Ok(n) => json_response(200, json!({ "purged": n })),
            Err(e @ crate::cache::PurgeError::Invalid(_)) => {
                json_response(400, json!({ "error": e.to_string() }))
            }
            Err(e @ crate::cache::PurgeError::Backend) => {
                json_response(503, json!({ "error": e.to_string() }))
            }
        }
    }
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

fn json_response(status: u16, v: serde_json::Value) -> Response<Vec<u8>> {
    response(status, "application/json", v.to_string().into_bytes())
}

/// Refuses requests the admin listener must not serve (see the module doc): `Some` answer
/// when refused. `mutating` says whether the endpoint changes state (needs the token).
pub fn guard(
    config: &crate::config::AdminConfig,
    headers: &http::HeaderMap,
    mutating: bool,
) -> Option<Response<Vec<u8>>> {
    if headers.contains_key(http::header::ORIGIN) {
        return Some(json_response(
            403,
            json!({ "error": "cross-origin requests are not served by the admin listener" }),
        ));
    }
    if let Some(host) = headers.get(http::header::HOST) {
        if !host_allowed(config.listen, host.as_bytes()) {
            return Some(json_response(
                403,
                json!({ "error": "the Host header must be the admin listen address" }),
            ));
        }
    }
    if let (true, Some(token)) = (mutating, &config.token) {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            let mut r = json_response(401, json!({ "error": "admin token required" }));
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return Some(r);
        }
    }
    None
}

/// Whether `host` names the admin listener: `IP:PORT` equal to `listen` (any IP literal when it
/// listens on all addresses), or `localhost:PORT` when it listens on loopback.
fn host_allowed(listen: std::net::SocketAddr, host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    let Some((name, port)) = host.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().ok() != Some(listen.port()) {
        return false;
    }
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name == "localhost" {
        return listen.ip().is_loopback() || listen.ip().is_unspecified();
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => listen.ip().is_unspecified() || ip.to_canonical() == listen.ip().to_canonical(),
        Err(_) => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let mutating = method != http::Method::GET && method != http::Method::HEAD;
        let config = self.shared.pipeline.load().config.clone();
        if let Some(refused) = guard(&config.admin, &session.req_header().headers, mutating) {
            return refused;
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                self.refresh_gauges();
                response(
                    200,
                    "text/plain; version=0.0.4",
                    metrics::render().into_bytes(),
                )
            }
            ("GET", "/health") => json_response(200, json!({ "status": "ok" })),
            ("GET", "/ready") => {
                let (status, body) = self.ready();
                json_response(status, body)
            }
            ("POST", "/purge") => self.purge(session).await,
            ("POST", "/reload") => self.reload().await,
            (_, "/metrics" | "/health" | "/ready" | "/purge" | "/reload") => {
                json_response(405, json!({ "error": "method not allowed" }))
            }
            _ => json_response(404, json!({ "error": format!("no admin endpoint {path}") })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, token: Option<&str>) -> crate::config::AdminConfig {
        crate::config::AdminConfig {
            listen: listen.parse().unwrap(),
            token: token.map(str::to_string),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn status(c: &crate::config::AdminConfig, h: &[(&str, &str)], mutating: bool) -> u16 {
        guard(c, &headers(h), mutating).map_or(200, |r| r.status().as_u16())
    }

    #[test]
    fn cross_site_and_rebound_requests_are_refused() {
        let c = config("127.0.0.1:9091", None);
        assert_eq!(status(&c, &[("host", "127.0.0.1:9091")], true), 200);
        assert_eq!(status(&c, &[("host", "localhost:9091")], true), 200);
        assert_eq!(status(&c, &[], false), 200);
        assert_eq!(status(&c, &[("host", "evil.example:9091")], true), 403);
        assert_eq!(status(&c, &[("host", "127.0.0.1:80")], false), 403);
        assert_eq!(status(&c, &[("host", "10.0.0.1:9091")], false), 403);
        assert_eq!(
            status(
                &c,
                &[
                    ("host", "127.0.0.1:9091"),
                    ("origin", "https://evil.example")
                ],
                true
            ),
            403
        );
        let any = config("0.0.0.0:9091", None);
        assert_eq!(status(&any, &[("host", "10.0.0.1:9091")], false), 200);
        assert_eq!(
            status(&any, &[("host", "metrics.internal:9091")], false),
            403
        );
    }

    #[test]
    fn the_token_guards_mutating_endpoints_only() {
        let c = config("127.0.0.1:9091", Some("s3cret"));
        let host = ("host", "127.0.0.1:9091");
        assert_eq!(status(&c, &[host], false), 200);
        assert_eq!(status(&c, &[host], true), 401);
        assert_eq!(
            status(&c, &[host, ("authorization", "Bearer nope")], true),
            401
        );
        assert_eq!(
            status(&c, &[host, ("authorization", "Bearer s3cret")], true),
            200
        );
    }
}

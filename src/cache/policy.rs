//! Whether an origin response is stored, and for how long (the `response_cache_filter` phase).
//!
//! The route's policy sets the defaults; the origin's `Cache-Control` wins where present:
//! `no-store`, standalone `no-cache`, and `private` (except for `scope = "subject"`) keep a
//! response out of the cache; `s-maxage`/`max-age` set the fresh time when the route has
//! `respect_origin = true`; `Set-Cookie`, `Vary: *` and statuses outside the allow-list are
//! never stored. Every lifetime is capped by `[cache] max_ttl`. On a `scope = "public"` route,
//! the answer to a request that carried credentials (`Authorization`, `Cookie`) is stored only
//! when the origin says `public`, `s-maxage` or `must-revalidate` (RFC 9111 §3.5).

use std::time::{Duration, SystemTime};

use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;

use super::config::{RoutePolicy, Scope};

/// Response header naming the scope an entry was stored for; compared on every hit and never
/// sent to clients.
pub const SCOPE_HEADER: &str = "x-omsgate-cache-scope";

/// Decides whether `resp` is stored under `scope_tag`, building its [`CacheMeta`] if so.
pub fn decide(
    resp: &ResponseHeader,
    policy: &RoutePolicy,
    default_statuses: &[u16],
    max_ttl: Duration,
    scope_tag: &str,
    credentialed: bool,
    now: SystemTime,
) -> RespCacheable {
    use RespCacheable::{Cacheable, Uncacheable};
    let statuses = policy.statuses.as_deref().unwrap_or(default_statuses);
    if !statuses.contains(&resp.status.as_u16()) {
        return Uncacheable(NoCacheReason::Custom("status"));
    }
    if resp.headers.contains_key(http::header::SET_COOKIE) {
        return Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    if resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|n| n.trim_ascii() == b"*")
    }) {
        return Uncacheable(NoCacheReason::Custom("vary-star"));
    }
    let cc = CacheControl::from_resp_headers(resp);
    if credentialed && policy.scope == Scope::Public && !shared_with_credentials(cc.as_ref()) {
        return Uncacheable(NoCacheReason::Custom("credentialed"));
    }
    let mut fresh = policy.ttl;
    let mut swr = policy.stale_while_revalidate;
    let mut sie = policy.stale_if_error;
    if let Some(cc) = &cc {
        if cc.no_store() || cc.no_cache() {
            return Uncacheable(NoCacheReason::OriginNotCache);
        }
        if cc.private() && policy.scope != Scope::Subject {
            return Uncacheable(NoCacheReason::OriginNotCache);
        }
        if policy.respect_origin {
            let origin = match cc.s_maxage() {
                Ok(Some(s)) => Some(s),
                Ok(None) => cc.max_age().ok().flatten(),
                Err(_) => None,
            };
            if let Some(secs) = origin {
                if secs == 0 {
                    return Uncacheable(NoCacheReason::OriginNotCache);
                }
                fresh = Duration::from_secs(secs.into());
            }
            if let Some(d) = cc.serve_stale_while_revalidate_duration() {
                swr = d;
            }
            if let Some(d) = cc.serve_stale_if_error_duration() {
                sie = d;
            }
        }
    }
    // Stored lifetime = fresh + the longer stale window, never more than max_ttl.
    fresh = fresh.min(max_ttl);
    let room = max_ttl - fresh;
    swr = swr.min(room);
    sie = sie.min(room);

    let mut header = resp.clone();
    if let Some(cc) = &cc {
        // `private="x"` / `no-cache="x"`: store the response without those headers.
        cc.strip_private_headers(&mut header);
    }
    if header.insert_header(SCOPE_HEADER, scope_tag).is_err() {
        return Uncacheable(NoCacheReason::InternalError);
    }
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    Cacheable(CacheMeta::new(
        now + fresh,
        now,
        secs(swr),
        secs(sie),
        header,
    ))
}

/// Whether a shared cache may store the answer to a request with credentials (RFC 9111 §3.5):
/// only when the origin's `Cache-Control` says `public`, `s-maxage` or `must-revalidate`.
fn shared_with_credentials(cc: Option<&CacheControl>) -> bool {
    cc.is_some_and(|cc| cc.public() || cc.has_key("s-maxage") || cc.must_revalidate())
}

/// How long storage keeps an entry: until its stale windows close, capped by `max_ttl`.
/// `None` when it is already past them.
pub fn storage_lifetime(meta: &CacheMeta, max_ttl: Duration, now: SystemTime) -> Option<Duration> {
    let window = meta
        .stale_while_revalidate_sec()
        .max(meta.stale_if_error_sec());
    let until = meta.fresh_until() + Duration::from_secs(window.into());
    let left = until.duration_since(now).ok()?;
    if left.is_zero() {
        return None;
    }
    Some(left.min(max_ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(scope: Scope, respect_origin: bool) -> RoutePolicy {
        RoutePolicy {
            ttl: Duration::from_secs(60),
            scope,
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(600),
            resources: vec![],
            respect_origin,
            statuses: None,
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const STATUSES: &[u16] = super::super::config::DEFAULT_STATUSES;
    const DAY: Duration = Duration::from_secs(86400);

    fn meta(r: &ResponseHeader, p: &RoutePolicy) -> Option<CacheMeta> {
        match decide(
            r,
            p,
            STATUSES,
            DAY,
            "tenant:a:",
            false,
            SystemTime::UNIX_EPOCH,
        ) {
            RespCacheable::Cacheable(m) => Some(m),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    fn fresh_secs(m: &CacheMeta) -> u64 {
        m.fresh_until()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn public_answers_to_credentialed_requests_need_the_origins_consent() {
        let p = policy(Scope::Public, false);
        let stored = |cc: Option<&str>| {
            let r = match cc {
                Some(cc) => resp(200, &[("cache-control", cc)]),
                None => resp(200, &[]),
            };
            matches!(
                decide(
                    &r,
                    &p,
                    STATUSES,
                    DAY,
                    "public:",
                    true,
                    SystemTime::UNIX_EPOCH
                ),
                RespCacheable::Cacheable(_)
            )
        };
        assert!(!stored(None));
        assert!(!stored(Some("max-age=60")));
        assert!(stored(Some("public, max-age=60")));
        assert!(stored(Some("s-maxage=60")));
        assert!(stored(Some("max-age=60, must-revalidate")));
        // Without credentials the route's policy alone decides.
        assert!(meta(&resp(200, &[]), &p).is_some());
        // Tenant and subject scopes are keyed by the verified identity anyway.
        let t = policy(Scope::Tenant, false);
        assert!(matches!(
            decide(
                &resp(200, &[]),
                &t,
                STATUSES,
                DAY,
                "tenant:a:",
                true,
                SystemTime::UNIX_EPOCH
            ),
            RespCacheable::Cacheable(_)
        ));
    }

    #[test]
    fn origin_refusals_win() {
        let t = policy(Scope::Tenant, true);
        assert!(meta(&resp(200, &[]), &t).is_some());
        for cc in [
            "no-store",
            "no-cache",
            "private",
            "max-age=0",
            "public, no-store",
        ] {
            assert!(
                meta(&resp(200, &[("cache-control", cc)]), &t).is_none(),
                "{cc}"
            );
        }
        assert!(meta(&resp(200, &[("set-cookie", "a=b")]), &t).is_none());
        assert!(meta(&resp(200, &[("vary", "accept, *")]), &t).is_none());
        // private is fine for one user's own entries
        assert!(meta(
            &resp(200, &[("cache-control", "private")]),
            &policy(Scope::Subject, true)
        )
        .is_some());
    }

    #[test]
    fn statuses_are_allow_listed() {
        let t = policy(Scope::Tenant, true);
        for s in [200, 203, 204, 300, 301, 404, 410] {
            assert!(meta(&resp(s, &[]), &t).is_some(), "{s}");
        }
        for s in [201, 302, 400, 401, 403, 500, 502, 503] {
            assert!(meta(&resp(s, &[]), &t).is_none(), "{s}");
        }
        let mut only_200 = t.clone();
        only_200.statuses = Some(vec![200]);
        assert!(meta(&resp(404, &[]), &only_200).is_none());
    }

    #[test]
    fn origin_lifetimes_apply_when_respected() {
        let t = policy(Scope::Tenant, true);
        let m = meta(&resp(200, &[("cache-control", "max-age=10")]), &t).unwrap();
        assert_eq!(fresh_secs(&m), 10);
        let m = meta(
            &resp(200, &[("cache-control", "max-age=10, s-maxage=20")]),
            &t,
        )
        .unwrap();
        assert_eq!(fresh_secs(&m), 20);
        let m = meta(
            &resp(200, &[("cache-control", "max-age=10, must-revalidate")]),
            &t,
        )
        .unwrap();
        assert_eq!(m.stale_if_error_sec(), 0);
        assert_eq!(m.stale_while_revalidate_sec(), 0);
        let m = meta(&resp(200, &[]), &t).unwrap();
        assert_eq!(fresh_secs(&m), 60);
        assert_eq!(m.stale_if_error_sec(), 600);
        let ignore = policy(Scope::Tenant, false);
        let m = meta(&resp(200, &[("cache-control", "max-age=10")]), &ignore).unwrap();
        assert_eq!(fresh_secs(&m), 60);
    }

    #[test]
    fn lifetimes_are_capped() {
        let t = policy(Scope::Tenant, true);
        let r = resp(200, &[("cache-control", "max-age=999999")]);
        let RespCacheable::Cacheable(m) = decide(
            &r,
            &t,
            STATUSES,
            Duration::from_secs(100),
            "x",
            false,
            SystemTime::UNIX_EPOCH,
        ) else {
            panic!("not cacheable")
        };
        assert_eq!(fresh_secs(&m), 100);
        assert_eq!(m.stale_if_error_sec(), 0);
        let life = storage_lifetime(&m, Duration::from_secs(100), SystemTime::UNIX_EPOCH);
        assert_eq!(life, Some(Duration::from_secs(100)));
    }

    #[test]
    fn scope_is_recorded_and_private_fields_stripped() {
        let t = policy(Scope::Tenant, true);
        let r = resp(
            200,
            &[("cache-control", "private=\"x-secret\""), ("x-secret", "s")],
        );
        let m = meta(&r, &t).unwrap();
        assert!(m.headers().get("x-secret").is_none());
        assert_eq!(m.headers().get(SCOPE_HEADER).unwrap(), "tenant:a:");
    }
}

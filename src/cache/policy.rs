//! Whether an origin response is stored, and for how long (the `response_cache_filter` phase).
//!
//! The route's policy sets the defaults; the origin's cache directives win where present. They
//! are read from the first of `Omsgate-Cache-Control`, `CDN-Cache-Control` (RFC 9213: fields
//! targeted at this gateway) and `Cache-Control` that the response carries; a targeted field
//! replaces `Cache-Control` entirely. `no-store`, standalone `no-cache`, and `private` (except
//! for `scope = "subject"`) keep a response out of the cache; `s-maxage`/`max-age` set the
//! fresh time when the route has `respect_origin = true`; `must-revalidate`, `proxy-revalidate`
//! and `s-maxage` close the stale windows whatever the route says (RFC 9111 §4.2.4, §5.2.2);
//! `Set-Cookie`, `Vary: *` and statuses outside the allow-list are never stored. Every lifetime
//! is capped by `[cache] max_ttl`.
//!
//! The origin's `Age` counts against the fresh time (RFC 9111 §4.2.3): the entry's epoch is set
//! that far in the past, so the `Age` Pingora sends on a hit is the origin's plus the time the
//! entry spent here. An `Age` that is not one plain number below 2^31 makes the response stale.
//! Neither `Age` nor the hop-by-hop fields (`Connection` and the fields it names) are stored.
//! On a `scope = "public"` route, the answer to a request that carried credentials
//! (`Authorization`, `Cookie`) is stored only when the origin says `public`, `s-maxage` or
//! `must-revalidate` (RFC 9111 §3.5).

use std::time::{Duration, SystemTime};

use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;

use super::config::{RoutePolicy, Scope};

/// Response header naming the scope an entry was stored for; compared on every hit and never
/// sent to clients.
pub const SCOPE_HEADER: &str = "x-omsgate-cache-scope";

/// The cache-directive fields this gateway obeys, most specific first (RFC 9213): the first one
/// present replaces the others. The targeted ones are never sent to clients.
pub const CACHE_CONTROL_FIELDS: [&str; 3] = [
    "omsgate-cache-control",
    "cdn-cache-control",
    "cache-control",
];

/// The largest `Age` taken at its word (RFC 9111 §1.2.2: 2^31); larger ones make the response
/// stale.
const MAX_AGE_VALUE: u64 = 1 << 31;

/// Fields never stored: hop-by-hop ones (RFC 9110 §7.6.1) and `Age`, which the entry's epoch
/// replaces.
const NOT_STORED: &[&str] = &["connection", "keep-alive", "proxy-connection", "age"];

/// The cache directives of `resp` for this gateway: those of the first field of
/// [`CACHE_CONTROL_FIELDS`] that holds any (RFC 9213 §2.1: a targeted field without a valid
/// directive falls back to the next).
pub fn cache_control(resp: &ResponseHeader) -> Option<CacheControl> {
    CACHE_CONTROL_FIELDS.iter().find_map(|name| {
        CacheControl::from_resp_headers_named(name, resp).filter(|cc| !cc.directives.is_empty())
    })
}

/// The origin's `Age` (RFC 9111 §5.1): `Some(Ok(secs))` for one plain number below 2^31 in the
/// first field line, `Some(Err(()))` for anything else (a non-number, a list such as `10, 0`, an
/// overflow), which makes the response stale; `None` without `Age`.
pub fn origin_age(resp: &ResponseHeader) -> Option<Result<u64, ()>> {
    let first = resp.headers.get(http::header::AGE)?;
    let value = first.as_bytes().trim_ascii();
    let valid = !value.is_empty() && value.len() <= 10 && value.iter().all(u8::is_ascii_digit);
    Some(
        std::str::from_utf8(value)
            .ok()
            .filter(|_| valid)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|secs| *secs < MAX_AGE_VALUE)
            .ok_or(()),
    )
}

/// Removes the fields a cache does not store: hop-by-hop ones, the fields the origin's
/// `Connection` names (RFC 9111 §3.1), and `Age`.
fn strip_unstored(header: &mut ResponseHeader) {
    let named: Vec<String> = header
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    for name in named
        .iter()
        .map(String::as_str)
        .chain(NOT_STORED.iter().copied())
    {
        header.remove_header(name);
    }
}

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
    let cc = cache_control(resp);
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
    // RFC 9111 §4.2.4: these forbid serving the response stale, whatever the route allows.
    if cc
        .as_ref()
        .is_some_and(|cc| cc.must_revalidate() || cc.proxy_revalidate() || cc.has_key("s-maxage"))
    {
        swr = Duration::ZERO;
        sie = Duration::ZERO;
    }
    // Stored lifetime = fresh + the longer stale window, never more than max_ttl.
    fresh = fresh.min(max_ttl);
    let room = max_ttl - fresh;
    swr = swr.min(room);
    sie = sie.min(room);

    // The origin's `Age` is time already spent: the epoch moves back by it, so that the fresh
    // time runs out that much sooner and the `Age` sent on hits includes it. An invalid one
    // leaves nothing fresh.
    let (epoch, fresh_until) = match origin_age(resp) {
        None => (now, now + fresh),
        Some(Ok(age)) => {
            let epoch = now
                .checked_sub(Duration::from_secs(age))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (epoch, epoch + fresh)
        }
        Some(Err(())) => (now, now),
    };

    let mut header = resp.clone();
    if let Some(cc) = &cc {
        // `private="x"` / `no-cache="x"`: store the response without those headers.
        cc.strip_private_headers(&mut header);
    }
    strip_unstored(&mut header);
    if header.insert_header(SCOPE_HEADER, scope_tag).is_err() {
        return Uncacheable(NoCacheReason::InternalError);
    }
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let mut meta = CacheMeta::new(fresh_until, now, secs(swr), secs(sie), header);
    if epoch != now {
        meta.set_epoch_override(epoch);
    }
    Cacheable(meta)
}

/// The stored header brought up to date by a `304 Not Modified` (RFC 9111 §3.2, §4.3.4): every
/// field the `304` carries replaces the stored one, except the framing of the stored body
/// (`Content-Length`, `Transfer-Encoding`, `Content-Encoding`, `Content-Range`), `Vary` (the
/// stored variance stays), hop-by-hop fields and the internal scope field.
pub fn merge_not_modified(
    stored: &ResponseHeader,
    not_modified: &http::HeaderMap,
) -> ResponseHeader {
    const KEEP: &[&str] = &[
        "content-length",
        "transfer-encoding",
        "content-encoding",
        "content-range",
        "vary",
        SCOPE_HEADER,
    ];
    let nominated: Vec<String> = not_modified
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let mut merged = stored.clone();
    for name in not_modified.keys() {
        let n = name.as_str();
        let hop_by_hop = n != "age" && NOT_STORED.contains(&n);
        if KEEP.contains(&n) || hop_by_hop || nominated.iter().any(|x| x == n) {
            continue;
        }
        merged.remove_header(name);
        for value in not_modified.get_all(name) {
            // Names and values come from a parsed header map: appending cannot fail.
            let _ = merged.append_header(name.clone(), value.clone());
        }
    }
    merged
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

    fn meta_at(r: &ResponseHeader, p: &RoutePolicy, now: SystemTime) -> CacheMeta {
        match decide(r, p, STATUSES, DAY, "tenant:a:", false, now) {
            RespCacheable::Cacheable(m) => m,
            RespCacheable::Uncacheable(why) => panic!("not stored: {why:?}"),
        }
    }

    #[test]
    fn revalidation_directives_close_the_route_stale_windows() {
        for respect_origin in [true, false] {
            let p = policy(Scope::Tenant, respect_origin);
            for cc in [
                "max-age=10, must-revalidate",
                "max-age=10, proxy-revalidate",
                "s-maxage=10",
                "max-age=10, stale-while-revalidate=30, must-revalidate",
            ] {
                let m = meta(&resp(200, &[("cache-control", cc)]), &p).unwrap();
                assert_eq!(
                    (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
                    (0, 0),
                    "{cc}, respect_origin = {respect_origin}"
                );
            }
            // The route's windows apply otherwise.
            let m = meta(&resp(200, &[("cache-control", "max-age=10")]), &p).unwrap();
            assert_eq!(m.stale_if_error_sec(), 600);
        }
    }

    #[test]
    fn immutable_does_not_extend_freshness() {
        let t = policy(Scope::Tenant, true);
        let m = meta(
            &resp(200, &[("cache-control", "max-age=10, immutable")]),
            &t,
        )
        .unwrap();
        assert_eq!(fresh_secs(&m), 10);
        assert!(!m.is_fresh(SystemTime::UNIX_EPOCH + Duration::from_secs(11)));
    }

    #[test]
    fn origin_age_counts_against_the_fresh_time() {
        let t = policy(Scope::Tenant, true);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let r = resp(200, &[("cache-control", "max-age=60"), ("age", "20")]);
        let m = meta_at(&r, &t, now);
        assert_eq!(m.epoch(), now - Duration::from_secs(20));
        assert_eq!(m.fresh_until(), now + Duration::from_secs(40));
        assert!(m.headers().get("age").is_none(), "Age is not stored");
        // Older than its lifetime: stored stale (it may still be revalidated).
        let r = resp(200, &[("cache-control", "max-age=60"), ("age", "100")]);
        assert!(!meta_at(&r, &t, now).is_fresh(now));
        // Several lines: the first counts.
        let mut r = resp(200, &[("age", "5")]);
        r.append_header("age", "junk").unwrap();
        assert_eq!(meta_at(&r, &t, now).epoch(), now - Duration::from_secs(5));
        let mut r = resp(200, &[("age", "junk")]);
        r.append_header("age", "5").unwrap();
        assert!(!meta_at(&r, &t, now).is_fresh(now + Duration::from_millis(1)));
    }

    #[test]
    fn an_invalid_age_makes_the_response_stale() {
        let t = policy(Scope::Tenant, true);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        for age in [
            "old",
            "7200, 0",
            "0, 7200",
            "10s",
            "1.5",
            "-1",
            "",
            "2147483648",
            "99999999999999999999",
        ] {
            let r = resp(200, &[("cache-control", "max-age=3600"), ("age", age)]);
            assert_eq!(origin_age(&r), Some(Err(())), "{age:?}");
            let m = meta_at(&r, &t, now);
            assert!(!m.is_fresh(now + Duration::from_millis(1)), "{age:?}");
        }
        for (age, secs) in [("0", 0), (" 30 ", 30), ("2147483647", 2147483647)] {
            let r = resp(200, &[("age", age)]);
            assert_eq!(origin_age(&r), Some(Ok(secs)), "{age:?}");
        }
        assert_eq!(origin_age(&resp(200, &[])), None);
    }

    #[test]
    fn connection_nominated_fields_are_not_stored() {
        let t = policy(Scope::Tenant, true);
        let r = resp(
            200,
            &[
                ("connection", "x-hop, Keep-Alive"),
                ("keep-alive", "timeout=5"),
                ("x-hop", "1"),
                ("x-kept", "1"),
            ],
        );
        let m = meta(&r, &t).unwrap();
        for gone in ["connection", "keep-alive", "x-hop"] {
            assert!(m.headers().get(gone).is_none(), "{gone}");
        }
        assert_eq!(m.headers().get("x-kept").unwrap(), "1");
    }

    #[test]
    fn targeted_cache_control_takes_precedence() {
        let t = policy(Scope::Tenant, true);
        let fresh =
            |headers: &[(&str, &str)]| meta(&resp(200, headers), &t).map(|m| fresh_secs(&m));
        let cc = ("cache-control", "max-age=10");
        let cdn = ("cdn-cache-control", "max-age=20");
        let ours = ("omsgate-cache-control", "max-age=30");
        assert_eq!(fresh(&[cc]), Some(10));
        assert_eq!(fresh(&[cc, cdn]), Some(20));
        assert_eq!(fresh(&[cc, cdn, ours]), Some(30));
        assert_eq!(fresh(&[ours, cc]), Some(30));
        // A targeted field replaces Cache-Control as a whole, refusals included.
        assert_eq!(fresh(&[("cache-control", "no-store"), cdn]), Some(20));
        assert_eq!(fresh(&[cc, ("cdn-cache-control", "no-store")]), None);
        assert_eq!(fresh(&[("cdn-cache-control", "no-store"), ours]), Some(30));
        // An empty or unparsable targeted field is skipped.
        assert_eq!(fresh(&[cc, ("omsgate-cache-control", ""), cdn]), Some(20));
        assert_eq!(fresh(&[cc, ("cdn-cache-control", ",,")]), Some(10));
        // And its revalidation directives close the route's stale windows.
        let m = meta(
            &resp(
                200,
                &[("omsgate-cache-control", "max-age=5, must-revalidate")],
            ),
            &t,
        )
        .unwrap();
        assert_eq!(m.stale_if_error_sec(), 0);
    }

    #[test]
    fn a_304_updates_all_but_the_framing_fields() {
        let stored = resp(
            200,
            &[
                ("content-length", "100"),
                ("content-encoding", "gzip"),
                ("etag", "\"a\""),
                ("x-a", "1"),
                ("vary", "accept-language"),
                (SCOPE_HEADER, "tenant:a:"),
            ],
        );
        let not_modified = resp(
            304,
            &[
                ("content-length", "0"),
                ("content-encoding", "br"),
                ("etag", "\"b\""),
                ("x-a", "2"),
                ("x-b", "3"),
                ("vary", "x-other"),
                ("connection", "x-c"),
                ("x-c", "9"),
                (SCOPE_HEADER, "public::"),
                ("age", "4"),
            ],
        );
        let merged = merge_not_modified(&stored, &not_modified.headers);
        let h = |n: &str| {
            merged
                .headers
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(merged.status, 200);
        assert_eq!(h("content-length").as_deref(), Some("100"));
        assert_eq!(h("content-encoding").as_deref(), Some("gzip"));
        assert_eq!(h("vary").as_deref(), Some("accept-language"));
        assert_eq!(h(SCOPE_HEADER).as_deref(), Some("tenant:a:"));
        assert_eq!(h("etag").as_deref(), Some("\"b\""));
        assert_eq!(h("x-a").as_deref(), Some("2"));
        assert_eq!(h("x-b").as_deref(), Some("3"));
        assert_eq!(h("age").as_deref(), Some("4"));
        assert_eq!((h("x-c"), h("connection")), (None, None));
    }
}

//! The response cache when things break: the OMS killed or failing (stale-if-error, then 502),
//! and Redis stopped, frozen or restarted under the gateway (every request still answered; hits
//! resume when Redis is back). Redis here is a private `redis-server` on its own port.

mod cache_util;
mod common;

use std::time::{Duration, Instant};

use cache_util::*;
use common::*;

/// A client that opens a new connection per request: after an error answer the gateway closes
/// the connection, and a pooled client could race that close.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

const ROUTES: &str = r#"
[[route]]
name = "thing"
path = "/tenant/{x}"
cache = { ttl = "1s", scope = "tenant", stale_if_error = "4s", resource = "thing:{x}" }
[[route]]
name = "thing_write"
path = "/tenant/{x}"
methods = ["PUT"]
invalidates = ["thing:{x}"]
"#;

// === The OMS fails ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_upstream_is_covered_by_stale_copies_within_stale_if_error_then_502() {
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), ROUTES));
    let http = fresh_client();
    let tok = token("acme", "u1");
    let url = gw.url("/tenant/k");
    let first = get(&http, &url, Some(&tok)).await;
    assert_eq!((first.status, first.x_cache.as_str()), (200, "MISS"));
    let stored_at = Instant::now();

    upstream.kill();
    // Past the 1 s TTL, inside the 4 s stale-if-error window.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(stored_at.elapsed())).await;
    let stale = get(&http, &url, Some(&tok)).await;
    assert!(
        stored_at.elapsed() < Duration::from_secs(4),
        "the test machine is too slow for this window"
    );
    assert_eq!(
        (stale.status, stale.x_cache.as_str()),
        (200, "STALE"),
        "{stale:?}"
    );
    assert_eq!(stale.body, first.body);
    assert!(stale.age.is_some(), "{stale:?}");
    // Another tenant had nothing stored: it gets the error.
    let other = get(&http, &url, Some(&token("globex", "u1"))).await;
    assert_eq!(other.status, 502, "{other:?}");

    // Past the window the stale copy is gone: 502 with the JSON error body.
    tokio::time::sleep(Duration::from_millis(5500).saturating_sub(stored_at.elapsed())).await;
    let gone = get(&http, &url, Some(&tok)).await;
    assert_eq!(gone.status, 502, "{gone:?}");
    assert!(gone.body.contains("\"error\""), "{gone:?}");
    assert!(
        gw.metric_value(
            "omsgate_cache_requests_total",
            &[("route", "thing"), ("result", "stale")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_5xx_is_covered_by_a_stale_copy() {
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), ROUTES));
    let http = fresh_client();
    let tok = token("acme", "u1");
    let url = gw.url("/tenant/e");
    let first = get(&http, &url, Some(&tok)).await;
    assert_eq!(first.x_cache, "MISS");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    upstream.fail_with(Some(503));
    let stale = get(&http, &url, Some(&tok)).await;
    assert_eq!(
        (stale.status, stale.x_cache.as_str()),
        (200, "STALE"),
        "{stale:?}"
    );
    assert_eq!(stale.body, first.body);
    upstream.fail_with(None);
    let fresh = get(&http, &url, Some(&tok)).await;
    assert_eq!(
        (fresh.status, fresh.x_cache.as_str()),
        (200, "EXPIRED"),
        "{fresh:?}"
    );
    assert_ne!(
        fresh.header("x-upstream-seq"),
        first.header("x-upstream-seq")
    );
}

// === Redis fails ===

fn private_config(upstream: std::net::SocketAddr, redis: &PrivateRedis) -> String {
    // Default 20 ms deadline; generations trusted briefly so the outage shows quickly.
    let cache = format!(
        "redis_url = \"{}\"\ngeneration_cache_ttl = \"200ms\"",
        redis.url()
    );
    config(upstream, &cache, ROUTES)
}

/// Polls until a GET is a HIT (every answer must be a 200 meanwhile).
async fn until_hit(http: &reqwest::Client, url: &str, tok: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let got = get(http, url, Some(tok)).await;
        assert_eq!(got.status, 200, "{got:?}");
        if got.x_cache == "HIT" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_redis_never_fails_a_request_and_hits_resume_when_it_returns() {
    let upstream = TestUpstream::start();
    let mut redis = PrivateRedis::start();
    let routes = ROUTES.replace("ttl = \"1s\"", "ttl = \"60s\"");
    let cache = format!(
        "redis_url = \"{}\"\ngeneration_cache_ttl = \"200ms\"",
        redis.url()
    );
    let gw = Gateway::start(&config(upstream.addr, &cache, &routes));
    let http = client();
    let tok = token("acme", "u1");
    let url = gw.url("/tenant/r");
    assert!(until_hit(&http, &url, &tok, Duration::from_secs(10)).await);

    let invalidated = || {
        gw.metric_value("omsgate_cache_invalidations_total", &[("source", "write")])
            .unwrap_or(0.0)
    };
    let invalidated_before = invalidated();
    redis.stop();
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    let mut puts = 0u32;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        for path in ["/tenant/r", "/tenant/s"] {
            let got = get(&http, &gw.url(path), Some(&tok)).await;
            assert_eq!(
                got.status, 200,
                "Redis down must not fail requests: {got:?}"
            );
            *seen.entry(got.x_cache).or_default() += 1;
        }
        // Writes go through too (their invalidation is retried in the background).
        let put = send(&http, reqwest::Method::PUT, &url, Some(&tok), &[], None).await;
        assert_eq!(put.status, 200, "{put:?}");
        puts += 1;
    }
    assert!(
        seen.get("BYPASS").copied().unwrap_or(0) > 0,
        "generations could not be read, so requests bypass: {seen:?}"
    );
    let errors = gw
        .metric_value(
            "omsgate_cache_backend_errors_total",
            &[("backend", "redis")],
        )
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "fallbacks are counted: {errors}");

    redis.restart();
    // Every write's invalidation lands once Redis is back (retried in the background with a
    // backoff of up to 2 s); until then a landing retry can turn a HIT into a MISS.
    assert!(
        wait_for(Duration::from_secs(20), || {
            invalidated() >= invalidated_before + f64::from(puts)
        }),
        "every write's invalidation lands: {} of {puts}",
        invalidated() - invalidated_before
    );
    assert!(
        until_hit(&http, &url, &tok, Duration::from_secs(20)).await,
        "hits resume after Redis returns\n{}",
        tail(&gw.log(), 30)
    );
    assert_eq!(get(&http, &url, Some(&tok)).await.x_cache, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frozen_redis_costs_at_most_the_deadline_and_never_an_error() {
    let upstream = TestUpstream::start();
    let redis = PrivateRedis::start();
    let gw = Gateway::start(&private_config(upstream.addr, &redis));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let tok = token("acme", "u1");
    assert!(until_hit(&http, &gw.url("/tenant/f"), &tok, Duration::from_secs(10)).await);

    redis.freeze();
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    // Each Redis call on a request's path has its own 20 ms deadline (generations, lookup,
    // store: at most three), and the upstream answers at once. The margin of a second is for
    // a loaded test machine; a call without a deadline would wait for the client's 3 s timeout.
    let bound = 3 * Duration::from_millis(20) + Duration::from_secs(1);
    for i in 0..20 {
        let started = Instant::now();
        let got = get(&http, &gw.url(&format!("/tenant/f{}", i % 3)), Some(&tok)).await;
        let took = started.elapsed();
        assert_eq!(got.status, 200, "{got:?}");
        assert!(
            took <= bound,
            "request {i} took {took:?} with Redis frozen (bound {bound:?}): {got:?}"
        );
        *seen.entry(got.x_cache).or_default() += 1;
    }
    redis.thaw();
    assert!(seen.contains_key("BYPASS"), "{seen:?}");
    assert!(
        until_hit(&http, &gw.url("/tenant/f"), &tok, Duration::from_secs(20)).await,
        "hits resume after Redis thaws"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_reports_503_while_redis_is_down() {
    let upstream = TestUpstream::start();
    let mut redis = PrivateRedis::start();
    let gw = Gateway::start(&private_config(upstream.addr, &redis));
    let http = client();
    let purge = || {
        http.post(gw.admin_url("/purge"))
            .json(&serde_json::json!({"tenant": "acme"}))
            .send()
    };
    assert_eq!(purge().await.unwrap().status(), 200);
    redis.stop();
    let down = purge().await.unwrap();
    assert_eq!(down.status(), 503);
    assert!(down.text().await.unwrap().contains("nothing was purged"));
    redis.restart();
    let mut ok = false;
    for _ in 0..100 {
        if purge().await.unwrap().status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "purge works again once Redis is back");
}

/// A write while Redis does not answer still invalidates: the bump is retried in the background
/// and applied once Redis answers again, so the entry stored before the write is not served
/// afterwards. Redis is frozen rather than restarted, so its generations survive and only the
/// retried bump (not a new epoch) can make the old entry unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_while_redis_is_frozen_invalidates_once_redis_answers_again() {
    let upstream = TestUpstream::start();
    let redis = PrivateRedis::start();
    // The read route lists its methods, so that the PUT reaches the route that invalidates.
    let routes = ROUTES.replace("ttl = \"1s\"", "ttl = \"60s\"").replace(
        "path = \"/tenant/{x}\"\ncache",
        "path = \"/tenant/{x}\"\nmethods = [\"GET\", \"HEAD\"]\ncache",
    );
    assert!(routes.contains("methods = [\"GET\""), "{routes}");
    let cache = format!(
        "redis_url = \"{}\"\ngeneration_cache_ttl = \"200ms\"",
        redis.url()
    );
    let gw = Gateway::start(&config(upstream.addr, &cache, &routes));
    let http = fresh_client();
    let tok = token("acme", "u1");
    let url = gw.url("/tenant/w");
    assert!(until_hit(&http, &url, &tok, Duration::from_secs(10)).await);
    let seq = |g: &Got| g.header("x-upstream-seq").parse::<u64>().unwrap_or(0);
    let stored = seq(&get(&http, &url, Some(&tok)).await);
    assert!(stored > 0);

    redis.freeze();
    let put = send(&http, reqwest::Method::PUT, &url, Some(&tok), &[], None).await;
    assert_eq!(
        put.status, 200,
        "a write goes through while Redis is frozen: {put:?}"
    );
    let written = seq(&put);
    assert!(written > stored);
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.thaw();

    // Until the retried bump lands the old entry may still be hit; once it has, the answer is
    // newer than the write, and the old entry never comes back. The retry runs for 30 s.
    let deadline = Instant::now() + Duration::from_secs(35);
    let mut fresh = false;
    while Instant::now() < deadline {
        let got = get(&http, &url, Some(&tok)).await;
        assert_eq!(got.status, 200, "{got:?}");
        if got.x_cache == "HIT" && seq(&got) > written {
            fresh = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fresh,
        "the write's invalidation was not applied after Redis returned\n{}",
        tail(&gw.log(), 30)
    );
    for _ in 0..10 {
        let got = get(&http, &url, Some(&tok)).await;
        assert_ne!(
            seq(&got),
            stored,
            "the entry stored before the write is served again"
        );
    }
    assert!(
        gw.log().contains("Delayed cache invalidation done"),
        "the invalidation came from the background retry\n{}",
        tail(&gw.log(), 30)
    );
}

//! Rate limiting (issue 5) against real gateway processes, a real Redis, and the limiter API.
//!
//! GCRA admits `burst` requests at once and one more per emission interval after that, so where
//! a test cannot control how long its requests take, the bound it checks is
//! `burst + elapsed / interval` (documented in docs/rate-limiting.md); on an idle machine that
//! is exactly `burst`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, redis_url, unique, Gateway, PrivateRedis, TestUpstream};

fn base_config(upstream: &TestUpstream, rate_limit: &str) -> String {
    routes_config(upstream, "[]", rate_limit)
}

/// The config with `list_policies` as the `rate_limit` of `GET /api/v1/invoices`.
fn routes_config(upstream: &TestUpstream, list_policies: &str, rate_limit: &str) -> String {
    // `mode = "header"` believes the identity headers only from trusted proxies: the test
    // client (127.0.0.1) is one unless the test lists its own.
    let rate_limit = if rate_limit.contains("trusted_proxies") {
        rate_limit.to_string()
    } else if rate_limit.contains("[rate_limit]\n") {
        rate_limit.replacen(
            "[rate_limit]\n",
            "[rate_limit]\ntrusted_proxies = [\"127.0.0.1\"]\n",
            1,
        )
    } else {
        format!("[rate_limit]\ntrusted_proxies = [\"127.0.0.1\"]\n{rate_limit}")
    };
    format!(
        r#"
[server]
listen = "{{listen}}"
threads = 2
shutdown_grace = "1s"
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{}"]
health_check = {{ path = "/health", interval = "1s", timeout = "1s" }}
[identity]
mode = "header"
tenant_header = "x-tenant-id"
subject_header = "x-user-id"

[[route]]
name = "invoice_create"
path = "/api/v1/invoices"
methods = ["POST"]
rate_limit = ["tenant_writes"]

[[route]]
name = "invoice_list"
path = "/api/v1/invoices"
methods = ["GET"]
rate_limit = {list_policies}

{rate_limit}
"#,
        upstream.addr
    )
}

/// GCRA's upper bound on admissions for requests spread over `elapsed`.
fn gcra_bound(burst: u64, elapsed: Duration, interval: Duration) -> u64 {
    burst + (elapsed.as_nanos() / interval.as_nanos()) as u64
}

async fn post(c: &reqwest::Client, gw: &Gateway, tenant: &str) -> reqwest::Response {
    c.post(gw.url("/api/v1/invoices"))
        .header("x-tenant-id", tenant)
        .body("{}")
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST failed: {e}"))
}

#[tokio::test]
async fn tenant_quota_admits_the_burst_then_429_with_retry_after() {
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&base_config(
        &upstream,
        r#"
[rate_limit.policies.tenant_writes]
key = "tenant"
quota = "5/second"
burst = 5
"#,
    ));
    let c = client();
    let tenant_a = unique("tenant-a");

    // Admit until the first 429; GCRA admits 5, plus one per 200 ms the loop took.
    let started = Instant::now();
    let mut admitted = 0u64;
    let limited = loop {
        let r = post(&c, &gw, &tenant_a).await;
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 200, "request {} of tenant A", admitted + 1);
        let rl = r.headers()["ratelimit"].to_str().unwrap().to_string();
        assert!(rl.starts_with("\"tenant_writes\";r="), "RateLimit: {rl}");
        assert_eq!(r.headers()["ratelimit-policy"], "\"tenant_writes\";q=5;w=1");
        admitted += 1;
        assert!(admitted <= 100, "never limited");
    };
    let elapsed = started.elapsed();
    assert!(
        admitted >= 5 && admitted <= gcra_bound(5, elapsed, Duration::from_millis(200)),
        "{admitted} admitted in {elapsed:?}"
    );

    // The 429: Retry-After is the time until one request fits again (≤ 200 ms), rounded up.
    let h = limited.headers().clone();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["ratelimit-policy"], "\"tenant_writes\";q=5;w=1");
    assert_eq!(h["ratelimit"], "\"tenant_writes\";r=0;t=1");
    let request_id = h["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "error": "rate limited",
            "policy": "tenant_writes",
            "retry_after": 1,
            "request_id": request_id,
        })
    );
    // It never reached the upstream.
    assert_eq!(upstream.hits(), admitted);

    // Tenant B has its own bucket.
    let r = post(&c, &gw, &unique("tenant-b")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit"], "\"tenant_writes\";r=4;t=1");

    // After Retry-After, tenant A is admitted again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(post(&c, &gw, &tenant_a).await.status(), 200);

    // Routes without a policy are not limited and carry no RateLimit header.
    let r = c
        .get(gw.url("/api/v1/invoices"))
        .header("x-tenant-id", &tenant_a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("ratelimit").is_none());

    let limited = gw.metric_value(
        "omsgate_rate_limited_total",
        &[("route", "invoice_create"), ("policy", "tenant_writes")],
    );
    assert_eq!(limited, Some(1.0));
    assert_eq!(
        gw.metric_value("omsgate_rate_limit_checks_total", &[("result", "allowed")]),
        Some(admitted as f64 + 2.0)
    );
}

fn per_ip_config(upstream: &TestUpstream, trusted: &str) -> String {
    base_config(
        upstream,
        &format!(
            r#"
[rate_limit]
default = "per_ip"
trusted_proxies = [{trusted}]
[rate_limit.policies.per_ip]
key = "ip"
quota = "3/hour"
[rate_limit.policies.tenant_writes]
key = "tenant"
quota = "1000/second"
"#
        ),
    )
}

async fn get_from(c: &reqwest::Client, gw: &Gateway, forwarded_for: &str) -> u16 {
    c.get(gw.url("/api/v1/invoices"))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET failed: {e}"))
        .status()
        .as_u16()
}

#[tokio::test]
async fn per_ip_default_believes_forwarded_for_only_from_trusted_peers() {
    let upstream = TestUpstream::start();
    let c = client();

    // The test client (127.0.0.1) is a trusted proxy: X-Forwarded-For names the client.
    let trusting = Gateway::start(&per_ip_config(&upstream, "\"127.0.0.1\""));
    for _ in 0..3 {
        assert_eq!(get_from(&c, &trusting, "198.51.100.1").await, 200);
    }
    let r = c
        .get(trusting.url("/api/v1/invoices"))
        .header("x-forwarded-for", "198.51.100.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["ratelimit-policy"], "\"per_ip\";q=3;w=3600");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["policy"], "per_ip");
    // Retry-After: one emission interval (20 min), rounded up to whole seconds.
    assert!(body["retry_after"].as_u64().unwrap() > 1190);
    // Another forwarded client has its own bucket; a forged entry left of the trusted hop's
    // is ignored (198.51.100.1 is still limited).
    assert_eq!(get_from(&c, &trusting, "198.51.100.2").await, 200);
    assert_eq!(
        get_from(&c, &trusting, "198.51.100.3, 198.51.100.1").await,
        429
    );
    assert_eq!(
        get_from(&c, &trusting, "198.51.100.1, 198.51.100.4").await,
        200
    );

    // Only 10.0.0.0/8 is trusted: the header from 127.0.0.1 is ignored, every request is keyed
    // by the socket address whatever it claims.
    let strict = Gateway::start(&per_ip_config(&upstream, "\"10.0.0.0/8\""));
    for i in 0..3 {
        assert_eq!(get_from(&c, &strict, &format!("203.0.113.{i}")).await, 200);
    }
    assert_eq!(get_from(&c, &strict, "203.0.113.99").await, 429);
    assert_eq!(
        strict.metric_value("omsgate_rate_limited_total", &[("policy", "per_ip")]),
        Some(1.0)
    );
}

fn distributed_config(upstream: &TestUpstream, redis: &str, prefix: &str, extra: &str) -> String {
    routes_config(
        upstream,
        "[\"tenant_hourly\"]",
        &format!(
            r#"
[rate_limit]
mode = "distributed"
redis_url = "{redis}"
key_prefix = "{prefix}:"
{extra}
[rate_limit.policies.tenant_writes]
key = ["tenant", "route"]
quota = "100/minute"
[rate_limit.policies.tenant_hourly]
key = "tenant"
quota = "100/hour"
"#
        ),
    )
}

/// Sends 300 requests for `tenant`, alternating between the gateways, 10 at a time; returns
/// how many were admitted.
async fn split_between(gateways: &Arc<[Gateway; 2]>, method: reqwest::Method, tenant: &str) -> u64 {
    let mut tasks = Vec::new();
    for worker in 0..10 {
        let gateways = gateways.clone();
        let tenant = tenant.to_string();
        let method = method.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut statuses = Vec::new();
            for i in 0..30 {
                let gw = &gateways[(worker + i) % 2];
                let r = c
                    .request(method.clone(), gw.url("/api/v1/invoices"))
                    .header("x-tenant-id", &tenant)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("request failed: {e}"));
                statuses.push(r.status().as_u16());
            }
            statuses
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        for s in t.await.unwrap() {
            match s {
                200 => admitted += 1,
                429 => {}
                other => panic!("unexpected status {other}"),
            }
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_share_one_quota_through_redis() {
    let upstream = TestUpstream::start();
    let prefix = unique("omsgate-test-rl");
    // A generous deadline: this test is about exactness, not about Redis being slow.
    let config = distributed_config(&upstream, &redis_url(), &prefix, "redis_timeout = \"2s\"");
    let gateways = Arc::new([Gateway::start(&config), Gateway::start(&config)]);

    // 100/minute, burst 100: exactly the burst, plus one per 600 ms the run took.
    let started = Instant::now();
    let per_minute = split_between(&gateways, reqwest::Method::POST, &unique("tenant")).await;
    let elapsed = started.elapsed();
    assert!(
        per_minute >= 100 && per_minute <= gcra_bound(100, elapsed, Duration::from_millis(600)),
        "{per_minute} of 300 admitted in {elapsed:?}"
    );
    // 100/hour, burst 100: nothing comes back within the run (36 s per request), so exactly 100.
    let per_hour = split_between(&gateways, reqwest::Method::GET, &unique("tenant")).await;
    assert_eq!(per_hour, 100);

    assert_eq!(upstream.hits(), per_minute + per_hour);
    // Both instances admitted some, and no check fell back to on_backend_error.
    let per_gateway: Vec<f64> = gateways
        .iter()
        .map(|g| {
            g.metric_value("omsgate_rate_limit_checks_total", &[("result", "allowed")])
                .unwrap_or(0.0)
        })
        .collect();
    assert!(per_gateway.iter().all(|n| *n > 0.0), "{per_gateway:?}");
    assert_eq!(
        per_gateway.iter().sum::<f64>(),
        (per_minute + per_hour) as f64
    );
    for g in gateways.iter() {
        assert_eq!(
            g.metric_value("omsgate_rate_limit_backend_errors_total", &[]),
            Some(0.0)
        );
    }
}

#[tokio::test]
async fn redis_down_with_allow_admits_and_counts() {
    let upstream = TestUpstream::start();
    let mut redis = PrivateRedis::start();
    let config = distributed_config(
        &upstream,
        &redis.url(),
        &unique("rl"),
        "on_backend_error = \"allow\"\nredis_timeout = \"200ms\"",
    );
    let gw = Gateway::start(&config);
    let c = client();
    let tenant = unique("tenant");
    let r = post(&c, &gw, &tenant).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit"], "\"tenant_writes\";r=99;t=1");
    assert_eq!(
        gw.metric_value("omsgate_rate_limit_backend_errors_total", &[]),
        Some(0.0)
    );

    redis.stop();
    for _ in 0..5 {
        let r = post(&c, &gw, &tenant).await;
        assert_eq!(r.status(), 200);
        // Nothing known about the quota: no RateLimit header.
        assert!(r.headers().get("ratelimit").is_none());
    }
    assert_eq!(upstream.hits(), 6);
    assert_eq!(
        gw.metric_value("omsgate_rate_limit_backend_errors_total", &[]),
        Some(5.0)
    );
    assert_eq!(
        gw.metric_value(
            "omsgate_rate_limit_checks_total",
            &[("result", "error_allowed")]
        ),
        Some(5.0)
    );
}

#[tokio::test]
async fn redis_down_with_deny_answers_503_json() {
    let upstream = TestUpstream::start();
    let mut redis = PrivateRedis::start();
    let config = distributed_config(
        &upstream,
        &redis.url(),
        &unique("rl"),
        "on_backend_error = \"deny\"\nredis_timeout = \"200ms\"",
    );
    let gw = Gateway::start(&config);
    let c = client();
    let tenant = unique("tenant");
    assert_eq!(post(&c, &gw, &tenant).await.status(), 200);

    redis.stop();
    let r = post(&c, &gw, &tenant).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/json");
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "error": "rate limiter unavailable", "request_id": request_id })
    );
    assert_eq!(upstream.hits(), 1, "a denied request reached the upstream");
    assert_eq!(
        gw.metric_value(
            "omsgate_rate_limit_checks_total",
            &[("result", "error_denied")]
        ),
        Some(1.0)
    );
    assert_eq!(
        gw.metric_value("omsgate_rate_limit_backend_errors_total", &[]),
        Some(1.0)
    );
}

/// 100k distinct client IPs against a per-IP policy whose keys never go idle during the test:
/// the key cap holds the state (and the `omsgate_rate_limit_keys` gauge) at or under
/// `max_keys`, resetting and counting when it must.
#[tokio::test]
async fn a_flood_of_distinct_keys_stays_under_the_cap() {
    use omsgate::limit::{Caller, Decision, Limiter};
    let config = omsgate::config::Config::parse(
        r#"
        [rate_limit]
        default = "per_ip"
        max_keys = 10000
        [rate_limit.policies.per_ip]
        quota = "1/hour"
        "#,
    )
    .unwrap();
    let limiter = Arc::new(Limiter::new(&config.rate_limit, &config.routes));
    let headers = http::HeaderMap::new();
    let resets_before = omsgate::metrics::RATE_LIMIT_KEY_RESETS.get();
    let mut max_seen = 0;
    for i in 0u32..100_000 {
        let caller = Caller {
            ip: Some(std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes())),
            tenant: None,
            subject: None,
            headers: &headers,
            route: "other",
        };
        assert!(matches!(
            limiter.decide(0, &caller).await,
            Decision::Admitted(_)
        ));
        if i % 100 == 0 {
            max_seen = max_seen.max(limiter.keys());
            assert!(omsgate::metrics::RATE_LIMIT_KEYS.get() <= 10_000);
        }
    }
    assert!(max_seen <= 10_000, "{max_seen} keys");
    assert!(max_seen > 9_000, "the cap was never approached: {max_seen}");
    assert!(omsgate::metrics::RATE_LIMIT_KEY_RESETS.get() - resets_before >= 9);
}

/// Distributed mode keeps the buckets in Redis, so each instance counts the distinct keys it
/// checked: `header:NAME` values invented by a client show in `omsgate_rate_limit_keys`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_mode_counts_distinct_header_keys() {
    let upstream = TestUpstream::start();
    let prefix = unique("omsgate-test-rl-keys");
    let redis = redis_url();
    let config = routes_config(
        &upstream,
        "[\"api_keys\"]",
        &format!(
            r#"
[rate_limit]
mode = "distributed"
redis_url = "{redis}"
key_prefix = "{prefix}:"
redis_timeout = "2s"
[rate_limit.policies.tenant_writes]
key = "tenant"
quota = "100/minute"
[rate_limit.policies.api_keys]
key = "header:x-api-key"
quota = "1000/hour"
"#
        ),
    );
    let gw = Gateway::start(&config);
    let c = client();
    assert_eq!(gw.metric_value("omsgate_rate_limit_keys", &[]), Some(0.0));
    const N: usize = 25;
    // Each value twice: a key counts once however often it is checked.
    for round in 0..2 {
        for i in 0..N {
            let r = c
                .get(gw.url("/api/v1/invoices"))
                .header("x-api-key", format!("{prefix}-key-{i}"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("request failed: {e}"));
            assert_eq!(r.status(), 200, "round {round}, key {i}");
        }
    }
    assert_eq!(
        gw.metric_value("omsgate_rate_limit_keys", &[]),
        Some(N as f64),
        "{}",
        gw.log()
    );
    assert_eq!(
        gw.metric_value("omsgate_rate_limit_checks_total", &[("result", "allowed")]),
        Some(2.0 * N as f64)
    );
}

/// The distinct-key count of distributed mode forgets a key one period after its last check.
#[tokio::test]
async fn distributed_key_count_forgets_keys_after_the_period() {
    use omsgate::limit::{Caller, Decision, Limiter};
    let prefix = unique("omsgate-test-rl-window");
    let config = omsgate::config::Config::parse(&format!(
        r#"
        [rate_limit]
        mode = "distributed"
        redis_url = "{}"
        key_prefix = "{prefix}:"
        redis_timeout = "2s"
        default = "api_keys"
        [rate_limit.policies.api_keys]
        key = "header:x-api-key"
        quota = "100/1s"
        "#,
        redis_url()
    ))
    .unwrap();
    let limiter = Arc::new(Limiter::new(&config.rate_limit, &config.routes));
    for i in 0..10 {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-api-key", format!("key-{i}").parse().unwrap());
        let caller = Caller {
            ip: Some(std::net::Ipv4Addr::LOCALHOST.into()),
            tenant: None,
            subject: None,
            headers: &headers,
            route: "other",
        };
        let decision = limiter.decide(0, &caller).await;
        assert!(matches!(decision, Decision::Admitted(_)), "{decision:?}");
    }
    assert_eq!(limiter.keys(), 10);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(limiter.keys(), 0, "one period after the last check");
}

/// Rewrites the gateway's config file atomically, then reloads it with SIGHUP and waits for the
/// reload to be counted.
fn reload_with(gw: &Gateway, edit: impl FnOnce(String) -> String) {
    let path = gw.config_path();
    let text = std::fs::read_to_string(path).unwrap();
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, edit(text)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    let before = gw
        .metric_value("omsgate_config_reloads_total", &[("result", "ok")])
        .unwrap_or(0.0);
    gw.signal("HUP");
    let reloaded = common::wait_for(Duration::from_secs(10), || {
        gw.metric_value("omsgate_config_reloads_total", &[("result", "ok")])
            .unwrap_or(0.0)
            > before
    });
    assert!(reloaded, "reload not applied:\n{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_unchanged_local_buckets_and_resets_changed_ones() {
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&base_config(
        &upstream,
        r#"
[rate_limit.policies.tenant_writes]
key = "tenant"
quota = "3/hour"
burst = 3
"#,
    ));
    let c = client();
    let tenant = unique("reload-tenant");
    for i in 0..3 {
        assert_eq!(post(&c, &gw, &tenant).await.status(), 200, "request {i}");
    }
    assert_eq!(post(&c, &gw, &tenant).await.status(), 429);

    // A reload that leaves the policy alone (a new route) keeps the spent bucket.
    reload_with(&gw, |t| {
        t + "\n[[route]]\nname = \"health_probe\"\npath = \"/probe\"\nmethods = [\"GET\"]\n"
    });
    assert_eq!(
        post(&c, &gw, &tenant).await.status(),
        429,
        "a reload must not hand out a fresh burst"
    );

    // A changed quota starts the policy afresh.
    reload_with(&gw, |t| {
        t.replace("quota = \"3/hour\"", "quota = \"4/hour\"")
    });
    assert_eq!(post(&c, &gw, &tenant).await.status(), 200);
}

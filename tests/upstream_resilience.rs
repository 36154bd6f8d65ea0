//! The gateway in front of an OMS that is slow, overloaded or closing connections: the
//! keep-alive race retried once (never for a POST), health checks that a slow `/health` does
//! not fail, passive ejection, panic mode, and overload protection (a fast JSON 503 with
//! `Retry-After`, or a stale cached copy) — never a 502 or a connection error for any of it.
//! Against the scriptable test upstream (`tests/common/upstream.rs`) and the shared Redis.

mod cache_util;
mod common;

use std::time::Duration;

use common::{client, wait_for, Gateway, TestUpstream};

fn config(upstreams: &[&TestUpstream], upstream_extra: &str, routes: &str) -> String {
    let servers: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect();
    format!(
        r#"
[server]
listen = "{{listen}}"
threads = 1
[admin]
listen = "{{admin}}"
[upstream]
servers = [{}]
read_timeout = "10s"
{upstream_extra}
[[route]]
name = "echo"
path = "/echo"
[[route]]
name = "slow"
path = "/slow/{{ms}}"
{routes}
"#,
        servers.join(", ")
    )
}

fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    gw.metric_value(name, labels).unwrap_or(0.0)
}

fn healthy_gauge(gw: &Gateway, up: &TestUpstream) -> Option<f64> {
    gw.metric_value(
        "omsgate_upstream_healthy",
        &[("server", &up.addr.to_string())],
    )
}

// === Keep-alive race ===

#[tokio::test]
async fn keepalive_race_is_retried_once_on_a_fresh_connection_but_a_post_is_not() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&config(
        &[&up],
        r#"health_check = { path = "/health", interval = "1h" }"#,
        "",
    ));
    let c = client();

    // A pooled connection with one request behind it; then the OMS starts closing reused
    // connections as soon as a request arrives on them.
    assert_eq!(c.get(gw.url("/echo")).send().await.unwrap().status(), 200);
    up.close_reused(true);
    let resp = c.post(gw.url("/echo")).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 502, "a POST is never retried");
    assert_eq!(up.hits_for("!closed"), 1, "the POST reached the OMS once");
    assert_eq!(up.hits_for("/echo"), 1, "and was not sent again");
    assert_eq!(
        metric(
            &gw,
            "omsgate_upstream_retries_total",
            &[("reason", "reused_closed")]
        ),
        0.0
    );

    // Every other GET lands on a reused connection that the OMS closes: each is retried once
    // on a fresh connection, and none fails.
    for i in 0..20 {
        let resp = c.get(gw.url("/echo")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {i}");
    }
    let closed = up.hits_for("!closed") - 1;
    assert!(closed >= 5, "the race happened ({closed} times)");
    assert_eq!(
        metric(
            &gw,
            "omsgate_upstream_retries_total",
            &[("reason", "reused_closed")]
        ),
        closed as f64,
        "each race retried exactly once"
    );
}

// === Health ===

#[tokio::test]
async fn slow_health_under_the_timeout_does_not_eject_and_a_down_only_server_still_serves() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&config(
        &[&up],
        r#"health_check = { path = "/health", interval = "100ms", timeout = "1s", failures = 2 }"#,
        "",
    ));
    let c = client();

    // /health takes 600 ms: slow, but within the timeout. Several checks pass meanwhile.
    up.delay_health(Duration::from_millis(600));
    let checks_before = up.hits_for("/health");
    assert!(wait_for(Duration::from_secs(20), || up.hits_for("/health")
        >= checks_before + 4));
    assert_eq!(healthy_gauge(&gw, &up), Some(1.0));
    assert_eq!(c.get(gw.url("/echo")).send().await.unwrap().status(), 200);

    // Slower than the timeout, twice in a row: marked down. The only server is still used
    // (panic mode), where the gateway used to answer 502 "no healthy upstream server".
    up.delay_health(Duration::from_millis(1500));
    assert!(
        wait_for(Duration::from_secs(20), || healthy_gauge(&gw, &up)
            == Some(0.0)),
        "a /health slower than the timeout marks the server down"
    );
    for _ in 0..5 {
        assert_eq!(c.get(gw.url("/echo")).send().await.unwrap().status(), 200);
    }
    assert_eq!(metric(&gw, "omsgate_upstream_panic", &[]), 1.0);
    assert!(metric(&gw, "omsgate_upstream_panic_total", &[]) >= 1.0);
}

#[tokio::test]
async fn dead_server_is_ejected_and_comes_back_within_an_interval() {
    let a = TestUpstream::start();
    let b = TestUpstream::start();
    let gw = Gateway::start(&config(
        &[&a, &b],
        r#"health_check = { path = "/health", interval = "300ms", timeout = "300ms", failures = 1 }
connect_timeout = "300ms""#,
        "",
    ));
    let c = client();
    let b_addr = b.addr;
    b.kill();
    assert!(wait_for(Duration::from_secs(10), || healthy_gauge(&gw, &b)
        == Some(0.0)));
    for _ in 0..10 {
        let resp = c.get(gw.url("/echo")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream"], a.addr.to_string().as_str());
    }

    let b = TestUpstream::start_on(b_addr);
    assert!(
        wait_for(Duration::from_secs(10), || healthy_gauge(&gw, &b)
            == Some(1.0)),
        "back after its next health check"
    );
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/echo")).send().await.unwrap().status(), 200);
    }
    assert!(b.hits() > 0, "traffic reaches the server again");
}

#[tokio::test]
async fn consecutive_5xx_eject_a_server_from_real_traffic() {
    let a = TestUpstream::start();
    let b = TestUpstream::start();
    let gw = Gateway::start(&config(
        &[&a, &b],
        r#"health_check = { path = "/health", interval = "1h" }
passive = { failures = 3, ejection = "1h", max_ejection = "1h" }"#,
        "",
    ));
    let c = client();
    b.fail_with(Some(500));
    // Round robin: b answers every other request until its third 500 in a row ejects it.
    for _ in 0..6 {
        c.get(gw.url("/echo")).send().await.unwrap();
    }
    assert_eq!(b.hits(), 3);
    assert_eq!(
        metric(
            &gw,
            "omsgate_upstream_ejections_total",
            &[("server", &b.addr.to_string())]
        ),
        1.0
    );
    for _ in 0..10 {
        let resp = c.get(gw.url("/echo")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "only the healthy server is used");
    }
    assert_eq!(b.hits(), 3);
}

#[tokio::test]
async fn panic_mode_with_every_server_failing_health_checks_still_reaches_them() {
    let a = TestUpstream::start();
    let b = TestUpstream::start();
    let gw = Gateway::start(&config(
        &[&a, &b],
        r#"health_check = { path = "/health", interval = "100ms", timeout = "1s", failures = 1 }"#,
        "",
    ));
    let c = client();
    a.set_healthy(false);
    b.set_healthy(false);
    assert!(wait_for(Duration::from_secs(10), || {
        healthy_gauge(&gw, &a) == Some(0.0) && healthy_gauge(&gw, &b) == Some(0.0)
    }));
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/echo")).send().await.unwrap().status(), 200);
    }
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "a={} b={}",
        a.hits(),
        b.hits()
    );
    assert_eq!(metric(&gw, "omsgate_upstream_panic_total", &[]), 1.0);
    let log = gw.log();
    assert_eq!(
        log.matches("panic mode: every server is used").count(),
        1,
        "logged once per transition:\n{log}"
    );
    let (_, ready) = common::http_get(gw.admin_addr(), "/ready", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no /ready"));
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap_or_default();
    assert_eq!(ready["dependencies"]["upstream"]["panic"], true, "{ready}");

    // One server recovers: panic mode ends and only that one is used.
    a.set_healthy(true);
    assert!(wait_for(Duration::from_secs(10), || healthy_gauge(&gw, &a)
        == Some(1.0)));
    let b_before = b.hits();
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/echo")).send().await.unwrap().status(), 200);
    }
    assert_eq!(b.hits(), b_before);
    assert_eq!(metric(&gw, "omsgate_upstream_panic", &[]), 0.0);
}

// === Overload ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_sheds_excess_requests_with_a_json_503_and_retry_after() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&config(
        &[&up],
        r#"overload = { max_in_flight = 2, queue = 2, queue_timeout = "300ms", retry_after = "3s" }"#,
        "",
    ));
    let c = client();
    let requests = (0..20).map(|_| {
        let c = c.clone();
        let url = gw.url("/slow/2000");
        async move { c.get(url).send().await }
    });
    let answers = futures::future::join_all(requests).await;
    let mut ok = 0;
    let mut shed = 0;
    for answer in answers {
        let resp = answer.unwrap_or_else(|e| panic!("a connection error: {e}"));
        match resp.status().as_u16() {
            200 => ok += 1,
            503 => {
                shed += 1;
                assert_eq!(resp.headers()["retry-after"], "3");
                assert_eq!(resp.headers()["content-type"], "application/json");
                let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
                let v: serde_json::Value = resp.json().await.unwrap();
                assert!(v["error"].as_str().unwrap().contains("overloaded"), "{v}");
                assert_eq!(v["request_id"], rid.as_str());
            }
            other => panic!("status {other}: only 200 or a shed 503"),
        }
    }
    assert!(ok >= 2, "the slots were used ({ok} answered)");
    assert!(shed >= 16, "the excess was shed ({shed})");
    assert!(up.peak_in_flight() <= 2, "peak {}", up.peak_in_flight());
    let counted = metric(
        &gw,
        "omsgate_upstream_shed_total",
        &[("route", "slow"), ("reason", "queue_full")],
    ) + metric(
        &gw,
        "omsgate_upstream_shed_total",
        &[("route", "slow"), ("reason", "queue_timeout")],
    );
    assert_eq!(counted, shed as f64);
    assert_eq!(
        metric(
            &gw,
            "omsgate_upstream_limit",
            &[("server", &up.addr.to_string())]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_answers_from_a_stale_copy_when_there_is_one() {
    let up = TestUpstream::start();
    let routes = r#"
[[route]]
name = "thing"
path = "/tenant/{x}"
cache = { ttl = "1s", scope = "tenant", stale_if_error = "30s", resource = "thing:{x}" }
"#;
    let cfg = cache_util::config(up.addr, &cache_util::shared_redis(), routes).replace(
        "retries = 0",
        "retries = 0\noverload = { max_in_flight = 1, queue = 0 }",
    );
    let gw = Gateway::start(&cfg);
    let http = client();
    let tok = cache_util::token("acme", "u1");
    let url = gw.url("/tenant/k");
    let first = cache_util::get(&http, &url, Some(&tok)).await;
    assert_eq!((first.status, first.x_cache.as_str()), (200, "MISS"));

    // The only slot is taken by a slow request; the copy expires meanwhile.
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), gw.url("/slow/4000"));
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    assert!(common::eventually(Duration::from_secs(10), || up.hits_for("/slow") == 1).await);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let stale = cache_util::get(&http, &url, Some(&tok)).await;
    assert_eq!(
        (stale.status, stale.x_cache.as_str()),
        (200, "STALE"),
        "{stale:?}"
    );
    assert_eq!(stale.body, first.body);
    // Pingora closes the connection after a shed even when it served a stale copy: the answer
    // says so, so the client's next request does not race the close.
    assert_eq!(stale.header("connection"), "close");
    // Nothing stored for another tenant: the fast 503.
    let other = cache_util::get(&http, &url, Some(&cache_util::token("globex", "u1"))).await;
    assert_eq!(other.status, 503, "{other:?}");
    assert_eq!(other.header("retry-after"), "1");
    assert_eq!(
        metric(
            &gw,
            "omsgate_upstream_shed_total",
            &[("route", "thing"), ("reason", "queue_full")]
        ),
        2.0
    );
    assert_eq!(slow.await.unwrap().unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misses_waiting_on_the_cache_lock_behind_a_shed_request_are_shed_without_waiting_again() {
    // Concurrent misses for one key wait on the cache lock for the first one, which waits in the
    // overload queue. When it is shed, the others must not queue for a full `queue_timeout`
    // again (nor go upstream after `lock_timeout`): the time they waited on the lock counts.
    let up = TestUpstream::start();
    let routes = r#"
[[route]]
name = "thing"
path = "/tenant/{x}"
cache = { ttl = "60s", scope = "tenant", resource = "thing:{x}" }
"#;
    let cfg = cache_util::config(up.addr, &cache_util::shared_redis(), routes).replace(
        "retries = 0",
        "retries = 0\noverload = { max_in_flight = 1, queue = 16, queue_timeout = \"1s\" }",
    );
    let gw = Gateway::start(&cfg);
    let http = client();
    let tok = cache_util::token("acme", "u1");

    // The only slot is taken by a slow request (4 s, below the 5 s read_timeout), for longer
    // than the waits below (about 1 s).
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), gw.url("/slow/4000"));
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    assert!(common::eventually(Duration::from_secs(10), || up.hits_for("/slow") == 1).await);

    let n = 8;
    let misses = (0..n).map(|_| {
        let (http, url, tok) = (http.clone(), gw.url("/tenant/k"), tok.clone());
        async move { cache_util::get(&http, &url, Some(&tok)).await }
    });
    for got in futures::future::join_all(misses).await {
        assert_eq!(got.status, 503, "{got:?}");
        assert_eq!(got.header("retry-after"), "1");
    }
    let shed = |reason: &str| {
        metric(
            &gw,
            "omsgate_upstream_shed_total",
            &[("route", "thing"), ("reason", reason)],
        )
    };
    // The first waited its queue_timeout; the ones behind it on the lock were shed as lock
    // waiters (one that arrived after the first was shed would have queued on its own).
    let (timed_out, lock_wait) = (shed("queue_timeout"), shed("lock_wait"));
    assert_eq!(timed_out + lock_wait, n as f64, "{timed_out} + {lock_wait}");
    assert!(lock_wait >= 1.0, "lock waiters queued again ({lock_wait})");
    assert_eq!(shed("queue_full"), 0.0);
    // None of them reached the OMS.
    assert_eq!(up.hits_for("/tenant/"), 0);
    assert_eq!(slow.await.unwrap().unwrap(), 200);
}

// === Config ===

#[test]
fn check_config_warns_when_idle_timeout_is_not_below_the_oms_keepalive() {
    let up = TestUpstream::start();
    let cfg = config(
        &[&up],
        "idle_timeout = \"5s\"\nkeepalive_timeout = \"5s\"",
        "",
    );
    let (code, stderr) = Gateway::check_config(&cfg);
    assert_eq!(code, 0, "a warning, not an error: {stderr}");
    assert!(
        stderr.contains("warning: upstream.idle_timeout"),
        "{stderr}"
    );
    let (code, stderr) = Gateway::check_config(&config(&[&up], "keepalive_timeout = \"5s\"", ""));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stderr.contains("warning"),
        "the default 4s is below 5s: {stderr}"
    );
}

// === Connect failures ===

#[tokio::test]
async fn connect_failure_is_retried_once_for_idempotent_requests_only() {
    let a = TestUpstream::start();
    let b = TestUpstream::start();
    // The next health check is an hour away: the gateway still believes b is healthy.
    let gw = Gateway::start(&config(
        &[&a, &b],
        r#"health_check = { path = "/health", interval = "1h" }
passive = { failures = 0 }"#,
        "",
    ));
    b.kill();
    let c = client();
    for i in 0..6 {
        let resp = c.get(gw.url("/echo")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {i} is retried on the live server");
    }
    let retried = metric(
        &gw,
        "omsgate_upstream_retries_total",
        &[("reason", "connect")],
    );
    assert!(
        (1.0..=6.0).contains(&retried),
        "GETs that went to the dead server were retried, at most once each: {retried}"
    );

    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            c.post(gw.url("/echo"))
                .body("x")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(
        statuses.contains(&502) && statuses.iter().all(|s| *s == 200 || *s == 502),
        "POSTs to the dead server fail and are not retried: {statuses:?}"
    );
    assert_eq!(
        a.hits_for("/echo") as usize,
        6 + statuses.iter().filter(|s| **s == 200).count()
    );
    assert_eq!(
        metric(
            &gw,
            "omsgate_upstream_retries_total",
            &[("reason", "connect")]
        ),
        retried
    );
}

/// A PUT retried on the keep-alive race passes its body through the gateway twice (Pingora
/// replays it from its retry buffer); the audit record still holds it once.
#[tokio::test]
async fn a_retried_write_is_audited_with_its_body_once() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&config(
        &[&up],
        r#"health_check = { path = "/health", interval = "1h" }
[audit]
spool_dir = "{dir}/spool""#,
        r#"[[route]]
name = "items"
path = "/items/{id}"
audit = { body = true }"#,
    ));
    let c = client();
    assert_eq!(c.get(gw.url("/echo")).send().await.unwrap().status(), 200);
    up.close_reused(true);
    let resp = c
        .put(gw.url("/items/7"))
        .header("content-type", "application/json")
        .header("x-request-id", "retried-put")
        .body(r#"{"qty":3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        metric(
            &gw,
            "omsgate_upstream_retries_total",
            &[("reason", "reused_closed")]
        ),
        1.0,
        "the PUT met the race and was retried"
    );
    let spool = gw.dir().join("spool");
    let record = || {
        common::spooled(&spool)
            .into_iter()
            .find(|r| r["request_id"] == "retried-put")
    };
    assert!(
        common::eventually(Duration::from_secs(10), || record().is_some()).await,
        "the PUT's audit record"
    );
    let record = record().unwrap();
    assert_eq!(record["body"], serde_json::json!({"qty": 3}), "{record}");
}

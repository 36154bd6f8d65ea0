//! The response cache over real HTTP, with the gateway as a child process, the real Redis, and
//! the simulated OMS or the scriptable test upstream behind it: hits without the OMS, TTL,
//! isolation between tenants and subjects (including a randomized search for cross-scope
//! answers), `Vary`, what is never stored, invalidation by writes and by `POST /purge`,
//! coalescing, stale-while-revalidate, conditional requests, Redis as the only tier, and two
//! instances invalidating each other. Fault cases are in `cache_faults.rs`.

mod cache_util;
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cache_util::*;
use common::*;
use omsgate::sim::{SimHandle, SimOptions};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

const SIM_ROUTES: &str = r#"
[[route]]
name = "invoice"
path = "/api/v1/invoices/{id}"
methods = ["GET", "HEAD"]
cache = { ttl = "60s", scope = "tenant", resource = "invoice:{id}" }
[[route]]
name = "invoice_list"
path = "/api/v1/invoices"
methods = ["GET", "HEAD"]
cache = { ttl = "60s", scope = "tenant", tags = ["invoices"] }
[[route]]
name = "invoice_create"
path = "/api/v1/invoices"
methods = ["POST"]
invalidates = ["invoices"]
[[route]]
name = "invoice_write"
path = "/api/v1/invoices/{id}"
methods = ["PUT", "PATCH", "DELETE"]
invalidates = ["invoice:{id}", "invoices"]
"#;

async fn start_sim(latency: Duration) -> (SimHandle, omsgate::sim::data::Dataset) {
    cache_util::start_sim(SimOptions {
        latency,
        workers: 0,
        tenants: 3,
        invoices_per_tenant: 20,
        ..SimOptions::default()
    })
    .await
}

fn oms_gets(sim: &SimHandle, route: &str) -> u64 {
    sim.stats().by_route.get(route).copied().unwrap_or(0)
}

// === Hits, TTL ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_get_is_a_hit_served_without_the_oms() {
    let (sim, d) = start_sim(Duration::from_millis(20)).await;
    let gw = Gateway::start(&config(sim.addr, &shared_redis(), SIM_ROUTES));
    let http = client();
    let acme = token("acme", "alice");
    let url = gw.url(&format!("/api/v1/invoices/{}", first_invoice(&d, "acme")));

    let first = get(&http, &url, Some(&acme)).await;
    assert_eq!(
        (first.status, first.x_cache.as_str()),
        (200, "MISS"),
        "{first:?}"
    );
    assert_eq!(oms_gets(&sim, "invoice_get"), 1);
    for _ in 0..3 {
        let again = get(&http, &url, Some(&acme)).await;
        assert_eq!(
            (again.status, again.x_cache.as_str()),
            (200, "HIT"),
            "{again:?}"
        );
        assert_eq!(again.body, first.body);
        assert!(again.age.is_some(), "a hit carries Age: {again:?}");
        assert!(again.headers.get(omsgate::cache::SCOPE_HEADER).is_none());
    }
    assert_eq!(oms_gets(&sim, "invoice_get"), 1, "hits never reach the OMS");
    // HEAD is answered from the GET entry.
    let head = send(&http, reqwest::Method::HEAD, &url, Some(&acme), &[], None).await;
    assert_eq!((head.status, head.x_cache.as_str()), (200, "HIT"));
    assert_eq!(oms_gets(&sim, "invoice_get"), 1);

    // Counted in the logging phase, just after the response went out.
    let hits = || {
        gw.metric_value(
            "omsgate_cache_requests_total",
            &[("route", "invoice"), ("result", "hit")],
        )
        .unwrap_or(0.0)
    };
    let counted = eventually(Duration::from_secs(5), || hits() >= 4.0).await;
    assert!(counted, "hits counted: {}", hits());
    assert_eq!(
        gw.metric_value("omsgate_cache_store_total", &[("route", "invoice")]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ttl_expiry_is_a_miss_again() {
    let upstream = TestUpstream::start();
    let routes = r#"
[[route]]
name = "short"
path = "/short/{x}"
cache = { ttl = "1s", scope = "public" }
"#;
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    let url = gw.url("/short/a");
    assert_eq!(get(&http, &url, None).await.x_cache, "MISS");
    assert_eq!(get(&http, &url, None).await.x_cache, "HIT");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let after = get(&http, &url, None).await;
    assert_eq!(
        (after.status, after.x_cache.as_str()),
        (200, "MISS"),
        "{after:?}"
    );
    assert_eq!(upstream.hits_for("/short/a"), 2);
    assert_eq!(get(&http, &url, None).await.x_cache, "HIT");
}

// === Isolation ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_get_their_own_bodies_and_unverified_requests_never_hit() {
    let (sim, _d) = start_sim(Duration::ZERO).await;
    let gw = Gateway::start(&config(sim.addr, &shared_redis(), SIM_ROUTES));
    let http = client();
    let url = gw.url("/api/v1/invoices?limit=5");
    let (acme, globex) = (token("acme", "a1"), token("globex", "g1"));

    let a1 = get(&http, &url, Some(&acme)).await;
    let g1 = get(&http, &url, Some(&globex)).await;
    assert_eq!((a1.x_cache.as_str(), g1.x_cache.as_str()), ("MISS", "MISS"));
    assert_ne!(a1.body, g1.body, "two tenants, two listings");
    for _ in 0..3 {
        let a = get(&http, &url, Some(&acme)).await;
        let g = get(&http, &url, Some(&globex)).await;
        assert_eq!((a.x_cache.as_str(), g.x_cache.as_str()), ("HIT", "HIT"));
        assert_eq!(a.body, a1.body);
        assert_eq!(g.body, g1.body);
    }
    // Another user of the same tenant shares the tenant-scoped entry.
    let other_user = get(&http, &url, Some(&token("acme", "a2"))).await;
    assert_eq!(
        (other_user.x_cache.as_str(), &other_user.body),
        ("HIT", &a1.body)
    );

    // Nothing without a verified tenant ever gets a cached answer.
    let spoofed = [("x-omsgate-tenant", "acme"), ("x-omsgate-subject", "a1")];
    let cases = [
        ("forged", Some(forged_token("acme")), &[][..]),
        ("expired", Some(expired_token("acme")), &[][..]),
        ("none", None, &[][..]),
        ("spoofed headers", None, &spoofed[..]),
    ];
    for (name, tok, headers) in cases {
        let got = send(
            &http,
            reqwest::Method::GET,
            &url,
            tok.as_deref(),
            headers,
            None,
        )
        .await;
        assert_eq!(got.x_cache, "BYPASS", "{name}: {got:?}");
        assert_ne!(got.body, a1.body, "{name} got acme's listing");
        assert_eq!(got.status, 401, "{name}: the OMS refuses it itself");
    }
}

const ECHO_ROUTES: &str = r#"
[[route]]
name = "by_tenant"
path = "/tenant/{x}"
cache = { ttl = "60s", scope = "tenant", resource = "thing:{x}" }
[[route]]
name = "by_subject"
path = "/subject/{x}"
cache = { ttl = "60s", scope = "subject", resource = "thing:{x}" }
[[route]]
name = "public"
path = "/public/{x}"
cache = { ttl = "60s", scope = "public" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subject_scope_separates_users_of_one_tenant() {
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), ECHO_ROUTES));
    let http = client();
    let url = gw.url("/subject/x");
    let (u1, u2) = (token("acme", "u1"), token("acme", "u2"));
    let a = get(&http, &url, Some(&u1)).await;
    let b = get(&http, &url, Some(&u2)).await;
    assert_eq!((a.x_cache.as_str(), b.x_cache.as_str()), ("MISS", "MISS"));
    assert_eq!(a.json()["headers"]["x-omsgate-subject"], "u1");
    assert_eq!(b.json()["headers"]["x-omsgate-subject"], "u2");
    let a2 = get(&http, &url, Some(&u1)).await;
    let b2 = get(&http, &url, Some(&u2)).await;
    assert_eq!((a2.x_cache.as_str(), b2.x_cache.as_str()), ("HIT", "HIT"));
    assert_eq!((a2.body, b2.body), (a.body, b.body));
    assert_eq!(upstream.hits_for("/subject/x"), 2);
    // A token without a subject cannot use a subject-scoped route.
    let no_sub = omsgate::identity::issue_hs256(
        omsgate::sim::DEMO_JWT_SECRET,
        "tenant_id",
        "acme",
        "",
        Duration::from_secs(60),
    );
    assert_eq!(get(&http, &url, Some(&no_sub)).await.x_cache, "BYPASS");
}

/// Many tenants, users, routes, paths and query orders, in random order and concurrently:
/// every answer must be the upstream's answer to a request of the same scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_requests_never_get_another_scopes_answer() {
    let upstream = TestUpstream::start();
    let gw = Arc::new(Gateway::start(&config(
        upstream.addr,
        &shared_redis(),
        ECHO_ROUTES,
    )));
    let seed: u64 = rand::random();
    eprintln!("randomized isolation seed: {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let tenants = [
        "acme", "globex", "initech", "umbrella", "hooli", "t:6", "t%3A6",
    ];
    let subjects = ["u1", "u2", "u3"];
    let mut tokens: HashMap<(usize, usize), String> = HashMap::new();
    for (t, tenant) in tenants.iter().enumerate() {
        for (s, subject) in subjects.iter().enumerate() {
            tokens.insert((t, s), token(tenant, subject));
        }
    }
    let mut plan = Vec::new();
    for _ in 0..900 {
        let route = ["tenant", "subject", "public"][rng.random_range(0..3)];
        let path = format!("/{route}/p{}", rng.random_range(0..4));
        let mut q = [format!("a={}", rng.random_range(0..2)), "b=1".to_string()];
        q.shuffle(&mut rng);
        let t = rng.random_range(0..tenants.len());
        let s = rng.random_range(0..subjects.len());
        let forged = rng.random_range(0..20) == 0;
        plan.push((route, path, q.join("&"), t, s, forged));
    }
    let plan = Arc::new(plan);
    let tokens = Arc::new(tokens);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (plan, tokens, gw) = (plan.clone(), tokens.clone(), gw.clone());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut hits = 0;
            for (route, path, query, t, s, forged) in plan.iter().skip(worker).step_by(8) {
                let tok = if *forged {
                    forged_token(tenants[*t])
                } else {
                    tokens[&(*t, *s)].clone()
                };
                let got = get(&http, &gw.url(&format!("{path}?{query}")), Some(&tok)).await;
                assert_eq!(got.status, 200, "{got:?}");
                let body = got.json();
                assert_eq!(body["path"], *path, "{got:?}");
                let seen_tenant = body["headers"]["x-omsgate-tenant"].as_str();
                let seen_subject = body["headers"]["x-omsgate-subject"].as_str();
                let mut sent: Vec<&str> = query.split('&').collect();
                let mut answered: Vec<&str> =
                    body["query"].as_str().unwrap_or("").split('&').collect();
                sent.sort();
                answered.sort();
                assert_eq!(sent, answered, "another query's answer: {got:?}");
                match (*route, *forged) {
                    ("tenant", false) => {
                        assert_eq!(
                            seen_tenant,
                            Some(tenants[*t]),
                            "tenant scope crossed: {got:?}"
                        )
                    }
                    ("subject", false) => assert_eq!(
                        (seen_tenant, seen_subject),
                        (Some(tenants[*t]), Some(subjects[*s])),
                        "subject scope crossed: {got:?}"
                    ),
                    ("tenant" | "subject", true) => {
                        assert_eq!(got.x_cache, "BYPASS");
                        assert_eq!(seen_tenant, None, "{got:?}");
                    }
                    _ => {}
                }
                if got.x_cache == "HIT" {
                    hits += 1;
                }
            }
            hits
        }));
    }
    let mut hits = 0;
    for t in tasks {
        hits += t.await.expect("worker finished");
    }
    // The plan repeats requests enough that most are answered from the cache; otherwise the
    // test would prove nothing.
    assert!(hits > 300, "only {hits} hits");
}

// === What is stored ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vary_keeps_one_entry_per_language() {
    let upstream = TestUpstream::start();
    let routes = r#"
[[route]]
name = "vary"
path = "/headers"
cache = { ttl = "60s", scope = "public" }
"#;
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    let url = gw.url("/headers?Vary=Accept-Language");
    let lang = |l: &'static str| [("accept-language", l)];
    let en = send(&http, reqwest::Method::GET, &url, None, &lang("en"), None).await;
    let de = send(&http, reqwest::Method::GET, &url, None, &lang("de"), None).await;
    assert_eq!((en.x_cache.as_str(), de.x_cache.as_str()), ("MISS", "MISS"));
    assert_ne!(en.header("x-upstream-seq"), de.header("x-upstream-seq"));
    for _ in 0..2 {
        let en2 = send(&http, reqwest::Method::GET, &url, None, &lang("en"), None).await;
        let de2 = send(&http, reqwest::Method::GET, &url, None, &lang("de"), None).await;
        assert_eq!((en2.x_cache.as_str(), de2.x_cache.as_str()), ("HIT", "HIT"));
        assert_eq!(en2.header("x-upstream-seq"), en.header("x-upstream-seq"));
        assert_eq!(de2.header("x-upstream-seq"), de.header("x-upstream-seq"));
    }
    let fr = send(&http, reqwest::Method::GET, &url, None, &lang("fr"), None).await;
    assert_eq!(fr.x_cache, "MISS");
    assert_eq!(upstream.hits_for("/headers"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_store_private_set_cookie_and_errors_are_not_stored() {
    let upstream = TestUpstream::start();
    let routes = r#"
[[route]]
name = "headers"
path = "/headers"
cache = { ttl = "60s", scope = "tenant" }
[[route]]
name = "status"
path = "/status/{code}"
cache = { ttl = "60s", scope = "tenant" }
"#;
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    let tok = token("acme", "u1");
    let never = [
        "/headers?Cache-Control=no-store",
        "/headers?Cache-Control=private",
        "/headers?Cache-Control=no-cache",
        "/headers?Cache-Control=max-age%3D0",
        "/headers?Set-Cookie=session%3Dabc",
        "/status/500",
        "/status/503",
        "/status/201",
    ];
    for path in never {
        for _ in 0..2 {
            let got = get(&http, &gw.url(path), Some(&tok)).await;
            assert_eq!(got.x_cache, "MISS", "{path}: {got:?}");
        }
    }
    assert_eq!(
        upstream.hits(),
        2 * never.len() as u64,
        "each went upstream twice"
    );
    // The control: a plain answer, and the configured non-200 statuses, are stored.
    for path in ["/headers?X-Plain=1", "/status/404", "/status/410"] {
        assert_eq!(get(&http, &gw.url(path), Some(&tok)).await.x_cache, "MISS");
        assert_eq!(
            get(&http, &gw.url(path), Some(&tok)).await.x_cache,
            "HIT",
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_max_age_sets_the_ttl_and_etag_answers_304() {
    let upstream = TestUpstream::start();
    let routes = PUBLIC_HEADERS_ROUTE;
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    let url = gw.url("/headers?Cache-Control=max-age%3D1&ETag=%22v1%22");
    assert_eq!(get(&http, &url, None).await.x_cache, "MISS");
    let cond = send(
        &http,
        reqwest::Method::GET,
        &url,
        None,
        &[("if-none-match", "\"v1\"")],
        None,
    )
    .await;
    assert_eq!(
        (cond.status, cond.x_cache.as_str()),
        (304, "HIT"),
        "{cond:?}"
    );
    let other = send(
        &http,
        reqwest::Method::GET,
        &url,
        None,
        &[("if-none-match", "\"v0\"")],
        None,
    )
    .await;
    assert_eq!((other.status, other.x_cache.as_str()), (200, "HIT"));
    assert_eq!(upstream.hits_for("/headers"), 1);
    // max-age=1 shortened the route's 60 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&http, &url, None).await.x_cache, "MISS");
    assert_eq!(upstream.hits_for("/headers"), 2);
}

// === Invalidation ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_invalidates_its_invoice_and_listing_for_its_tenant_only() {
    let (sim, d) = start_sim(Duration::ZERO).await;
    let gw = Gateway::start(&config(sim.addr, &shared_redis(), SIM_ROUTES));
    let http = client();
    let (acme, globex) = (token("acme", "a1"), token("globex", "g1"));
    let invoice = gw.url(&format!("/api/v1/invoices/{}", first_invoice(&d, "acme")));
    let other_invoice = gw.url(&format!(
        "/api/v1/invoices/{}",
        d.invoices
            .iter()
            .filter(|i| i.tenant_id == "acme")
            .nth(1)
            .unwrap()
            .id
    ));
    let list = gw.url("/api/v1/invoices?limit=3");
    let warm = |url: String, tok: String| {
        let http = http.clone();
        async move {
            get(&http, &url, Some(&tok)).await;
            let again = get(&http, &url, Some(&tok)).await;
            assert_eq!(again.x_cache, "HIT", "{url}");
            again
        }
    };
    let before = warm(invoice.clone(), acme.clone()).await;
    warm(other_invoice.clone(), acme.clone()).await;
    warm(list.clone(), acme.clone()).await;
    let globex_list = warm(list.clone(), globex.clone()).await;

    let patched = send(
        &http,
        reqwest::Method::PATCH,
        &invoice,
        Some(&acme),
        &[],
        Some(json!({"customer": "Invalidated Inc"})),
    )
    .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(patched.x_cache, "", "writes are not cached");

    let after = get(&http, &invoice, Some(&acme)).await;
    assert_eq!(after.x_cache, "MISS");
    assert_ne!(after.body, before.body);
    assert_eq!(after.json()["customer"], "Invalidated Inc");
    assert_eq!(get(&http, &list, Some(&acme)).await.x_cache, "MISS");
    // Other resources of the tenant, and other tenants' entries, are untouched.
    assert_eq!(get(&http, &other_invoice, Some(&acme)).await.x_cache, "HIT");
    let g = get(&http, &list, Some(&globex)).await;
    assert_eq!((g.x_cache.as_str(), &g.body), ("HIT", &globex_list.body));

    // A failed write invalidates nothing.
    let bad = send(
        &http,
        reqwest::Method::PATCH,
        &other_invoice,
        Some(&acme),
        &[],
        Some(json!({"currency": "CHF"})),
    )
    .await;
    assert_eq!(bad.status, 422);
    assert_eq!(get(&http, &other_invoice, Some(&acme)).await.x_cache, "HIT");
    assert!(
        gw.metric_value("omsgate_cache_invalidations_total", &[("source", "write")])
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_invalidates_by_tenant_resource_and_everything() {
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), ECHO_ROUTES));
    let http = client();
    let (acme, globex) = (token("acme", "u1"), token("globex", "u1"));
    let urls = [gw.url("/tenant/1"), gw.url("/tenant/2")];
    let public = gw.url("/public/1");
    let warm_all = || async {
        for u in &urls {
            for t in [&acme, &globex] {
                get(&http, u, Some(t)).await;
            }
        }
        get(&http, &public, None).await;
    };
    let status = |u: &str, t: Option<&str>| {
        let (http, u, t) = (http.clone(), u.to_string(), t.map(String::from));
        async move { get(&http, &u, t.as_deref()).await.x_cache }
    };
    let purge = |body: serde_json::Value| {
        let (http, url) = (http.clone(), gw.admin_url("/purge"));
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    warm_all().await;
    assert_eq!(status(&urls[0], Some(&acme)).await, "HIT");

    let (code, body) = purge(json!({"tenant": "acme", "resources": ["thing:1"]})).await;
    assert_eq!((code, body.as_str()), (200, r#"{"purged":1}"#));
    assert_eq!(status(&urls[0], Some(&acme)).await, "MISS");
    assert_eq!(status(&urls[1], Some(&acme)).await, "HIT");
    assert_eq!(status(&urls[0], Some(&globex)).await, "HIT");

    assert_eq!(purge(json!({"tenant": "globex"})).await.0, 200);
    assert_eq!(status(&urls[0], Some(&globex)).await, "MISS");
    assert_eq!(status(&urls[1], Some(&globex)).await, "MISS");
    assert_eq!(status(&urls[1], Some(&acme)).await, "HIT");
    assert_eq!(status(&public, None).await, "HIT");

    assert_eq!(purge(json!({"all": true})).await.0, 200);
    assert_eq!(status(&urls[1], Some(&acme)).await, "MISS");
    assert_eq!(status(&public, None).await, "MISS");

    for bad in [
        json!({}),
        json!({"all": true, "tenant": "acme"}),
        json!({"tenant": ""}),
        json!({"tenant": "acme", "resources": [""]}),
        json!({"tenants": ["acme"]}),
    ] {
        assert_eq!(purge(bad.clone()).await.0, 400, "{bad}");
    }
    // Purge is an admin endpoint only.
    let public_purge = http
        .post(gw.url("/purge"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert!(public_purge.headers().get("x-cache").is_none());
    assert_eq!(
        upstream.hits_for("/purge"),
        1,
        "proxied to the OMS like any path"
    );
    assert_eq!(
        gw.metric_value("omsgate_cache_invalidations_total", &[("source", "purge")]),
        Some(3.0)
    );
}

// === Coalescing, stale, tiers ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_misses_make_one_upstream_request() {
    let (sim, d) = start_sim(Duration::from_millis(300)).await;
    let gw = Arc::new(Gateway::start(&config(
        sim.addr,
        &shared_redis(),
        SIM_ROUTES,
    )));
    let url = gw.url(&format!("/api/v1/invoices/{}", first_invoice(&d, "globex")));
    let tok = token("globex", "g1");
    let http = client();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (http, url, tok) = (http.clone(), url.clone(), tok.clone());
        tasks.push(tokio::spawn(
            async move { get(&http, &url, Some(&tok)).await },
        ));
    }
    let mut bodies = std::collections::HashSet::new();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    let mut cache_statuses: HashMap<(String, String), usize> = HashMap::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, 200, "{got:?}");
        let cache_status = got.header("cache-status");
        *cache_statuses
            .entry((got.x_cache.clone(), cache_status))
            .or_default() += 1;
        bodies.insert(got.body);
        *statuses.entry(got.x_cache).or_default() += 1;
    }
    assert_eq!(oms_gets(&sim, "invoice_get"), 1, "x-cache: {statuses:?}");
    assert_eq!(bodies.len(), 1);
    assert_eq!(statuses.get("MISS"), Some(&1), "{statuses:?}");
    // The requests that waited for the one fill say so (RFC 9211 `collapsed`), apart from
    // plain hits, and are counted.
    let key = |x: &str, c: &str| (x.to_string(), c.to_string());
    assert_eq!(
        cache_statuses.get(&key("MISS", "omsgate; fwd=miss")),
        Some(&1),
        "{cache_statuses:?}"
    );
    let collapsed = cache_statuses
        .get(&key("HIT", "omsgate; fwd=miss; collapsed"))
        .copied()
        .unwrap_or(0);
    let plain = cache_statuses
        .get(&key("HIT", "omsgate; hit"))
        .copied()
        .unwrap_or(0);
    assert!(collapsed >= 1, "{cache_statuses:?}");
    assert_eq!(collapsed + plain, 49, "{cache_statuses:?}");
    let counted = eventually(Duration::from_secs(5), || {
        gw.metric_value("omsgate_cache_collapsed_total", &[("route", "invoice")])
            == Some(collapsed as f64)
    })
    .await;
    assert!(counted, "{collapsed} collapsed answers: {cache_statuses:?}");
    // A later request finds the entry in place: a plain hit.
    let later = get(&http, &url, Some(&tok)).await;
    assert_eq!(later.x_cache, "HIT");
    assert_eq!(later.header("cache-status"), "omsgate; hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let upstream = TestUpstream::start();
    let routes = r#"
[[route]]
name = "swr"
path = "/public/{x}"
cache = { ttl = "1s", scope = "public", stale_while_revalidate = "60s" }
"#;
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    let url = gw.url("/public/swr");
    let first = get(&http, &url, None).await;
    assert_eq!(first.x_cache, "MISS");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    upstream.delay_all(Duration::from_millis(300));
    let stale = get(&http, &url, None).await;
    assert_eq!(stale.x_cache, "STALE", "{stale:?}");
    assert_eq!(
        stale.header("x-upstream-seq"),
        first.header("x-upstream-seq")
    );
    assert!(stale.age.is_some_and(|a| a >= 1), "{stale:?}");
    // One background refresh replaces it.
    let refreshed = eventually(Duration::from_secs(5), || {
        upstream.hits_for("/public/swr") == 2
    })
    .await;
    assert!(refreshed, "background refresh reached the upstream");
    let mut fresh = get(&http, &url, None).await;
    for _ in 0..50 {
        if fresh.x_cache == "HIT" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        fresh = get(&http, &url, None).await;
    }
    assert_eq!(fresh.x_cache, "HIT", "{fresh:?}");
    assert_ne!(
        fresh.header("x-upstream-seq"),
        first.header("x-upstream-seq")
    );
    assert_eq!(upstream.hits_for("/public/swr"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_alone_serves_hits_when_the_l1_is_off() {
    let upstream = TestUpstream::start();
    let cache = format!("{}\nmemory = {{ max_bytes = 0 }}", shared_redis());
    let text = config(upstream.addr, &cache, ECHO_ROUTES);
    let prefix = text
        .lines()
        .find_map(|l| l.strip_prefix("key_prefix = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_string();
    let gw = Gateway::start(&text);
    let http = client();
    let tok = token("acme", "u1");
    assert_eq!(
        get(&http, &gw.url("/tenant/r"), Some(&tok)).await.x_cache,
        "MISS"
    );
    assert_eq!(
        get(&http, &gw.url("/tenant/r"), Some(&tok)).await.x_cache,
        "HIT"
    );
    assert_eq!(upstream.hits_for("/tenant/r"), 1);
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}obj:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "stored with a TTL: {ttl}");
    assert_eq!(gw.metric_value("omsgate_cache_l1_entries", &[]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_only_without_redis() {
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&config(upstream.addr, "", ECHO_ROUTES));
    let http = client();
    let tok = token("acme", "u1");
    assert_eq!(
        get(&http, &gw.url("/tenant/m"), Some(&tok)).await.x_cache,
        "MISS"
    );
    assert_eq!(
        get(&http, &gw.url("/tenant/m"), Some(&tok)).await.x_cache,
        "HIT"
    );
    let r = http
        .post(gw.admin_url("/purge"))
        .json(&json!({"tenant": "acme", "resources": ["thing:m"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        get(&http, &gw.url("/tenant/m"), Some(&tok)).await.x_cache,
        "MISS"
    );
    assert!(
        gw.metric_value("omsgate_cache_l1_entries", &[])
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_through_one_instance_invalidates_the_others_l1() {
    let (sim, d) = start_sim(Duration::ZERO).await;
    // Generations are trusted for a minute, so only pub/sub can make the second instance
    // notice within the wait below.
    let cache = format!("{}\ngeneration_cache_ttl = \"60s\"", shared_redis());
    let text = config(sim.addr, &cache, SIM_ROUTES);
    let gw1 = Gateway::start(&text);
    let gw2 = Gateway::start(&text);
    let http = client();
    let acme = token("acme", "a1");
    let path = format!("/api/v1/invoices/{}", first_invoice(&d, "acme"));

    assert_eq!(
        get(&http, &gw1.url(&path), Some(&acme)).await.x_cache,
        "MISS"
    );
    // The second instance finds it in Redis, then in its own L1.
    assert_eq!(
        get(&http, &gw2.url(&path), Some(&acme)).await.x_cache,
        "HIT"
    );
    let before = get(&http, &gw2.url(&path), Some(&acme)).await;
    assert_eq!(before.x_cache, "HIT");
    assert_eq!(oms_gets(&sim, "invoice_get"), 1);

    let patched = send(
        &http,
        reqwest::Method::PATCH,
        &gw1.url(&path),
        Some(&acme),
        &[],
        Some(json!({"customer": "Seen Everywhere"})),
    )
    .await;
    assert_eq!(patched.status, 200);

    let mut after = get(&http, &gw2.url(&path), Some(&acme)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while after.x_cache == "HIT" && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = get(&http, &gw2.url(&path), Some(&acme)).await;
    }
    assert_eq!(
        after.x_cache, "MISS",
        "instance 2 still serves the old copy"
    );
    assert_eq!(after.json()["customer"], "Seen Everywhere");
    // The generation read from Redis already makes it a miss; the pub/sub message that drops
    // the L1 entry may arrive a moment later.
    let remote = eventually(Duration::from_secs(5), || {
        gw2.metric_value("omsgate_cache_invalidations_total", &[("source", "remote")])
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(remote, "{}", gw2.metrics_text());
}

// === Config ===

#[test]
fn bad_cache_config_is_reported_with_keys() {
    let text = r#"
[server]
listen = "{listen}"
[admin]
listen = "{admin}"
[cache]
redis_url = "http://not-redis"
redis_timeout = "2s"
memory = { max_bytes = "lots" }
[[route]]
name = "r"
path = "/r/{id}"
methods = ["GET"]
cache = { ttl = "0", scope = "everyone", resource = "r:{nope}", stale = "1s" }
"#;
    let (code, stderr) = Gateway::check_config(text);
    assert_eq!(code, 64, "{stderr}");
    for key in [
        "cache.redis_url",
        "cache.redis_timeout",
        "cache.memory.max_bytes",
        "route[0].cache.ttl",
        "route[0].cache.scope",
        "route[0].cache.resource",
        "route[0].cache.stale",
    ] {
        assert!(
            stderr.contains(&format!("{key}:")),
            "{key} missing in:\n{stderr}"
        );
    }
}
